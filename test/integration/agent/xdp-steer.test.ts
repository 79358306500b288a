// XDP steering in a namespace lab: a client, a distributor (n1) running baton_steer and a
// target (n2) on one bridge, all holding the DVIPA where DESIGN.md says. Proves, with real
// TCP handshakes from an unmodified client (python sockets), that: no entry → the
// distributor's kernel serves the flow; FORWARD → the target serves it (direct server return);
// FROZEN → the flow's packets vanish and are counted; removing an entry restores the
// distributor; pinned maps survive a controller restart and steer on; a full table fails loudly.
//
// The test process stays in the root namespace. Loading and attaching happen with the calling
// thread switched into n1's network namespace by setns() (see withNetns and docs/datapath.md).
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import koffi from 'koffi';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isBatonError } from '../../../controller/errors.js';
import { RoutingTable, type FlowKey, type RouteEntry } from '../../../controller/agent/routing-table.js';
import { loadSteering, unpinInstance, type Steering } from '../../../controller/agent/xdp.js';
import { repoRoot } from '../../../controller/paths.js';

const run = promisify(execFile);
const ROOT = repoRoot();
const isRoot = process.getuid?.() === 0;

// ---- switching the calling thread's network namespace -----------------------------------

const CLONE_NEWNET = 0x40000000;
const libc = koffi.load('libc.so.6');
const setns = libc.func('int setns(int fd, int nstype)');

/**
 * Runs fn with this thread in the named network namespace (and only the network namespace:
 * the mount namespace, hence /sys/fs/bpf, stays the root one). fn must be synchronous:
 * anything awaited would run after the switch back.
 */
function withNetns<T>(ns: string, fn: () => T): T {
  const home = fs.openSync('/proc/thread-self/ns/net', 'r');
  const target = fs.openSync(`/run/netns/${ns}`, 'r');
  try {
    if (setns(target, CLONE_NEWNET) !== 0) throw new Error(`setns(${ns}) failed: errno ${koffi.errno()}`);
    try {
      return fn();
    } finally {
      // Staying in the wrong namespace would silently corrupt every later test: die instead.
      if (setns(home, CLONE_NEWNET) !== 0) {
        process.stderr.write(`cannot return to the root network namespace (errno ${koffi.errno()})\n`);
        process.exit(70);
      }
    }
  } finally {
    fs.closeSync(target);
    fs.closeSync(home);
  }
}

// ---- the lab ------------------------------------------------------------------------------

const prefix = `bt-${randomBytes(3).toString('hex')}`;
const NS = { sw: `${prefix}-sw`, client: `${prefix}-cl`, n1: `${prefix}-n1`, n2: `${prefix}-n2` };
const INSTANCE = prefix;
const SMALL_INSTANCE = `${prefix}-small`;
const PIN_DIR = `/sys/fs/bpf/baton/${INSTANCE}`;

const NET = {
  client: { v4: '10.77.0.10', v6: 'fd00:77::10', mac: '02:b7:00:00:00:0a', port: 'swcl' },
  n1: { v4: '10.77.0.1', v6: 'fd00:77::1', mac: '02:b7:00:00:00:01', port: 'swn1' },
  n2: { v4: '10.77.0.2', v6: 'fd00:77::2', mac: '02:b7:00:00:00:02', port: 'swn2' },
};
const DVIPA = { v4: '10.77.0.100', v6: 'fd00:77::100' };
const SERVICE_PORT = 8080;
const TARGET_NODE_ID = 2;

const SERVER_PY = `
import socket, sys
name, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
s.listen(16)
print('listening', flush=True)
while True:
    c, peer = s.accept()
    print('accepted %s %d' % (peer[0], peer[1]), flush=True)
    c.sendall((name + '\\n').encode())
    c.close()
`;

// Binds the source port explicitly so the test knows the 4-tuple before the SYN leaves.
const CLIENT_PY = `
import json, socket, sys
src, sport, dst, dport, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET6 if ':' in dst else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((src, sport))
s.settimeout(timeout)
try:
    s.connect((dst, dport))
    data = b''
    while True:
        chunk = s.recv(256)
        if not chunk:
            break
        data += chunk
    print(json.dumps({'ok': True, 'reply': data.decode().strip()}))
except OSError as e:
    print(json.dumps({'ok': False, 'error': type(e).__name__}))
finally:
    s.close()
`;

interface Server {
  proc: ChildProcess;
  accepted: string[];
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), `${prefix}-`));
const servers: Server[] = [];
const steerings: { ns: string; steering: Steering }[] = [];

function sh(args: string[]): string {
  return execFileSync(args[0]!, args.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}
function ipn(ns: string, ...args: string[]): string {
  return sh(['ip', '-n', ns, ...args]);
}
function inNs(ns: string, ...args: string[]): string {
  return sh(['ip', 'netns', 'exec', ns, ...args]);
}

function buildLab(): void {
  for (const ns of Object.values(NS)) sh(['ip', 'netns', 'add', ns]);
  ipn(NS.sw, 'link', 'add', 'br0', 'type', 'bridge');
  ipn(NS.sw, 'link', 'set', 'br0', 'up');
  for (const [role, ns] of [['client', NS.client], ['n1', NS.n1], ['n2', NS.n2]] as const) {
    const host = NET[role];
    ipn(NS.sw, 'link', 'add', host.port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    ipn(ns, 'link', 'set', 'eth0', 'address', host.mac);
    ipn(ns, 'address', 'add', `${host.v4}/24`, 'dev', 'eth0');
    ipn(ns, 'address', 'add', `${host.v6}/64`, 'dev', 'eth0', 'nodad');
    ipn(ns, 'link', 'set', 'lo', 'up');
    ipn(ns, 'link', 'set', 'eth0', 'up');
    ipn(NS.sw, 'link', 'set', host.port, 'master', 'br0', 'up');
    // veth hands on CHECKSUM_PARTIAL segments that XDP_TX never completes (KERNEL-NOTES).
    inNs(ns, 'ethtool', '-K', 'eth0', 'tx', 'off');
    inNs(NS.sw, 'ethtool', '-K', host.port, 'tx', 'off');
  }
  // XDP_TX out of n1's veth is only delivered if the bridge-side peer runs an XDP program.
  ipn(NS.sw, 'link', 'set', 'dev', NET.n1.port, 'xdpdrv', 'obj', path.join(ROOT, 'build/bpf/pass.o'), 'sec', 'xdp');

  // The DVIPA on both nodes; only n1 (the distributor) answers ARP for it.
  for (const ns of [NS.n1, NS.n2]) {
    ipn(ns, 'address', 'add', `${DVIPA.v4}/32`, 'dev', 'lo');
    ipn(ns, 'address', 'add', `${DVIPA.v6}/128`, 'dev', 'lo', 'nodad');
  }
  inNs(NS.n2, 'sysctl', '-qw', 'net.ipv4.conf.all.arp_ignore=1', 'net.ipv4.conf.all.arp_announce=2');
  // Linux answers neighbour solicitations only for addresses on the receiving interface, so
  // the client is told where the IPv6 DVIPA lives, as the distributor's router would.
  ipn(NS.client, 'neigh', 'replace', DVIPA.v6, 'lladdr', NET.n1.mac, 'dev', 'eth0', 'nud', 'permanent');

  fs.writeFileSync(path.join(tmp, 'server.py'), SERVER_PY);
  fs.writeFileSync(path.join(tmp, 'client.py'), CLIENT_PY);
}

async function startServer(ns: string, name: string, addr: string): Promise<Server> {
  const proc = spawn('ip', ['netns', 'exec', ns, 'python3', '-u', path.join(tmp, 'server.py'), name, addr, String(SERVICE_PORT)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const server: Server = { proc, accepted: [] };
  servers.push(server);
  await new Promise<void>((resolve, reject) => {
    let buf = '';
    proc.once('exit', (code) => reject(new Error(`${name} server on ${addr} exited with ${code}`)));
    proc.stdout!.on('data', (chunk: Buffer) => {
      buf += chunk.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line === 'listening') resolve();
        else if (line.startsWith('accepted ')) server.accepted.push(line.slice('accepted '.length));
      }
    });
  });
  return server;
}

interface ConnectResult {
  ok: boolean;
  reply?: string;
  error?: string;
}

async function connect(family: 4 | 6, clientPort: number, timeoutS = 3): Promise<ConnectResult> {
  const src = family === 4 ? NET.client.v4 : NET.client.v6;
  const dst = family === 4 ? DVIPA.v4 : DVIPA.v6;
  const { stdout } = await run('ip', [
    'netns', 'exec', NS.client, 'python3', path.join(tmp, 'client.py'), src, String(clientPort), dst, String(SERVICE_PORT), String(timeoutS),
  ]);
  return JSON.parse(stdout) as ConnectResult;
}

/** Frames the client sent just before exiting may still be inside veth's NAPI poll. */
function settle(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 100));
}

function flow(family: 4 | 6, clientPort: number): FlowKey {
  return family === 4
    ? { family, clientAddress: NET.client.v4, clientPort, vipAddress: DVIPA.v4, vipPort: SERVICE_PORT }
    : { family, clientAddress: NET.client.v6, clientPort, vipAddress: DVIPA.v6, vipPort: SERVICE_PORT };
}

function attachedXdpId(ns: string, dev: string): number | undefined {
  const [link] = JSON.parse(ipn(ns, '-j', 'link', 'show', 'dev', dev)) as { xdp?: { prog?: { id: number } } }[];
  return link?.xdp?.prog?.id;
}

// ---- the tests ----------------------------------------------------------------------------

describe.skipIf(!isRoot)('XDP steering on the distributor (namespace lab)', () => {
  let steering: Steering;
  let n1v4: Server;
  let n2v4: Server;
  let n1v6: Server;
  let n2v6: Server;
  const target = { node: TARGET_NODE_ID, mac: NET.n2.mac };

  beforeAll(async () => {
    execFileSync('make', ['-s', 'bpf'], { cwd: ROOT, stdio: 'inherit' });
    buildLab();
    n1v4 = await startServer(NS.n1, 'n1', DVIPA.v4);
    n2v4 = await startServer(NS.n2, 'n2', DVIPA.v4);
    n1v6 = await startServer(NS.n1, 'n1', DVIPA.v6);
    n2v6 = await startServer(NS.n2, 'n2', DVIPA.v6);
    steering = withNetns(NS.n1, () => loadSteering({ instance: INSTANCE, ifname: 'eth0', mode: 'native' }));
    steerings.push({ ns: NS.n1, steering });
  });

  afterAll(async () => {
    for (const { ns, steering: s } of steerings.reverse()) {
      try {
        withNetns(ns, () => s.detach());
      } catch (err) {
        process.stderr.write(`teardown: detach in ${ns}: ${(err as Error).message}\n`);
      }
      s.close();
    }
    for (const instance of [INSTANCE, SMALL_INSTANCE]) unpinInstance(instance);
    for (const s of servers) s.proc.kill();
    for (const ns of Object.values(NS)) {
      try {
        sh(['ip', 'netns', 'del', ns]);
      } catch {
        // Already gone (setup failed before creating it).
      }
    }
    fs.rmSync(tmp, { recursive: true, force: true });
    expect(fs.existsSync(PIN_DIR)).toBe(false);
  });

  it('attaches natively to n1 and pins both maps where bpftool can see them', () => {
    expect(attachedXdpId(NS.n1, 'eth0')).toBe(steering.programId);
    const routes = JSON.parse(sh(['bpftool', '-j', 'map', 'show', 'pinned', `${PIN_DIR}/baton_routes`])) as Record<string, unknown>;
    expect(routes).toMatchObject({ type: 'hash', name: 'baton_routes', flags: 1, bytes_key: 40, bytes_value: 32, max_entries: 262144 });
    const stats = JSON.parse(sh(['bpftool', '-j', 'map', 'show', 'pinned', `${PIN_DIR}/baton_stats`])) as Record<string, unknown>;
    expect(stats).toMatchObject({ type: 'percpu_array', name: 'baton_stats', bytes_key: 4, bytes_value: 16, max_entries: 7 });
  });

  it('without an entry, the client SYN reaches the distributor (passed-no-route rises)', async () => {
    const before = steering.routes.stats().passedNoRoute.packets;
    const result = await connect(4, 41001);
    expect(result).toEqual({ ok: true, reply: 'n1' });
    expect(n1v4.accepted).toContain(`${NET.client.v4} 41001`);
    expect(steering.routes.stats().passedNoRoute.packets).toBeGreaterThan(before);
  });

  it('with a FORWARD entry, the same kind of SYN reaches the target and the target answers directly', async () => {
    const key = flow(4, 41002);
    const before = steering.routes.stats();
    steering.routes.forward(key, target);
    const result = await connect(4, 41002);
    expect(result).toEqual({ ok: true, reply: 'n2' });
    expect(n2v4.accepted).toContain(`${NET.client.v4} 41002`);
    expect(n1v4.accepted).not.toContain(`${NET.client.v4} 41002`);

    await settle();
    const entry = steering.routes.get(key) as RouteEntry;
    expect(entry).toMatchObject({ state: 'forward', targetNode: TARGET_NODE_ID, targetMac: NET.n2.mac });
    // SYN, ACK and the client's FIN at least; only client→DVIPA frames cross the distributor.
    expect(entry.packets).toBeGreaterThanOrEqual(3n);
    expect(entry.bytes).toBeGreaterThanOrEqual(entry.packets * 54n);
    const after = steering.routes.stats();
    expect(after.steered.packets - before.steered.packets).toBe(entry.packets);
    expect(after.steered.bytes - before.steered.bytes).toBe(entry.bytes);
  });

  it('with a FROZEN entry, the SYNs are dropped and counted, and reach neither node', async () => {
    const key = flow(4, 41003);
    const before = steering.routes.stats().droppedFrozen.packets;
    const accepted = n1v4.accepted.length + n2v4.accepted.length;
    steering.routes.freeze(key);
    const result = await connect(4, 41003, 1.5);
    expect(result).toEqual({ ok: false, error: 'TimeoutError' });
    expect(n1v4.accepted.length + n2v4.accepted.length).toBe(accepted);
    await settle();
    const entry = steering.routes.get(key) as RouteEntry;
    expect(entry.state).toBe('frozen');
    expect(entry.packets).toBeGreaterThanOrEqual(1n);
    expect(steering.routes.stats().droppedFrozen.packets - before).toBe(entry.packets);
  });

  it('a RELEASED entry: a new SYN on the tuple is the distributor\'s (entry deleted, counted); a FORWARD one keeps steering SYNs', async () => {
    const key = flow(4, 41004);
    steering.routes.release(key, target);
    const before = steering.routes.stats().passedReclaimed.packets;
    expect(await connect(4, 41004)).toEqual({ ok: true, reply: 'n1' });
    expect(n1v4.accepted).toContain(`${NET.client.v4} 41004`);
    expect(steering.routes.get(key)).toBeUndefined();
    expect(steering.routes.stats().passedReclaimed.packets - before).toBe(1n);
    // The same SYN on a live FORWARD entry is not a reclaim: it goes to the target.
    steering.routes.forward(key, target);
    expect(await connect(4, 41004)).toEqual({ ok: true, reply: 'n2' });
    expect(steering.routes.get(key)?.state).toBe('forward');
    expect(steering.routes.remove(key)).toBe(true);
  });

  it('removing an entry gives the flow back to the distributor', async () => {
    for (const port of [41002, 41003]) {
      expect(steering.routes.remove(flow(4, port))).toBe(true);
      expect(steering.routes.get(flow(4, port))).toBeUndefined();
      expect(await connect(4, port)).toEqual({ ok: true, reply: 'n1' });
      expect(n1v4.accepted).toContain(`${NET.client.v4} ${port}`);
    }
    expect(steering.routes.remove(flow(4, 41002))).toBe(false);
  });

  it('steers IPv6 flows the same way', async () => {
    expect(await connect(6, 42001)).toEqual({ ok: true, reply: 'n1' });
    steering.routes.forward(flow(6, 42002), target);
    expect(await connect(6, 42002)).toEqual({ ok: true, reply: 'n2' });
    expect(n2v6.accepted).toContain(`${NET.client.v6} 42002`);
    expect(n1v6.accepted).not.toContain(`${NET.client.v6} 42002`);
    expect((steering.routes.get(flow(6, 42002)) as RouteEntry).packets).toBeGreaterThanOrEqual(3n);
    expect(steering.routes.remove(flow(6, 42002))).toBe(true);
  });

  it('lists entries and counts only the TCP it could not route as passed-not-tcp', () => {
    steering.routes.forward(flow(4, 41010), target);
    steering.routes.freeze(flow(6, 42010));
    const listed = new Map([...steering.routes.entries()].map(([k, v]) => [`${k.clientAddress}:${k.clientPort}`, v.state]));
    expect(listed).toEqual(new Map([[`${NET.client.v4}:41010`, 'forward'], [`${NET.client.v6}:42010`, 'frozen']]));
    expect(steering.routes.size()).toBe(2);
    // ARP and ICMPv6 neighbour traffic crossed n1 during the tests.
    const stats = steering.routes.stats();
    expect(Object.keys(stats).sort()).toEqual(['droppedBadEntry', 'droppedFrozen', 'passedFragment', 'passedNoRoute', 'passedNotTcp', 'passedReclaimed', 'steered']);
    expect(stats.passedNotTcp.packets).toBeGreaterThan(0n);
    expect(stats.droppedBadEntry.packets).toBe(0n);
  });

  it('counts a table of thousands exactly (the walk /metrics does on every scrape)', () => {
    const before = steering.routes.size();
    const many = Array.from({ length: 5000 }, (_, i) => flow(i % 2 ? 4 : 6, 20000 + i));
    for (const f of many) steering.routes.freeze(f);
    expect(steering.routes.size()).toBe(before + 5000);
    for (const f of many.slice(0, 2500)) steering.routes.remove(f);
    expect(steering.routes.size()).toBe(before + 2500);
    for (const f of many.slice(2500)) steering.routes.remove(f);
    expect(steering.routes.size()).toBe(before);
  });

  it('a restarted controller reuses the pinned maps: entries survive and keep steering', async () => {
    const key = flow(4, 41010);
    const oldId = steering.programId;
    // The old controller goes away without detaching, as in a restart or crash.
    const oldRoutes = steering.routes;
    steering.close();
    expect(() => oldRoutes.get(key)).toThrow(/used after close/);
    steerings.splice(steerings.findIndex((s) => s.steering === steering), 1);
    steering = withNetns(NS.n1, () => loadSteering({ instance: INSTANCE, ifname: 'eth0', mode: 'native' }));
    steerings.push({ ns: NS.n1, steering });

    expect(steering.programId).not.toBe(oldId);
    expect(attachedXdpId(NS.n1, 'eth0')).toBe(steering.programId);
    expect(steering.routes.get(key)?.state).toBe('forward');
    expect(steering.routes.size()).toBe(2);
    expect(await connect(4, 41010)).toEqual({ ok: true, reply: 'n2' });

    const opened = RoutingTable.openPinned(PIN_DIR);
    try {
      expect(opened.get(key)?.packets).toBeGreaterThanOrEqual(3n);
    } finally {
      opened.close();
    }
  });

  it('refuses a capacity that does not match the pinned table, saying what to do', () => {
    let error: unknown;
    try {
      withNetns(NS.n1, () => loadSteering({ instance: INSTANCE, ifname: 'eth0', mode: 'native', maxEntries: 1024 }));
    } catch (err) {
      error = err;
    }
    expect(isBatonError(error, 'E_BPF')).toBe(true);
    expect((error as Error).message).toMatch(/holds 262144 entries, 1024 requested/);
    expect(attachedXdpId(NS.n1, 'eth0')).toBe(steering.programId);
  });

  it('a full routing table rejects new flows with "routing table full" but still updates existing ones', () => {
    const small = withNetns(NS.client, () => loadSteering({ instance: SMALL_INSTANCE, ifname: 'lo', mode: 'generic', maxEntries: 4 }));
    steerings.push({ ns: NS.client, steering: small });
    for (let port = 50001; port <= 50004; port++) small.routes.freeze(flow(4, port));
    let error: unknown;
    try {
      small.routes.freeze(flow(4, 50005));
    } catch (err) {
      error = err;
    }
    expect(isBatonError(error, 'E_BPF')).toBe(true);
    expect((error as Error).message).toMatch(/^routing table full/);
    expect((error as { context: Record<string, unknown> }).context).toMatchObject({ errnoName: 'E2BIG', maxEntries: 4 });
    small.routes.forward(flow(4, 50004), target);
    expect(small.routes.get(flow(4, 50004))?.state).toBe('forward');
    expect(small.routes.size()).toBe(4);

    // Teardown order must not matter: after close() only the program id is left to match.
    small.close();
    expect(attachedXdpId(NS.client, 'lo')).toBe(small.programId);
    withNetns(NS.client, () => small.detach());
    expect(attachedXdpId(NS.client, 'lo')).toBeUndefined();
  });

  it('detach stops steering but leaves the maps pinned; unpinInstance removes them', async () => {
    withNetns(NS.n1, () => steering.detach());
    expect(attachedXdpId(NS.n1, 'eth0')).toBeUndefined();
    expect(fs.existsSync(`${PIN_DIR}/baton_routes`)).toBe(true);
    // The entry is still there, but nothing consults it: the distributor serves the flow.
    expect(steering.routes.get(flow(4, 41010))?.state).toBe('forward');
    expect(await connect(4, 41010)).toEqual({ ok: true, reply: 'n1' });
    withNetns(NS.n1, () => steering.detach());

    unpinInstance(INSTANCE);
    expect(fs.existsSync(PIN_DIR)).toBe(false);
    expect(() => sh(['bpftool', 'map', 'show', 'pinned', `${PIN_DIR}/baton_routes`])).toThrow();
  });
});
