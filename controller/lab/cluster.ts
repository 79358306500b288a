// What runs in the lab: the cluster config derived from the lab's description (the same code path
// an operator's config goes through), batond on every node, and the example applications.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BatonError } from '../errors.js';
import { type ClusterConfig, writeClusterConfig } from '../config/cluster.js';
import type { LabDescription } from './description.js';
import type { ProcessSpec } from './lab.js';
import { repoRoot } from '../paths.js';

export const PEER_PORT = 4700;
export const CONTROL_PORT = 4701;
export const HTTP_PORT = 80;
export const LINE_PORT = 7000;
export const API_PORT = 4702;

export function clusterConfigPath(lab: LabDescription): string {
  return path.join(lab.runDir, 'cluster.yaml');
}

export function agentSocket(lab: LabDescription, node: string): string {
  return path.join(lab.runDir, `${node}.sock`);
}

export function controlSecretFile(lab: LabDescription, node: string): string {
  return path.join(lab.runDir, `${node}.secret`);
}

/** The lab's cluster CA and node certificates (scripts/certs.sh), for the mutual-TLS peer links. */
export function certsDir(lab: LabDescription): string {
  return path.join(lab.runDir, 'certs');
}

function ensureLabCertificates(lab: LabDescription): void {
  const script = path.join(repoRoot(), 'scripts/certs.sh');
  const dir = certsDir(lab);
  const make = (args: string[]) => {
    try {
      execFileSync(script, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (err) {
      throw new BatonError('E_LAB', `scripts/certs.sh ${args.join(' ')} failed: ${String((err as { stderr?: Buffer }).stderr ?? (err as Error).message).trim()}`, { step: 'certs' });
    }
  };
  make(['ca', dir]);
  for (const n of lab.nodes) if (!fs.existsSync(path.join(dir, `${n.name}.crt`))) make(['node', dir, n.name, n.address]);
}

/** The REST API's bearer token of the lab: one for the whole cluster, like an operator's. */
export function apiTokenFile(lab: LabDescription): string {
  return path.join(lab.runDir, 'api-token');
}

export function clusterFromLab(lab: LabDescription, xdpMode: 'native' | 'generic' = 'native'): ClusterConfig {
  return {
    version: 1,
    instance: lab.prefix,
    dvipa: { address: lab.dvipa.address, ports: [...lab.dvipa.ports] },
    distributor: lab.distributor,
    controlPort: CONTROL_PORT,
    stateDir: lab.runDir,
    api: { port: API_PORT, tokenFile: apiTokenFile(lab) },
    tls: { caFile: path.join(certsDir(lab), 'ca.crt') },
    xdpMode,
    handoffStepTimeoutMs: 2000,
    releaseGraceMs: 3000,
    nodes: lab.nodes.map((n, i) => ({
      name: n.name,
      id: i + 1,
      address: n.address,
      mac: n.mac,
      interface: n.interface,
      peerPort: PEER_PORT,
      agentSocket: agentSocket(lab, n.name),
      controlSecretFile: controlSecretFile(lab, n.name),
      certFile: path.join(certsDir(lab), `${n.name}.crt`),
      keyFile: path.join(certsDir(lab), `${n.name}.key`),
    })),
  };
}

export interface LabProcessOptions {
  examples?: boolean;
  xdpMode?: 'native' | 'generic';
  /** More arguments for named processes, e.g. { 'n2-http-target': ['--capacity', '0'] }. */
  extraArgs?: Record<string, string[]>;
  /** More HTTP target instances: node → instance names. */
  moreHttpTargets?: Record<string, string[]>;
  /**
   * Named processes that run without any capability (setpriv empties their bounding set before
   * node starts), as applications may in production: batond does the privileged socket work.
   */
  unprivileged?: string[];
}

/**
 * batond everywhere; the routing applications on the distributor; the targets on every other
 * node. The HTTP targets alternate between node:http and fastify, so the lab serves both.
 */
export function labProcesses(lab: LabDescription, opts: LabProcessOptions = {}): ProcessSpec[] {
  fs.mkdirSync(lab.runDir, { recursive: true });
  writeClusterConfig(clusterConfigPath(lab), clusterFromLab(lab, opts.xdpMode));
  ensureLabCertificates(lab);
  if (!fs.existsSync(apiTokenFile(lab))) fs.writeFileSync(apiTokenFile(lab), `${randomBytes(24).toString('base64url')}\n`, { mode: 0o600 });
  const js = (rel: string) => path.join(repoRoot(), 'dist', rel);
  const node = process.execPath;
  const specs: ProcessSpec[] = lab.nodes.map((n) => ({
    name: `${n.name}-batond`,
    ns: n.ns,
    argv: [node, js('controller/bin/batond.js'), '--config', clusterConfigPath(lab), '--node', n.name],
  }));
  if (opts.examples === false) return specs;
  const targetNodes = lab.nodes.filter((n) => n.name !== lab.distributor).map((n) => n.name);
  for (const n of lab.nodes) {
    const common = ['--agent', agentSocket(lab, n.name), '--node', n.name, '--control-port', String(CONTROL_PORT), '--control-secret', controlSecretFile(lab, n.name)];
    const routerArgs = [...common, '--dvipa', lab.dvipa.address, '--targets', targetNodes.join(',')];
    const framework = targetNodes.indexOf(n.name) % 2 === 0 ? 'node' : 'fastify';
    if (n.name === lab.distributor) {
      specs.push(
        { name: `${n.name}-http-router`, ns: n.ns, argv: [node, js('examples/http/router.js'), ...routerArgs, '--port', String(HTTP_PORT)] },
        { name: `${n.name}-line-router`, ns: n.ns, argv: [node, js('examples/line/router.js'), ...routerArgs, '--port', String(LINE_PORT)] },
      );
    } else {
      specs.push(
        { name: `${n.name}-http-target`, ns: n.ns, argv: [node, js('examples/http/target.js'), ...common, '--port', String(HTTP_PORT), '--framework', framework] },
        { name: `${n.name}-line-target`, ns: n.ns, argv: [node, js('examples/line/target.js'), ...common, '--port', String(LINE_PORT)] },
      );
    }
  }
  for (const [nodeName, instances] of Object.entries(opts.moreHttpTargets ?? {})) {
    const n = lab.nodes.find((x) => x.name === nodeName);
    if (!n) throw new BatonError('E_LAB', `no node ${nodeName} for more HTTP targets`, { step: 'processes' });
    const common = ['--agent', agentSocket(lab, n.name), '--node', n.name, '--control-port', String(CONTROL_PORT), '--control-secret', controlSecretFile(lab, n.name)];
    for (const instance of instances) {
      specs.push({ name: `${n.name}-${instance}`, ns: n.ns, argv: [node, js('examples/http/target.js'), ...common, '--port', String(HTTP_PORT), '--instance', instance] });
    }
  }
  for (const spec of specs) spec.argv.push(...(opts.extraArgs?.[spec.name] ?? []));
  for (const spec of specs) if (opts.unprivileged?.includes(spec.name)) spec.argv.unshift('setpriv', '--bounding-set=-all', '--inh-caps=-all', '--');
  return specs;
}

/** Lines every lab process logs once it is serving; the lab is ready when all have appeared. */
const READY: Array<[RegExp, RegExp]> = [
  [/-batond$/, /"msg":"batond ready"/],
  [/-(http|line)-router$/, /"msg":"(http|line) router listening"/],
  [/-(http|line)-target$|-http-[a-z0-9]+$/, /"msg":"(http|line) target registered"/],
];

export async function waitUntilReady(lab: LabDescription, specs: ProcessSpec[], timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const pending = new Set(specs.map((s) => s.name));
  while (pending.size > 0) {
    for (const name of [...pending]) {
      const rule = READY.find(([n]) => n.test(name));
      const log = path.join(lab.runDir, `${name}.log`);
      const text = fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : '';
      if (!rule || rule[1].test(text)) pending.delete(name);
      else if (/"level":60/.test(text)) throw new BatonError('E_LAB', `${name} failed to start: see ${log}`, { step: 'ready' });
    }
    if (pending.size === 0) break;
    if (Date.now() > deadline) throw new BatonError('E_LAB', `not ready after ${timeoutMs} ms: ${[...pending].join(', ')}`, { step: 'ready' });
    await sleep(100);
  }
  await waitForDiscovery(lab, specs, deadline);
}

/**
 * Ready also means the HTTP router has heard of every HTTP target instance (reports travel
 * between nodes once a second), so a test's first request does not race target discovery.
 */
async function waitForDiscovery(lab: LabDescription, specs: ProcessSpec[], deadline: number): Promise<void> {
  const router = specs.find((s) => s.name.endsWith('-http-router'));
  if (!router) return;
  const expected = specs
    .filter((s) => s.argv.some((a) => a.endsWith('examples/http/target.js')))
    .map((s) => {
      const node = lab.nodes.find((n) => n.ns === s.ns)!.name;
      const i = s.argv.indexOf('--instance');
      return `"node":"${node}","app":"http-target","instance":"${i >= 0 ? s.argv[i + 1] : 'http-target'}"`;
    });
  const log = path.join(lab.runDir, `${router.name}.log`);
  for (;;) {
    const last = fs.readFileSync(log, 'utf8').split('\n').filter((l) => l.includes('"msg":"target list changed"')).pop() ?? '';
    if (expected.every((e) => last.includes(e))) return;
    if (Date.now() > deadline) throw new BatonError('E_LAB', `the HTTP router has not discovered every target: last list ${last || 'none'}`, { step: 'ready' });
    await sleep(100);
  }
}
