// The benchmark's own namespace lab: the standard cluster (batond, the example routers and targets)
// plus the baselines the comparisons need, all inside the lab's namespaces and stopped by labDown:
//   n2/n3  plain servers on the node's own address (bench/servers.ts): the direct path, and what
//          HAProxy relays to;
//   n1     HAProxy, with a config written here, on n1's own address.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { CONTROL_PORT, LINE_PORT, HTTP_PORT, labProcesses, waitUntilReady } from '../controller/lab/cluster.js';
import type { LabDescription } from '../controller/lab/description.js';
import { labDown, labUp, type ProcessSpec } from '../controller/lab/lab.js';
import { namespacePath, namespacePids } from '../controller/lab/netns.js';
import { LOG_FLUSH_EVERY_MS } from '../controller/log.js';
import { buildPath, repoRoot } from '../controller/paths.js';

const execFileP = promisify(execFile);

export const PLAIN_LINE_PORT = 7100;
export const PLAIN_HTTP_PORT = 8080;
export const HAPROXY_LINE_PORT = 7100;
export const HAPROXY_HTTP_PORT = 8080;
/** The reference handoff (bench/reference/handoff.c): its distributor on DVIPA:REF_PORT, its importer on n2's address. */
export const REF_PORT = 7300;
export const REF_IMPORTER_PORT = 7301;
export const REF_DISTRIBUTOR = 'n1-ref-distributor';
export const REF_IMPORTER = 'n2-ref-importer';
export { CONTROL_PORT, HTTP_PORT, LINE_PORT };

/** Until every lab process has written what it logged so far (asynchronous lines wait up to LOG_FLUSH_EVERY_MS). */
export function logsFlushed(): Promise<void> {
  return new Promise((r) => setTimeout(r, 2 * LOG_FLUSH_EVERY_MS));
}

export interface BenchLab {
  lab: LabDescription;
  dir: string;
  /** What the lab started, as started (arguments, environment): to start one of them again. */
  specs: ProcessSpec[];
  node(name: string): LabDescription['nodes'][number];
  /** Runs argv in a lab namespace (nsenter, no shell), bounded; rejects on a non-zero exit. */
  exec(ns: string, argv: string[], timeoutMs?: number): Promise<string>;
  /** The bench client (dist/bench/client.js) in the client namespace; its one JSON line, parsed. */
  client<T>(args: string[], timeoutMs: number): Promise<T>;
  pids(ns: string): number[];
  down(): Promise<void>;
}

export interface ThreadedNapi {
  /** pid of the kernel thread polling the node's eth0. */
  node: number;
  /** pid of the one polling its bridge-side peer. */
  peer: number;
  off(): Promise<void>;
}

/** Kernel threads running NAPI polls (named napi/<dev>-<id>), by pid. */
function napiThreads(): Map<number, string> {
  const out = new Map<number, string>();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const comm = fs.readFileSync(`/proc/${d}/comm`, 'utf8').trim();
      if (comm.startsWith('napi/')) out.set(Number(d), comm);
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

/**
 * Everything a node does with a frame it receives (the veth receive path, its XDP program, then
 * XDP_TX or its IP stack) runs in the NAPI poll of its eth0, ordinarily as softirq work charged
 * to whatever happens to run on that CPU. Threaded, the poll is a kernel thread of its own whose
 * CPU time is that node's packet work alone; the bridge-side peer is threaded too, so that the
 * bridge's work on what the node sends is not run (and charged) inside the node's thread.
 * A measurement aid for the duration of one benchmark, undone by off().
 */
export async function threadedNapi(b: BenchLab, nodeName: string): Promise<ThreadedNapi> {
  const n = b.node(nodeName);
  // sysfs shows the devices of the namespace it was mounted in: `ip netns exec` mounts the node's.
  const set = (ns: string, dev: string, on: boolean) => execFileP('ip', ['netns', 'exec', ns, 'sh', '-c', `echo ${on ? 1 : 0} > /sys/class/net/${dev}/threaded`], { timeout: 10_000 });
  const before = napiThreads();
  await set(n.ns, n.interface, true);
  await set(b.lab.bridge.ns, n.bridgePort, true);
  const appeared = [...napiThreads()].filter(([pid]) => !before.has(pid));
  const node = appeared.find(([, comm]) => comm.startsWith(`napi/${n.interface}-`))?.[0];
  const peer = appeared.find(([, comm]) => comm.startsWith(`napi/${n.bridgePort}-`))?.[0];
  const off = async () => {
    await set(n.ns, n.interface, false).catch(() => undefined);
    await set(b.lab.bridge.ns, n.bridgePort, false).catch(() => undefined);
  };
  if (node === undefined || peer === undefined) {
    await off();
    throw new Error(`threaded NAPI on ${n.ns}/${n.interface}: no poll thread appeared`);
  }
  return { node, peer, off };
}

function haproxyConfig(lab: LabDescription): string {
  const [n1, n2, n3] = lab.nodes;
  // Defaults a deployment would start from; threads left to HAProxy (one per core).
  return `# Written by bench/lab.ts for \`make bench\`: the HAProxy baseline, not part of Baton.
global
    maxconn 4096

defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s

# Throughput baseline: a TCP relay to the plain line server on n2.
frontend line_in
    mode tcp
    bind ${n1!.address}:${HAPROXY_LINE_PORT}
    default_backend line_n2

backend line_n2
    mode tcp
    server n2 ${n2!.address}:${PLAIN_LINE_PORT}

# First- and later-request baseline: routes by the user named in the Authorization header, as the
# HTTP example's router routes by the authenticated user (alice to n2, bob to n3).
frontend web_in
    mode http
    bind ${n1!.address}:${HAPROXY_HTTP_PORT}
    acl user_bob req.hdr(authorization) -m sub username="bob"
    use_backend web_n3 if user_bob
    default_backend web_n2

backend web_n2
    mode http
    server n2 ${n2!.address}:${PLAIN_HTTP_PORT}

backend web_n3
    mode http
    server n3 ${n3!.address}:${PLAIN_HTTP_PORT}
`;
}

function benchProcesses(lab: LabDescription): ProcessSpec[] {
  const node = process.execPath;
  const servers = path.join(repoRoot(), 'dist/bench/servers.js');
  const secret = path.join(lab.runDir, 'bench-nonce.secret');
  fs.writeFileSync(secret, randomBytes(32), { mode: 0o600 });
  const cfg = path.join(lab.runDir, 'haproxy.cfg');
  fs.writeFileSync(cfg, haproxyConfig(lab));
  const [n1, n2, n3] = lab.nodes;
  return [
    { name: 'n2-plain-line', ns: n2!.ns, argv: [node, servers, 'line', '--host', n2!.address, '--port', String(PLAIN_LINE_PORT)] },
    ...[n2!, n3!].map((n) => ({
      name: `${n.name}-plain-web`,
      ns: n.ns,
      argv: [node, servers, 'http', '--host', n.address, '--port', String(PLAIN_HTTP_PORT), '--node', n.name, '--secret-file', secret],
    })),
    // -db: stay in the foreground, so the lab's supervisor owns the process.
    { name: 'n1-haproxy', ns: n1!.ns, argv: ['haproxy', '-db', '-f', cfg] },
    // The reference handoff: the importer on n2, the distributor on n1 writing into n1's pinned
    // routing table (it waits for batond's pin and for the importer).
    { name: REF_IMPORTER, ns: n2!.ns, argv: [buildPath('bench', 'ref-handoff'), 'importer', n2!.address, String(REF_IMPORTER_PORT), n2!.name] },
    {
      name: REF_DISTRIBUTOR,
      ns: n1!.ns,
      argv: [buildPath('bench', 'ref-handoff'), 'distributor', lab.dvipa.address, String(REF_PORT), n2!.address, String(REF_IMPORTER_PORT), `/sys/fs/bpf/baton/${lab.prefix}-${n1!.name}/baton_routes`, n2!.mac, '2'],
    },
  ];
}

/** Labs up now, whoever started them: what an interrupted suite must tear down. */
export const liveLabs = new Set<BenchLab>();

export interface BenchLabOptions {
  prefix: string;
  dir: string;
  log: (s: string) => void;
  /** n2 is a backup distributor: keepalived on n1 and n2, n1 preferred (docs/operations.md). */
  backup?: boolean;
  /** The baselines (plain servers, HAProxy); default true. */
  baselines?: boolean;
  /** The example routers and targets; default true. Without them, batond (and keepalived) only. */
  examples?: boolean;
}

export async function startBenchLab(opts: BenchLabOptions): Promise<BenchLab> {
  const dir = path.resolve(opts.dir);
  const baselines = opts.baselines ?? true;
  // A lab of this prefix left by an interrupted run would make labUp refuse: clear it first.
  await labDown({ prefix: opts.prefix, dir });
  let specs: ProcessSpec[] = [];
  const lab = await labUp({
    prefix: opts.prefix,
    dir,
    backup: opts.backup,
    processes: (l) => {
      // The rate benchmark keeps up to a few hundred connections from the one client address in
      // the routing phase at once; the default per-source bound (64) is for the internet. The same
      // address stands for every client here: its handed-off connections (thousands a second,
      // each lingering releaseGraceMs after its close) are bounded by the table, not by the
      // per-source quota (4096 by default).
      // A backup distributor runs the routing applications too: the same bound there.
      const perSource = ['--routing-max-per-source', '4096'];
      const examples = labProcesses(l, { examples: opts.examples ?? true, extraArgs: { 'n1-line-router': perSource, ...(opts.backup ? { 'n2-line-router': perSource } : {}) }, limits: { entriesPerSource: 262_144 } });
      // The handoff timings are read from the routers' info-level log lines, whatever level the
      // caller's environment asks for (make bench quiets the suite's own logger); lines are
      // buffered as in production (logsFlushed() waits for them), whatever the environment says.
      specs = [...examples, ...(baselines ? benchProcesses(l) : [])].map((s) => ({ ...s, env: { ...s.env, BATON_LOG_LEVEL: 'info', BATON_LOG_SYNC: '0' } }));
      return specs;
    },
  });
  const exec = async (ns: string, argv: string[], timeoutMs = 30_000) => {
    const { stdout } = await execFileP('nsenter', [`--net=${namespacePath(ns)}`, '--', ...argv], { timeout: timeoutMs, maxBuffer: 256 * 1024 * 1024 });
    return stdout;
  };
  const bench: BenchLab = {
    lab,
    dir,
    specs,
    node: (name) => {
      const n = lab.nodes.find((x) => x.name === name);
      if (!n) throw new Error(`no node ${name}`);
      return n;
    },
    exec,
    async client<T>(args: string[], timeoutMs: number): Promise<T> {
      let out: string;
      try {
        out = await exec(lab.client.ns, [process.execPath, path.join(repoRoot(), 'dist/bench/client.js'), ...args], timeoutMs);
      } catch (err) {
        const e = err as { stdout?: string; stderr?: string; message: string };
        throw new Error(`bench client ${args[0]} failed: ${(e.stdout ?? '').trim().slice(-500)} ${(e.stderr ?? e.message).trim().slice(-1500)}`);
      }
      const line = out.trim().split('\n').pop() ?? '';
      return JSON.parse(line) as T;
    },
    pids: (ns) => namespacePids(ns),
    down: async () => {
      await labDown({ prefix: opts.prefix, dir });
      liveLabs.delete(bench);
    },
  };
  liveLabs.add(bench);
  try {
    await waitUntilReady(lab, specs);
    const [n1, n2, n3] = lab.nodes;
    if (baselines) {
      await bench.client(
        ['probe', '--targets', [`${n2!.address}:${PLAIN_LINE_PORT}`, `${n2!.address}:${PLAIN_HTTP_PORT}`, `${n3!.address}:${PLAIN_HTTP_PORT}`, `${n1!.address}:${HAPROXY_LINE_PORT}`, `${n1!.address}:${HAPROXY_HTTP_PORT}`, `${lab.dvipa.address}:${REF_PORT}`].join(',')],
        30_000,
      );
    }
    // Thousands of short connections from one address: a wide port range and reuse of TIME_WAIT
    // ports, in the client's namespace only.
    await exec(lab.client.ns, ['sysctl', '-q', '-w', 'net.ipv4.ip_local_port_range=1024 65000', 'net.ipv4.tcp_tw_reuse=1']);
    opts.log(`lab ${lab.prefix} up: DVIPA ${lab.dvipa.address}, client ${lab.client.address}`);
  } catch (err) {
    await bench.down();
    throw err;
  }
  return bench;
}
