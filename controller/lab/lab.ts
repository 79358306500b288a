// The namespace lab: a client and three nodes on a Linux bridge, all in namespaces this module
// creates, so nothing of the host's own networking is touched. labUp builds it and writes
// lab.json; labDown removes it — also after a crash, from the prefix alone.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BatonError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { buildPath, repoRoot } from '../paths.js';
import {
  BPF_PIN_ROOT,
  DEFAULT_PREFIX,
  DEFAULT_SUBNET,
  type LabDescription,
  checkPrefix,
  describeLab,
  labNames,
  parseSubnet,
  readLabDescription,
  writeLabDescription,
} from './description.js';
import {
  type CommandError,
  createNamespace,
  deleteNamespace,
  inNamespace,
  ip,
  listLinks,
  listNamespaces,
  namespaceExists,
  namespacePids,
  run,
} from './netns.js';
import {
  type ProcessSpec,
  type StartedProcess,
  findMarkedProcesses,
  isAlive,
  listPidFiles,
  startProcess,
  stopProcesses,
} from './processes.js';

export type { LabDescription } from './description.js';
export type { ProcessSpec } from './processes.js';
export { readLabDescription } from './description.js';

export interface LabOptions {
  /** Namespace, pin and MAC prefix; default "baton". Two labs at once need two prefixes. */
  prefix?: string;
  /** Where lab.json and run/ go. */
  dir: string;
  /** IPv4 network, /16 to /24; default 10.203.0.0/24. */
  subnet?: string;
  /** IPv6 network beside it, a /64; default fd62:6174:6f6e::/64. */
  subnet6?: string;
  /** What to run once the network is up (batond, example apps); started in order. */
  processes?: (lab: LabDescription) => ProcessSpec[];
  /** n2 is a backup distributor (keepalived on n1 and n2 decides which is active). */
  backup?: boolean;
}

export interface LabRef {
  prefix?: string;
  dir: string;
}

export interface LabStatus {
  description?: LabDescription;
  /** Why lab.json was not usable, when it exists but is invalid or names another prefix. */
  descriptionError?: string;
  namespaces: Array<{ name: string; exists: boolean }>;
  processes: Array<{ name: string; pid: number | undefined; alive: boolean }>;
}

export const LAB_FILE = 'lab.json';
/** A process that exits within this long after its start fails labUp: it never ran. */
const START_GRACE_MS = 200;
const log: Logger = createLogger({ component: 'lab' });

export function labFile(dir: string): string {
  return path.join(path.resolve(dir), LAB_FILE);
}

function runDirOf(dir: string): string {
  return path.join(path.resolve(dir), 'run');
}

/** Lab namespaces that exist now: the five the lab makes plus any `<prefix>-*` an external tool added. */
function existingLabNamespaces(prefix: string): string[] {
  return listNamespaces().filter((n) => n.startsWith(`${prefix}-`));
}

async function passObject(): Promise<string> {
  const obj = buildPath('bpf', 'pass.o');
  if (!fs.existsSync(obj)) {
    // Only the one object: building all of bpf/ would make the lab depend on steer.c compiling.
    await run(['make', '-C', repoRoot(), 'build/bpf/pass.o'], { step: 'build-pass', timeoutMs: 60_000 });
  }
  if (!fs.existsSync(obj)) throw new BatonError('E_LAB', `${obj} is missing and could not be built: run \`make bpf\``, { step: 'build-pass' });
  return obj;
}

/** Runs fns concurrently but waits for all of them, so a teardown never races a half-done step. */
async function allSettled(fns: Array<() => Promise<void>>): Promise<void> {
  const results = await Promise.allSettled(fns.map((f) => f()));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

async function buildNetwork(d: LabDescription, passObj: string): Promise<void> {
  const sw = d.bridge.ns;
  const prefixLength = parseSubnet(d.subnet).length;
  for (const ns of labNames(d.prefix).namespaces) {
    await createNamespace(ns);
    await ip(ns, ['link', 'set', 'lo', 'up'], { step: 'lo-up' });
  }
  // STP stays off (the default): ports forward at once instead of after the forward delay.
  await ip(sw, ['link', 'add', d.bridge.name, 'type', 'bridge'], { step: 'bridge' });
  await ip(sw, ['link', 'set', d.bridge.name, 'up'], { step: 'bridge' });

  const ends = [
    ...d.nodes.map((n) => ({ ns: n.ns, dev: n.interface, peer: n.bridgePort, address: n.address, address6: n.address6, mac: n.mac, node: true })),
    { ns: d.client.ns, dev: d.client.interface, peer: d.client.bridgePort, address: d.client.address, address6: d.client.address6, mac: d.client.mac, node: false },
  ];
  await allSettled(
    ends.map((e) => async () => {
      const step = `wire-${e.peer}`;
      await ip(sw, ['link', 'add', e.peer, 'type', 'veth', 'peer', 'name', e.dev, 'netns', e.ns], { step });
      await ip(e.ns, ['link', 'set', 'dev', e.dev, 'address', e.mac], { step });
      await ip(sw, ['link', 'set', 'dev', e.peer, 'master', d.bridge.name], { step });
      // veth hands locally generated segments on with CHECKSUM_PARTIAL; a frame redirected by XDP
      // never gets its checksum completed and the receiver drops it. Real NICs put complete
      // checksums on the wire, so make both ends behave like one (docs/datapath.md, "Checksums").
      await inNamespace(sw, ['ethtool', '-K', e.peer, 'tx', 'off'], { step });
      await inNamespace(e.ns, ['ethtool', '-K', e.dev, 'tx', 'off'], { step });
      await ip(e.ns, ['addr', 'add', `${e.address}/${prefixLength}`, 'dev', e.dev], { step });
      // Dual-stack. Without duplicate address detection: every address of the lab is its own, and
      // DAD would keep each one tentative (unusable) for a second after the link comes up. And
      // kept while the link is down: the kernel drops a link's IPv6 addresses when it goes down
      // (IPv4 ones stay), and a node killed with its link down (killNode) must come back with
      // both, as a machine whose network configuration is applied again on link up does.
      await inNamespace(e.ns, ['sysctl', '-q', '-w', `net.ipv6.conf.${e.dev}.accept_dad=0`, `net.ipv6.conf.${e.dev}.keep_addr_on_down=1`], { step });
      await ip(e.ns, ['addr', 'add', `${e.address6}/64`, 'dev', e.dev, 'nodad'], { step });
      if (e.node) {
        // Replies leave a target with the DVIPA as source though the request came through the
        // distributor: reverse-path filtering must not get a say. The script is the one that
        // provisions a VM node, so the lab and real machines cannot drift apart.
        await inNamespace(e.ns, [path.join(repoRoot(), 'scripts', 'provision', 'sysctls.sh'), e.dev], { step: 'sysctl' });
        // XDP_TX from the node's eth0 is only delivered when the peer runs an XDP program of
        // its own (docs/datapath.md, "XDP_TX needs an XDP program on the peer veth"); pass.o
        // lets everything through.
        await ip(sw, ['link', 'set', 'dev', e.peer, 'xdpdrv', 'obj', passObj, 'sec', 'xdp'], { step });
      }
      await ip(sw, ['link', 'set', 'dev', e.peer, 'up'], { step });
      await ip(e.ns, ['link', 'set', 'dev', e.dev, 'up'], { step });
    }),
  );
}

function checkSpecs(d: LabDescription, specs: ProcessSpec[]): void {
  const allowed = new Set(labNames(d.prefix).namespaces);
  const seen = new Set<string>();
  for (const s of specs) {
    const ctx = { step: 'processes', process: s.name, ns: s.ns };
    if (seen.has(s.name)) throw new BatonError('E_LAB', `process name ${s.name} is used twice`, ctx);
    seen.add(s.name);
    // Only the lab's namespaces: labDown finds what to kill there.
    if (!allowed.has(s.ns)) throw new BatonError('E_LAB', `process ${s.name} names namespace ${s.ns}, which is not one of ${[...allowed].join(', ')}`, ctx);
  }
}

function logTail(file: string, bytes = 2000): string {
  try {
    const text = fs.readFileSync(file, 'utf8');
    return text.slice(-bytes).trim();
  } catch {
    return '';
  }
}

async function startAll(d: LabDescription, specs: ProcessSpec[]): Promise<void> {
  const started: StartedProcess[] = [];
  for (const s of specs) {
    if (s.startDelayMs) await sleep(s.startDelayMs);
    const p = await startProcess(s, { runDir: d.runDir, lab: d.prefix });
    log.info({ lab: d.prefix, process: p.name, pid: p.pid, ns: p.ns }, 'lab process started');
    started.push(p);
  }
  if (started.length === 0) return;
  await sleep(START_GRACE_MS);
  // A clean exit may be a one-shot job; a failure this early is a process that never ran.
  const dead = started.find((p) => p.exit && (p.exit.code !== 0 || p.exit.signal !== null));
  if (dead) {
    throw new BatonError(
      'E_LAB',
      `process ${dead.name} exited at once (${dead.exit!.signal ?? `code ${dead.exit!.code}`}); log ${dead.logFile}:\n${logTail(dead.logFile)}`,
      { step: 'start-process', process: dead.name, ns: dead.ns, pid: dead.pid },
    );
  }
}

export async function labUp(opts: LabOptions): Promise<LabDescription> {
  const prefix = checkPrefix(opts.prefix ?? DEFAULT_PREFIX);
  const dir = path.resolve(opts.dir);
  const d = describeLab({ prefix, subnet: opts.subnet ?? DEFAULT_SUBNET, subnet6: opts.subnet6, runDir: runDirOf(dir), backup: opts.backup });

  // Refuse rather than repair: tearing down namespaces labUp did not make could kill someone's
  // running lab. A crashed one is cleared with labDown first.
  const existing = existingLabNamespaces(prefix);
  if (existing.length > 0) {
    throw new BatonError('E_LAB', `lab ${prefix} already exists (namespaces ${existing.join(', ')}): run \`batonctl lab down --prefix ${prefix}\` first`, {
      step: 'preflight',
      prefix,
    });
  }
  const passObj = await passObject();
  const t0 = Date.now();
  try {
    fs.mkdirSync(d.runDir, { recursive: true });
    await buildNetwork(d, passObj);
    writeLabDescription(labFile(dir), d);
    log.info({ lab: prefix, subnet: d.subnet, subnet6: d.subnet6, ms: Date.now() - t0 }, 'lab network up');
    const specs = opts.processes?.(d) ?? [];
    checkSpecs(d, specs);
    await startAll(d, specs);
    log.info({ lab: prefix, processes: specs.length, ms: Date.now() - t0 }, 'lab up');
    return d;
  } catch (err) {
    log.error({ lab: prefix, err }, 'lab up failed: tearing down');
    try {
      await labDown({ prefix, dir });
    } catch (downErr) {
      log.error({ lab: prefix, err: downErr }, 'teardown after a failed lab up failed too');
    }
    throw err;
  }
}

/** Ignores "already gone" from ip: labDown runs over half-built and half-removed labs. */
async function quietly(p: Promise<unknown>): Promise<void> {
  try {
    await p;
  } catch (err) {
    log.debug({ err: (err as CommandError).message }, 'lab teardown step skipped');
  }
}

export async function labDown(opts: LabRef): Promise<void> {
  const prefix = checkPrefix(opts.prefix ?? DEFAULT_PREFIX);
  const names = labNames(prefix);
  const dir = path.resolve(opts.dir);
  const file = labFile(dir);
  const problems: string[] = [];

  // lab.json is a hint only (where the run directory is); names come from the prefix, so a lab
  // whose file is missing, stale or corrupt is removed just the same.
  let desc: LabDescription | undefined;
  let fileIsOurs = false;
  if (fs.existsSync(file)) {
    try {
      desc = readLabDescription(file);
      fileIsOurs = desc.prefix === prefix;
      if (!fileIsOurs) desc = undefined;
    } catch {
      fileIsOurs = true; // unreadable: stale whoever wrote it, and it would break the next labUp's readers
    }
  }
  const runDir = desc?.runDir ?? runDirOf(dir);
  const namespaces = [...new Set([...names.namespaces, ...existingLabNamespaces(prefix)])];

  // 1. Processes: whatever runs in the lab's namespaces, whatever carries the lab's marker (also
  // when its namespace name is already gone), and the pidfiles' pids that still carry it.
  const pids = new Set<number>([...namespaces.flatMap((ns) => namespacePids(ns)), ...findMarkedProcesses(prefix)]);
  for (const p of listPidFiles(runDir)) if (p.pid !== undefined && isAlive(p.pid, prefix)) pids.add(p.pid);
  pids.delete(process.pid);
  const survivors = await stopProcesses([...pids]);
  if (survivors.length) problems.push(`processes survived SIGKILL: ${survivors.join(', ')}`);
  if (pids.size) log.info({ lab: prefix, pids: [...pids] }, 'lab processes stopped');

  // 2. XDP and links. Deleting a namespace takes its veths along, but only once nothing holds the
  // namespace any more; detaching and deleting explicitly does not depend on that.
  for (const ns of namespaces.filter(namespaceExists)) {
    let links: Awaited<ReturnType<typeof listLinks>> = [];
    try {
      links = await listLinks(ns);
    } catch (err) {
      problems.push(`cannot list links in ${ns}: ${(err as Error).message}`);
    }
    for (const l of links.filter((l) => l.ifname !== 'lo')) {
      if (l.xdp !== undefined) {
        await quietly(ip(ns, ['link', 'set', 'dev', l.ifname, 'xdpdrv', 'off'], { step: 'xdp-off' }));
        await quietly(ip(ns, ['link', 'set', 'dev', l.ifname, 'xdpgeneric', 'off'], { step: 'xdp-off' }));
      }
      await quietly(ip(ns, ['link', 'delete', 'dev', l.ifname], { step: 'link-delete' }));
    }
  }

  // 3. Namespaces.
  for (const ns of namespaces) {
    try {
      await deleteNamespace(ns);
    } catch (err) {
      problems.push((err as Error).message);
    }
  }
  const left = existingLabNamespaces(prefix);
  if (left.length) problems.push(`namespaces still present: ${left.join(', ')}`);

  // 4. Pins batond left under the host's bpffs: <prefix>-<node> (and <prefix> itself).
  try {
    for (const entry of fs.existsSync(BPF_PIN_ROOT) ? fs.readdirSync(BPF_PIN_ROOT) : []) {
      if (entry === prefix || entry.startsWith(`${prefix}-`)) {
        try {
          fs.rmSync(path.join(BPF_PIN_ROOT, entry), { recursive: true, force: true });
        } catch (err) {
          problems.push(`cannot remove pin dir ${path.join(BPF_PIN_ROOT, entry)}: ${(err as Error).message}`);
        }
      }
    }
  } catch (err) {
    problems.push(`cannot list ${BPF_PIN_ROOT}: ${(err as Error).message}`);
  }

  // 5. Files: pidfiles of processes that are gone (logs stay for the post-mortem), and lab.json.
  for (const p of listPidFiles(runDir)) {
    if (p.pid === undefined || !isAlive(p.pid)) fs.rmSync(p.file, { force: true });
  }
  if (fileIsOurs) fs.rmSync(file, { force: true });

  if (problems.length) {
    throw new BatonError('E_LAB', `lab ${prefix} not fully removed: ${problems.join('; ')}`, { step: 'down', prefix, problems });
  }
  log.info({ lab: prefix }, 'lab down');
}

export async function labStatus(opts: LabRef): Promise<LabStatus> {
  const prefix = checkPrefix(opts.prefix ?? DEFAULT_PREFIX);
  const names = labNames(prefix);
  const dir = path.resolve(opts.dir);
  const file = labFile(dir);
  const status: LabStatus = { namespaces: [], processes: [] };
  if (fs.existsSync(file)) {
    try {
      const d = readLabDescription(file);
      if (d.prefix === prefix) status.description = d;
      else status.descriptionError = `${file} describes lab ${d.prefix}, not ${prefix}`;
    } catch (err) {
      status.descriptionError = (err as Error).message;
    }
  }
  const present = new Set(existingLabNamespaces(prefix));
  for (const name of [...new Set([...names.namespaces, ...present])]) status.namespaces.push({ name, exists: present.has(name) });
  const runDir = status.description?.runDir ?? runDirOf(dir);
  for (const p of listPidFiles(runDir)) {
    status.processes.push({ name: p.name, pid: p.pid, alive: p.pid !== undefined && isAlive(p.pid, prefix) });
  }
  return status;
}

/**
 * A node dies, as a power cut would look from the segment: its link goes down, then every process
 * in its namespace gets SIGKILL. The link first: a process that outlives another for a moment
 * says goodbye otherwise (keepalived's VRRP child, its parent killed first, gets SIGTERM and sends
 * a last advert with priority 0, which hands the DVIPA over at once: seen). The namespace stays,
 * for labDown to remove.
 */
export async function killNode(lab: LabDescription, name: string): Promise<void> {
  const node = lab.nodes.find((n) => n.name === name);
  if (!node) throw new BatonError('E_LAB', `no node ${name} in lab ${lab.prefix}`, { step: 'kill-node' });
  await ip(node.ns, ['link', 'set', node.interface, 'down'], { step: 'kill-node', timeoutMs: 5000 });
  for (const pid of namespacePids(node.ns)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  }
}
