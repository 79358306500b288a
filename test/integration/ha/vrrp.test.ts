// keepalived, as Baton configures it (controller/ha/keepalived.ts), deciding which of two
// distributors holds the DVIPA, on a segment of network namespaces: a bridge, n1 and n2 (the DVIPA
// on lo, arp_ignore=1/arp_announce=2, as batond sets them) and a client. Each node's keepalived is
// followed through its notify FIFO (controller/ha/vrrp-state.ts). Shows: n1 (preferred) becomes
// MASTER and n2 BACKUP; the client's neighbour entry for the DVIPA is n1's MAC; a batond
// restarted while n1 is MASTER learns it from the address; n1's keepalived SIGKILLed and its link
// down, n2 is MASTER within a second and its gratuitous ARPs move the client's entry to n2's MAC;
// n1 back (link up, keepalived again, its stale pidfiles cleared) stays BACKUP (nopreempt); n2's
// keepalived stopped cleanly gives the DVIPA back at once, taking it off its interface but not
// off lo; adverts lost one way (the bridge stops flooding multicast to n2) make both MASTER, and
// the client's side ends on n1, which answers each of n2's adverts with gratuitous ARP; adverts
// back, n2 steps down. Times are printed.
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clearStalePidFiles, keepalivedArgv, keepalivedConfig, runningKeepalived, keepalivedPaths, type KeepalivedPaths, type VrrpClusterView, vrrpInstanceName, vrrpNodeSpec, writeKeepalivedConfig } from '../../../controller/ha/keepalived.js';
import { holdsAddress, type VrrpEvent, VrrpState, type VrrpTransition } from '../../../controller/ha/vrrp-state.js';
import { createLogger } from '../../../controller/log.js';
import { until } from '../../helpers/wait.js';

const execFileP = promisify(execFile);

const prefix = `bt-${randomBytes(3).toString('hex')}`;
const NS = { sw: `${prefix}-sw`, n1: `${prefix}-n1`, n2: `${prefix}-n2`, cl: `${prefix}-cl` };
const NET = {
  n1: { v4: '10.81.0.1', mac: '02:b8:00:00:00:01', port: 'swn1' },
  n2: { v4: '10.81.0.2', mac: '02:b8:00:00:00:02', port: 'swn2' },
  cl: { v4: '10.81.0.100', mac: '02:b8:00:00:00:64', port: 'swcl' },
};
type Node = 'n1' | 'n2';
const DVIPA = '10.81.0.10';
const IFACE = 'eth0';
const CLUSTER: VrrpClusterView = {
  instance: prefix,
  dvipa: { addresses: [DVIPA] },
  distributors: ['n1', 'n2'],
  nodes: [{ name: 'n1', interface: IFACE }, { name: 'n2', interface: IFACE }],
};
/** With 100 ms adverts the backup notices a silent MASTER after about 0.35 s. */
const TAKEOVER_BOUND_MS = 1000;

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), `${prefix}-`));
const log = createLogger({ test: 'vrrp' }, 'silent');
const paths: Record<Node, KeepalivedPaths> = { n1: keepalivedPaths(tmp, prefix, 'n1'), n2: keepalivedPaths(tmp, prefix, 'n2') };
const running = new Map<Node, { proc: ChildProcess; exited: Promise<void>; logFile: string }>();
const readers: Record<Node, VrrpState | undefined> = { n1: undefined, n2: undefined };
const transitions: Record<Node, VrrpTransition[]> = { n1: [], n2: [] };
const events: Record<Node, VrrpEvent[]> = { n1: [], n2: [] };

function sh(args: string[]): string {
  return execFileSync(args[0]!, args.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 });
}
function ipn(ns: string, ...args: string[]): string {
  return sh(['ip', '-n', ns, ...args]);
}
function inNs(ns: string, ...args: string[]): string {
  return sh(['nsenter', `--net=/run/netns/${ns}`, '--', ...args]);
}

function buildSegment(): void {
  for (const ns of Object.values(NS)) sh(['ip', 'netns', 'add', ns]);
  ipn(NS.sw, 'link', 'add', 'br0', 'type', 'bridge');
  ipn(NS.sw, 'link', 'set', 'br0', 'up');
  for (const role of ['n1', 'n2', 'cl'] as const) {
    const host = NET[role];
    ipn(NS.sw, 'link', 'add', host.port, 'type', 'veth', 'peer', 'name', IFACE, 'netns', NS[role]);
    ipn(NS[role], 'link', 'set', IFACE, 'address', host.mac);
    ipn(NS[role], 'address', 'add', `${host.v4}/24`, 'dev', IFACE);
    ipn(NS[role], 'link', 'set', 'lo', 'up');
    ipn(NS[role], 'link', 'set', IFACE, 'up');
    ipn(NS.sw, 'link', 'set', host.port, 'master', 'br0', 'up');
  }
  // As batond sets up every distributor: the DVIPA on lo, ARP answered only for addresses of the
  // receiving interface (keepalived's copy of the DVIPA, on the MASTER only).
  for (const node of ['n1', 'n2'] as const) {
    ipn(NS[node], 'address', 'add', `${DVIPA}/32`, 'dev', 'lo');
    inNs(NS[node], 'sysctl', '-qw', 'net.ipv4.conf.all.arp_ignore=1', 'net.ipv4.conf.all.arp_announce=2', `net.ipv4.conf.${IFACE}.arp_ignore=1`, `net.ipv4.conf.${IFACE}.arp_announce=2`);
  }
}

async function follow(node: Node): Promise<VrrpState> {
  const reader = await VrrpState.open({ fifo: paths[node].notifyFifo, instance: vrrpInstanceName(prefix), log });
  reader.on('state', (t) => transitions[node].push(t));
  reader.on('event', (e) => events[node].push(e));
  readers[node] = reader;
  return reader;
}

/** Starts node's keepalived in its namespace, in a process group of its own (one kill takes parent and VRRP child). */
async function startKeepalived(node: Node): Promise<void> {
  const logFile = path.join(tmp, `keepalived-${node}.log`);
  const fd = fs.openSync(logFile, 'a');
  try {
    const proc = spawn('nsenter', [`--net=/run/netns/${NS[node]}`, '--', ...keepalivedArgv(paths[node])], { detached: true, stdio: ['ignore', fd, fd] });
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    await new Promise<void>((resolve, reject) => {
      proc.once('spawn', resolve);
      proc.once('error', reject);
    });
    running.set(node, { proc, exited, logFile });
  } finally {
    fs.closeSync(fd);
  }
}

/** SIGKILL to keepalived's whole process group: parent and VRRP child die at once, no goodbye. */
async function killKeepalived(node: Node): Promise<void> {
  const r = running.get(node);
  if (!r) return;
  running.delete(node);
  try {
    process.kill(-r.proc.pid!, 'SIGKILL');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
  await bounded(r.exited, 5000, `${node}'s keepalived to die`);
}

async function bounded<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

function stateOf(node: Node): string {
  return `${node}: ${readers[node]?.state() ?? 'unknown'}; its keepalived said: ${keepalivedLog(node)}`;
}

function keepalivedLog(node: Node): string {
  try {
    return fs.readFileSync(path.join(tmp, `keepalived-${node}.log`), 'utf8').split('\n').slice(-8).join(' | ');
  } catch {
    return '(no log)';
  }
}

/** The MAC the client's neighbour table holds for the DVIPA, if any. */
async function clientNeighbour(): Promise<string | undefined> {
  const { stdout } = await execFileP('ip', ['-n', NS.cl, '-j', 'neigh', 'show', DVIPA, 'dev', IFACE], { timeout: 2000 });
  const entries = JSON.parse(stdout || '[]') as Array<{ lladdr?: string; state?: string[] }>;
  return entries.find((e) => e.lladdr && !e.state?.includes('FAILED'))?.lladdr;
}

function ping(): void {
  inNs(NS.cl, 'ping', '-c', '1', '-W', '1', DVIPA);
}

/** Local routes for the DVIPA in node's namespace, by device. */
function localRoutes(node: Node): string[] {
  const routes = JSON.parse(ipn(NS[node], '-j', 'route', 'show', 'table', 'local', DVIPA)) as Array<{ type?: string; dev?: string }>;
  return routes.filter((r) => r.type === 'local').map((r) => r.dev ?? '?').sort();
}

const onIface = (node: Node) => holdsAddress(IFACE, DVIPA, { ns: NS[node] });
const onLo = (node: Node) => holdsAddress('lo', DVIPA, { ns: NS[node] });

describe('keepalived decides which distributor holds the DVIPA', () => {
  beforeAll(async () => {
    buildSegment();
    for (const node of ['n1', 'n2'] as const) {
      writeKeepalivedConfig(paths[node].config, keepalivedConfig(vrrpNodeSpec(CLUSTER, node, paths[node])));
      // batond opens (and so creates) the FIFO before keepalived starts.
      await follow(node);
    }
  });

  afterAll(async () => {
    const failures: string[] = [];
    for (const node of [...running.keys()]) {
      try {
        await killKeepalived(node);
      } catch (err) {
        failures.push((err as Error).message);
      }
    }
    for (const node of ['n1', 'n2'] as const) readers[node]?.close();
    for (const ns of Object.values(NS)) {
      try {
        sh(['ip', 'netns', 'del', ns]);
      } catch {
        // Not created (setup failed before it).
      }
    }
    fs.rmSync(tmp, { recursive: true, force: true });
    if (failures.length > 0) throw new Error(`teardown: ${failures.join('; ')}`);
  });

  it('n1, preferred, becomes MASTER and holds the DVIPA on its interface; n2 stays BACKUP', async () => {
    const t0 = Date.now();
    await startKeepalived('n1');
    await until(() => stateOf('n1'), () => readers.n1!.state() === 'MASTER', 5000, 10);
    const n1Master = transitions.n1.at(-1)!.at - t0;
    await startKeepalived('n2');
    await until(() => stateOf('n2'), () => readers.n2!.state() === 'BACKUP', 5000, 10);
    // Ten master-down intervals: n2 hears n1's adverts and stays BACKUP.
    await new Promise((r) => setTimeout(r, 3500));
    expect(readers.n1!.state()).toBe('MASTER');
    expect(readers.n2!.state()).toBe('BACKUP');
    expect(transitions.n2.map((t) => t.state)).toEqual(['BACKUP']);
    expect(readers.n1!.lastPriority()).toBe(200);
    expect(readers.n2!.lastPriority()).toBe(175);
    expect([await onIface('n1'), await onIface('n2'), await onLo('n1'), await onLo('n2')]).toEqual([true, false, true, true]);
    // Both local routes while n1 holds the /32 twice; the one on lo is what steered flows' sockets use.
    expect(localRoutes('n1')).toEqual([IFACE, 'lo']);
    expect(localRoutes('n2')).toEqual(['lo']);
    console.log(`n1 MASTER ${n1Master} ms after its keepalived started (three adverts' wait as BACKUP first)`);
  });

  it("the client's neighbour entry for the DVIPA is n1's MAC", async () => {
    ping();
    expect(await clientNeighbour()).toBe(NET.n1.mac);
  });

  it('a batond restarted while n1 is MASTER learns it from the address, without a transition', async () => {
    readers.n1!.close();
    const reader = await follow('n1');
    expect(reader.state()).toBeUndefined();
    expect(await reader.learnFromAddress(IFACE, DVIPA, { ns: NS.n1 })).toBe('MASTER');
    expect(transitions.n1.at(-1)).toMatchObject({ state: 'MASTER', source: 'address' });
  });

  it(`n1's keepalived SIGKILLed and its link down: n2 is MASTER within ${TAKEOVER_BOUND_MS} ms and the client's entry follows its gratuitous ARP`, async () => {
    const before = transitions.n2.length;
    let neighbourAt = 0;
    const t0 = Date.now();
    await killKeepalived('n1');
    ipn(NS.n1, 'link', 'set', IFACE, 'down');
    // Watch the client's neighbour table without sending it any traffic: only a gratuitous ARP moves it.
    const watchNeighbour = (async () => {
      const deadline = Date.now() + 5000;
      while (Date.now() < deadline) {
        if ((await clientNeighbour()) === NET.n2.mac) return (neighbourAt = Date.now());
        await new Promise((r) => setTimeout(r, 5));
      }
      return 0;
    })();
    await until(() => stateOf('n2'), () => readers.n2!.state() === 'MASTER', 5000, 5);
    const takeover = transitions.n2.at(-1)!.at - t0;
    await watchNeighbour;
    expect(transitions.n2.slice(before).map((t) => t.state)).toEqual(['MASTER']);
    expect(neighbourAt, "the client's entry never moved to n2's MAC").toBeGreaterThan(0);
    expect(fs.existsSync(paths.n1.pidFile)).toBe(true);
    console.log(`takeover: n2 MASTER ${takeover} ms after n1's keepalived was SIGKILLed; the client's neighbour entry on n2's MAC after ${neighbourAt - t0} ms`);
    expect(takeover).toBeLessThan(TAKEOVER_BOUND_MS);
    expect(neighbourAt - t0).toBeLessThan(TAKEOVER_BOUND_MS);
    expect([await onIface('n2'), await onLo('n2'), await onLo('n1')]).toEqual([true, true, true]);
    // SIGKILL left n1's copy on its (down) interface: nothing removed it.
    expect(await onIface('n1')).toBe(true);
    ping();
    expect(await clientNeighbour()).toBe(NET.n2.mac);
  });

  it('n1 back (link up, keepalived again) stays BACKUP: nopreempt; n2 keeps the DVIPA', async () => {
    // The SIGKILL left keepalived's pidfiles; the VRRP child's pid may still be an unreaped
    // zombie, which keepalived would take for itself running and refuse to start.
    expect(runningKeepalived(paths.n1)).toBeUndefined();
    expect(clearStalePidFiles(paths.n1)).toEqual([paths.n1.pidFile, paths.n1.vrrpPidFile]);
    ipn(NS.n1, 'link', 'set', IFACE, 'up');
    const before = transitions.n1.length;
    await startKeepalived('n1');
    await until(() => stateOf('n1'), () => transitions.n1.length > before, 5000, 10);
    await new Promise((r) => setTimeout(r, 3000));
    expect(transitions.n1.slice(before).map((t) => t.state)).toEqual(['BACKUP']);
    expect(readers.n2!.state()).toBe('MASTER');
    // A running keepalived's pidfiles are not stale.
    expect(runningKeepalived(paths.n1)).toBe(running.get('n1')!.proc.pid);
    expect(clearStalePidFiles(paths.n1)).toEqual([]);
    // keepalived took the copy the SIGKILL left off n1's interface as it started BACKUP; lo keeps its own.
    expect([await onIface('n1'), await onLo('n1'), await onIface('n2')]).toEqual([false, true, true]);
    expect(localRoutes('n1')).toEqual(['lo']);
    ping();
    expect(await clientNeighbour()).toBe(NET.n2.mac);
  });

  it("n2's keepalived stopped cleanly (SIGTERM) hands the DVIPA to n1 at once, leaving lo's /32 and its local route", async () => {
    const r = running.get('n2')!;
    running.delete('n2');
    const before = transitions.n1.length;
    let neighbourAt = 0;
    const t0 = Date.now();
    process.kill(r.proc.pid!, 'SIGTERM');
    const watchNeighbour = (async () => {
      const deadline = Date.now() + 5000;
      while (Date.now() < deadline) {
        if ((await clientNeighbour()) === NET.n1.mac) return (neighbourAt = Date.now());
        await new Promise((res) => setTimeout(res, 5));
      }
      return 0;
    })();
    await until(() => stateOf('n1'), () => transitions.n1.length > before, 5000, 5);
    expect(transitions.n1.slice(before).map((t) => [t.state, t.source])).toEqual([['MASTER', 'fifo']]);
    const handover = transitions.n1.at(-1)!.at - t0;
    await watchNeighbour;
    await bounded(r.exited, 10_000, "n2's keepalived to stop");
    expect(readers.n2!.state()).toBe('STOP');
    expect(neighbourAt, "the client's entry never moved to n1's MAC").toBeGreaterThan(0);
    // A clean stop removes its pidfiles.
    expect(fs.existsSync(paths.n2.pidFile)).toBe(false);
    console.log(`clean stop: n1 MASTER ${handover} ms after SIGTERM to n2's keepalived (priority-0 advert); the client's entry on n1's MAC after ${neighbourAt - t0} ms`);
    expect(handover).toBeLessThan(TAKEOVER_BOUND_MS);
    expect([await onIface('n2'), await onLo('n2'), await onIface('n1')]).toEqual([false, true, true]);
    expect(localRoutes('n2')).toEqual(['lo']);
    ping();
    expect(await clientNeighbour()).toBe(NET.n1.mac);
  });
  it("adverts lost one way (n1's no longer reach n2): both MASTER, the client's side ends on n1, which answers each of n2's adverts with gratuitous ARP; adverts back: n2 steps down", async () => {
    expect(clearStalePidFiles(paths.n2)).toEqual([]);
    let before = transitions.n2.length;
    await startKeepalived('n2');
    await until(() => stateOf('n2'), () => transitions.n2.length > before, 5000, 10);
    expect(readers.n2!.state()).toBe('BACKUP');
    ping();
    expect(await clientNeighbour()).toBe(NET.n1.mac);

    // The bridge stops flooding multicast (VRRP's 224.0.0.18) to n2's port: n2 hears nobody, n1 still hears n2.
    before = transitions.n2.length;
    const eventsBefore = events.n1.length;
    const seen: string[] = [];
    const t0 = Date.now();
    ipn(NS.sw, 'link', 'set', 'dev', NET.n2.port, 'type', 'bridge_slave', 'mcast_flood', 'off');
    await until(() => stateOf('n2'), () => transitions.n2.length > before, 5000, 5);
    const split = transitions.n2.at(-1)!.at - t0;
    expect(readers.n2!.state()).toBe('MASTER');
    for (const deadline = Date.now() + 2000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 10))) {
      const mac = await clientNeighbour();
      if (mac && seen.at(-1) !== mac) seen.push(mac);
    }
    expect(readers.n1!.state()).toBe('MASTER');
    expect(events.n1.slice(eventsBefore).map((e) => e.event)).toContain('MASTER_RX_LOWER_PRI');
    const lowerPri = events.n1.slice(eventsBefore).filter((e) => e.event === 'MASTER_RX_LOWER_PRI').length;
    expect([await onIface('n1'), await onIface('n2')]).toEqual([true, true]);
    // n2's gratuitous ARPs as it became MASTER may have moved the entry for a moment; n1's answers moved it back.
    expect(seen.at(-1)).toBe(NET.n1.mac);
    ping();
    expect(await clientNeighbour()).toBe(NET.n1.mac);
    const name = (mac: string) => (mac === NET.n1.mac ? 'n1' : mac === NET.n2.mac ? 'n2' : mac);
    console.log(`split brain: n2 MASTER too ${split} ms after its adverts stopped arriving; n1 told MASTER_RX_LOWER_PRI ${lowerPri} times in 2 s; the client's entry went ${seen.map(name).join(' → ')}`);

    before = transitions.n2.length;
    const t1 = Date.now();
    ipn(NS.sw, 'link', 'set', 'dev', NET.n2.port, 'type', 'bridge_slave', 'mcast_flood', 'on');
    await until(() => stateOf('n2'), () => transitions.n2.length > before, 5000, 5);
    console.log(`healed: n2 BACKUP again ${transitions.n2.at(-1)!.at - t1} ms after the adverts passed again`);
    expect(transitions.n2.slice(before).map((t) => t.state)).toEqual(['BACKUP']);
    expect(readers.n1!.state()).toBe('MASTER');
    expect([await onIface('n1'), await onIface('n2'), await onLo('n2')]).toEqual([true, false, true]);
    ping();
    expect(await clientNeighbour()).toBe(NET.n1.mac);
  });
});
