// What runs in the lab: the cluster config derived from the lab's description (the same code path
// an operator's config goes through), batond on every node, and the example applications.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BatonError } from '../errors.js';
import type { Family } from '../flow.js';
import { type ClusterConfig, writeClusterConfig } from '../config/cluster.js';
import { newToken, tokenLine } from '../api/token.js';
import { type LabDescription, parseSubnet, parseSubnet6, subnet6Host, subnetHost } from './description.js';
import type { ProcessSpec } from './lab.js';
import { repoRoot } from '../paths.js';
import { readUnitConfinement, setprivArgs } from './systemd-unit.js';

export const PEER_PORT = 4700;
export const CONTROL_PORT = 4701;
export const HTTP_PORT = 80;
export const LINE_PORT = 7000;
/** The HTTP and line examples over TLS (LabProcessOptions.https): their DVIPA ports. */
export const HTTPS_PORT = 443;
export const TLS_LINE_PORT = 7443;
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

/** The certificate (and key) the lab's HTTPS router presents: for the DVIPA's IPv4 address, signed by the lab's CA. */
export function dvipaCertificate(lab: LabDescription): { cert: string; key: string } {
  return { cert: path.join(certsDir(lab), 'dvipa.crt'), key: path.join(certsDir(lab), 'dvipa.key') };
}

function ensureLabCertificates(lab: LabDescription, management: Family = 4): void {
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
  for (const n of lab.nodes) if (!fs.existsSync(path.join(dir, `${n.name}.crt`))) make(['node', dir, n.name, managementAddress(n, management)]);
  if (!fs.existsSync(dvipaCertificate(lab).cert)) make(['node', dir, 'dvipa', lab.dvipa.address]);
}

/** The lab's cluster CA certificate: what batonctl and curl check the nodes' API certificates against. */
export function labCaFile(lab: LabDescription): string {
  return path.join(certsDir(lab), 'ca.crt');
}

/** The API token file every batond of the lab reads: two operators, lab-admin and lab-read, by their tokens' hashes. */
export function apiOperatorsFile(lab: LabDescription): string {
  return path.join(lab.runDir, 'api-tokens');
}

/** The token of the lab's admin operator (scope admin), as an operator keeps it: what batonctl uses in the lab. */
export function apiTokenFile(lab: LabDescription): string {
  return path.join(lab.runDir, 'api-token');
}

/** The token of the lab's read-only operator (scope read). */
export function apiReadTokenFile(lab: LabDescription): string {
  return path.join(lab.runDir, 'api-token-read');
}

/** Two operators for the lab, made once per lab directory: their tokens for the callers, the hashes for batond. */
function ensureLabApiTokens(lab: LabDescription): void {
  const files = [apiOperatorsFile(lab), apiTokenFile(lab), apiReadTokenFile(lab)];
  if (files.every((f) => fs.existsSync(f))) return;
  const admin = newToken();
  const read = newToken();
  const write = (file: string, text: string) => {
    fs.writeFileSync(file, text, { mode: 0o600 });
    fs.chmodSync(file, 0o600);
  };
  write(apiTokenFile(lab), `${admin}\n`);
  write(apiReadTokenFile(lab), `${read}\n`);
  write(apiOperatorsFile(lab), `# The lab's API operators (docs/api.md): name scope sha256:<hash of the token>\n${tokenLine({ name: 'lab-admin', scope: 'admin' }, admin)}\n${tokenLine({ name: 'lab-read', scope: 'read' }, read)}\n`);
}

/**
 * Where the lab's operator-added DVIPAs come from: host numbers 16–31 of its subnet (a /28), and
 * <subnet6>:1:0/112 of its IPv6 subnet (docs/lab.md).
 */
export const LAB_EXTRA_DVIPAS = { first: 16, prefix: 28, first6: 0x1_0000, prefix6: 112 } as const;

/** The address a lab node's batond is managed at (peer links, REST API): its IPv4 or its IPv6 one. */
export function managementAddress(node: LabDescription['nodes'][number], family: Family = 4): string {
  return family === 6 ? node.address6 : node.address;
}

export function clusterFromLab(lab: LabDescription, opts: Pick<LabProcessOptions, 'xdpMode' | 'limits' | 'management' | 'https' | 'examples'> = {}): ClusterConfig {
  const { xdpMode = 'native', limits, management } = opts;
  return {
    version: 1,
    instance: lab.prefix,
    dvipa: { addresses: [lab.dvipa.address, lab.dvipa.address6], ports: [...lab.dvipa.ports, ...(opts.https && opts.examples !== false ? [HTTPS_PORT, TLS_LINE_PORT] : [])] },
    // The config's DVIPAs, and for the ones an operator adds .16–.31 of the lab subnet and a /112
    // of the IPv6 one (docs/lab.md).
    dvipaCidrs: [
      `${lab.dvipa.address}/32`,
      `${lab.dvipa.address6}/128`,
      `${subnetHost(parseSubnet(lab.subnet), LAB_EXTRA_DVIPAS.first)}/${LAB_EXTRA_DVIPAS.prefix}`,
      `${subnet6Host(parseSubnet6(lab.subnet6), LAB_EXTRA_DVIPAS.first6, 'raw')}/${LAB_EXTRA_DVIPAS.prefix6}`,
    ],
    distributors: [lab.distributor, ...(lab.backups ?? [])],
    controlPort: CONTROL_PORT,
    stateDir: lab.runDir,
    api: { port: API_PORT, tokenFile: apiOperatorsFile(lab) },
    tls: { caFile: labCaFile(lab) },
    xdpMode,
    handoffStepTimeoutMs: 2000,
    releaseGraceMs: 3000,
    ...(limits ? { limits } : {}),
    nodes: lab.nodes.map((n, i) => ({
      name: n.name,
      id: i + 1,
      address: managementAddress(n, management),
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
  /** The family of the nodes' management addresses in the cluster file (peer links, REST API): 4 by default, 6 for a lab managed over IPv6. */
  management?: Family;
  xdpMode?: 'native' | 'generic';
  /** The cluster file's limits (quotas, capacities), for tests of them. */
  limits?: ClusterConfig['limits'];
  /** More arguments for named processes, e.g. { 'n2-http-target': ['--capacity', '0'] }. */
  extraArgs?: Record<string, string[]>;
  /**
   * The HTTP example over TLS too, on HTTPS_PORT: the router terminates TLS with a certificate for
   * the DVIPA (dvipaCertificate) and hands connections off with their session; the targets (an
   * instance https-target beside http-target) need kernel TLS to take them.
   */
  https?: boolean;
  /** More HTTP target instances: node → instance names. */
  moreHttpTargets?: Record<string, string[]>;
  /**
   * Named processes that run without any capability (setpriv empties their bounding set before
   * node starts), as applications may in production: batond does the privileged socket work.
   */
  unprivileged?: string[];
  /**
   * Named processes (batond) that run with exactly the privileges deploy/systemd/batond.service
   * gives batond: its capability bounding set and NoNewPrivileges, read from the unit (systemd-unit.ts).
   */
  unitCapabilities?: string[];
}

/**
 * batond everywhere; the routing applications on the distributor; the targets on every other
 * node. The HTTP targets alternate between node:http and fastify, so the lab serves both.
 */
export function labProcesses(lab: LabDescription, opts: LabProcessOptions = {}): ProcessSpec[] {
  fs.mkdirSync(lab.runDir, { recursive: true });
  writeClusterConfig(clusterConfigPath(lab), clusterFromLab(lab, opts));
  ensureLabCertificates(lab, opts.management);
  ensureLabApiTokens(lab);
  const js = (rel: string) => path.join(repoRoot(), 'dist', rel);
  const node = process.execPath;
  const specs: ProcessSpec[] = lab.nodes.map((n) => ({
    name: `${n.name}-batond`,
    ns: n.ns,
    argv: [node, js('controller/bin/batond.js'), '--config', clusterConfigPath(lab), '--node', n.name],
  }));
  // With a backup, keepalived on each distributor decides which one is active (docs/operations.md).
  // The first distributor's must be MASTER first: with nopreempt, whichever node is MASTER first
  // stays so, and started together two decide it by ~10 ms of priority skew, less than their
  // start-up jitter (n2 won sometimes). The backups' start last and a second later, when the first
  // has long claimed the DVIPA (0.3 s with 100 ms adverts).
  const later: ProcessSpec[] = [];
  if (lab.backups?.length) {
    const cluster = clusterFromLab(lab);
    for (const name of cluster.distributors) {
      const n = lab.nodes.find((x) => x.name === name)!;
      // As the systemd unit does (deploy/systemd/baton-keepalived.service): baton-keepalived makes
      // its files ready and prints the command, which the shell execs, so the lab supervises
      // keepalived itself (a SIGTERM reaches it, and it leaves nothing behind).
      const prepare = [node, js('controller/bin/baton-keepalived.js'), '--config', clusterConfigPath(lab), '--node', name];
      const spec: ProcessSpec = { name: `${name}-keepalived`, ns: n.ns, argv: ['sh', '-c', 'set -e; argv=$("$@"); exec $argv', 'sh', ...prepare] };
      if (name === lab.distributor) specs.push(spec);
      else later.push({ ...spec, startDelayMs: later.length === 0 ? 1000 : 0 });
    }
  }
  if (opts.examples === false) return confine([...specs, ...later], opts);
  // Targets on every node but the first distributor; a backup distributor (a target too) also
  // runs the routing applications, which get connections once it has taken the DVIPA over.
  const targetNodes = lab.nodes.filter((n) => n.name !== lab.distributor).map((n) => n.name);
  const distributors = [lab.distributor, ...(lab.backups ?? [])];
  for (const n of lab.nodes) {
    const common = ['--agent', agentSocket(lab, n.name), '--node', n.name, '--control-port', String(CONTROL_PORT), '--control-secret', controlSecretFile(lab, n.name)];
    // A node never hands a connection to itself.
    const routerArgs = [...common, '--dvipa', `${lab.dvipa.address},${lab.dvipa.address6}`, '--targets', targetNodes.filter((t) => t !== n.name).join(',')];
    const framework = targetNodes.indexOf(n.name) % 2 === 0 ? 'node' : 'fastify';
    if (distributors.includes(n.name)) {
      specs.push(
        { name: `${n.name}-http-router`, ns: n.ns, argv: [node, js('examples/http/router.js'), ...routerArgs, '--port', String(HTTP_PORT)] },
        { name: `${n.name}-line-router`, ns: n.ns, argv: [node, js('examples/line/router.js'), ...routerArgs, '--port', String(LINE_PORT)] },
      );
      if (opts.https) {
        const { cert, key } = dvipaCertificate(lab);
        const tlsArgs = ['--tls-cert', cert, '--tls-key', key];
        specs.push(
          { name: `${n.name}-https-router`, ns: n.ns, argv: [node, js('examples/http/router.js'), ...routerArgs, '--port', String(HTTPS_PORT), ...tlsArgs] },
          { name: `${n.name}-tls-line-router`, ns: n.ns, argv: [node, js('examples/line/router.js'), ...routerArgs, '--port', String(TLS_LINE_PORT), ...tlsArgs] },
        );
      }
    }
    if (targetNodes.includes(n.name)) {
      specs.push(
        { name: `${n.name}-http-target`, ns: n.ns, argv: [node, js('examples/http/target.js'), ...common, '--port', String(HTTP_PORT), '--framework', framework] },
        { name: `${n.name}-line-target`, ns: n.ns, argv: [node, js('examples/line/target.js'), ...common, '--port', String(LINE_PORT)] },
      );
      if (opts.https) {
        specs.push(
          { name: `${n.name}-https-target`, ns: n.ns, argv: [node, js('examples/http/target.js'), ...common, '--port', String(HTTPS_PORT), '--instance', 'https-target', '--framework', framework] },
          { name: `${n.name}-tls-line-target`, ns: n.ns, argv: [node, js('examples/line/target.js'), ...common, '--port', String(TLS_LINE_PORT), '--instance', 'tls-line-target'] },
        );
      }
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
  return confine([...specs, ...later], opts);
}

/** More arguments, then the privileges each process is started with (setpriv before node). */
function confine(specs: ProcessSpec[], opts: LabProcessOptions): ProcessSpec[] {
  const unit = opts.unitCapabilities?.length ? setprivArgs(readUnitConfinement()) : [];
  for (const spec of specs) {
    spec.argv.push(...(opts.extraArgs?.[spec.name] ?? []));
    if (opts.unprivileged?.includes(spec.name)) spec.argv.unshift('setpriv', '--bounding-set=-all', '--inh-caps=-all', '--');
    else if (opts.unitCapabilities?.includes(spec.name)) spec.argv.unshift(...unit);
  }
  return specs;
}

/** Lines every lab process logs once it is serving; the lab is ready when all have appeared. */
const READY: Array<[RegExp, RegExp]> = [
  [/-batond$/, /"msg":"batond ready"/],
  [/-(https?|(tls-)?line)-router$/, /"msg":"(http|line) router listening"/],
  [/-(https?|(tls-)?line)-target$|-http-[a-z0-9]+$/, /"msg":"(http|line) target registered"/],
];

/**
 * Waits until every process says it is ready. BATON_LAB_READY_MS raises the bound (default 20 s)
 * where processes start slowly: a lab inside an emulated VM (test/ktls).
 */
export async function waitUntilReady(lab: LabDescription, specs: ProcessSpec[], timeoutMs = Number(process.env.BATON_LAB_READY_MS ?? 20_000)): Promise<void> {
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
 * Ready also means each HTTP router (HTTP, HTTPS) has heard of every HTTP target instance on its
 * port (reports travel between nodes once a second), so a test's first request does not race
 * target discovery.
 */
async function waitForDiscovery(lab: LabDescription, specs: ProcessSpec[], deadline: number): Promise<void> {
  const portOf = (s: ProcessSpec) => s.argv[s.argv.indexOf('--port') + 1];
  for (const router of [/-http-router$/, /-https-router$/].map((r) => specs.find((s) => r.test(s.name)))) {
    if (!router) continue;
    const expected = specs
      .filter((s) => s.argv.some((a) => a.endsWith('examples/http/target.js')) && portOf(s) === portOf(router))
      .map((s) => {
        const node = lab.nodes.find((n) => n.ns === s.ns)!.name;
        const i = s.argv.indexOf('--instance');
        return `"node":"${node}","app":"http-target","instance":"${i >= 0 ? s.argv[i + 1] : 'http-target'}"`;
      });
    const log = path.join(lab.runDir, `${router.name}.log`);
    for (;;) {
      const last = fs.readFileSync(log, 'utf8').split('\n').filter((l) => l.includes('"msg":"target list changed"')).pop() ?? '';
      if (expected.every((e) => last.includes(e))) break;
      if (Date.now() > deadline) throw new BatonError('E_LAB', `${router.name} has not discovered every target: last list ${last || 'none'}`, { step: 'ready' });
      await sleep(100);
    }
  }
}
