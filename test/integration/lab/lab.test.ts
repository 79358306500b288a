// The namespace lab itself: build, wiring, lab.json, the supervisor, and teardown (also after a
// crash). Every lab here gets a random prefix and a temporary directory, and is torn down even when
// a test fails, so a failed run leaves nothing behind for the next one.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { BatonError, isBatonError } from '../../../controller/errors.js';
import { labMac, readLabDescription, type LabDescription } from '../../../controller/lab/description.js';
import { labDown, labFile, labStatus, labUp } from '../../../controller/lab/lab.js';
import { inNamespace, ip, listNamespaces, namespacePids } from '../../../controller/lab/netns.js';
import { isAlive, startProcess } from '../../../controller/lab/processes.js';

const newPrefix = () => `bt${randomBytes(3).toString('hex').slice(0, 5)}`;
const made: Array<{ prefix: string; dir: string }> = [];

function newLab(): { prefix: string; dir: string } {
  const prefix = newPrefix();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${prefix}-`));
  made.push({ prefix, dir });
  return { prefix, dir };
}

const nsWithPrefix = (prefix: string) => listNamespaces().filter((n) => n.startsWith(`${prefix}-`));

/**
 * TCP connect from the client namespace to a port nobody listens on: "refused" means a SYN went
 * out, ARP resolved and the node's RST came back over the bridge. Node instead of ping, so the test
 * needs nothing that is not already here.
 */
async function probe(ns: string, host: string): Promise<string> {
  const script = `const s=require('net').connect({host:${JSON.stringify(host)},port:9});s.setTimeout(2000);` +
    `s.on('error',e=>{console.log(e.code);process.exit(0)});s.on('connect',()=>{console.log('CONNECTED');process.exit(0)});` +
    `s.on('timeout',()=>{console.log('TIMEOUT');process.exit(0)})`;
  const { stdout } = await inNamespace(ns, [process.execPath, '-e', script], { step: 'probe', timeoutMs: 10_000 });
  return stdout.trim();
}

async function macOf(ns: string, dev: string): Promise<string> {
  const { stdout } = await ip(ns, ['-j', 'link', 'show', 'dev', dev], { step: 'test' });
  return (JSON.parse(stdout) as Array<{ address: string }>)[0]!.address;
}

async function neighbourMac(ns: string, address: string): Promise<string | undefined> {
  const { stdout } = await ip(ns, ['-j', 'neigh', 'show', address], { step: 'test' });
  return (JSON.parse(stdout) as Array<{ lladdr?: string }>)[0]?.lladdr;
}

afterAll(async () => {
  for (const { prefix, dir } of made) {
    await labDown({ prefix, dir }).catch((err) => console.error(`labDown ${prefix}:`, err));
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

describe('a lab with a process in n2', () => {
  let lab: LabDescription;
  let ref: { prefix: string; dir: string };

  beforeAll(async () => {
    ref = newLab();
    lab = await labUp({ ...ref, processes: (l) => [{ name: 'n2-sleep', ns: l.nodes[1]!.ns, argv: ['sleep', '300'] }] });
  });

  test('creates the switch, client and node namespaces', async () => {
    const expected = ['sw', 'client', 'n1', 'n2', 'n3'].map((r) => `${ref.prefix}-${r}`);
    expect(nsWithPrefix(ref.prefix).sort()).toEqual([...expected].sort());
    const status = await labStatus(ref);
    expect(status.namespaces).toEqual(expected.map((name) => ({ name, exists: true })));
    // The bridge lives in the switch namespace, not in the host's.
    const { stdout } = await ip(lab.bridge.ns, ['-j', 'link', 'show', 'type', 'bridge'], { step: 'test' });
    expect((JSON.parse(stdout) as Array<{ ifname: string }>).map((l) => l.ifname)).toEqual(['br0']);
  });

  test('the client reaches every node over the bridge, at the node MAC', async () => {
    for (const n of lab.nodes) {
      expect(await probe(lab.client.ns, n.address), n.name).toBe('ECONNREFUSED');
      expect(await neighbourMac(lab.client.ns, n.address), n.name).toBe(n.mac);
      // Dual-stack: the same over IPv6, at once (no duplicate address detection to wait for).
      expect(await probe(lab.client.ns, n.address6), `${n.name} IPv6`).toBe('ECONNREFUSED');
      expect(await neighbourMac(lab.client.ns, n.address6), `${n.name} IPv6`).toBe(n.mac);
    }
  });

  test('lab.json validates and its MACs are the interfaces\' MACs', async () => {
    const d = readLabDescription(labFile(ref.dir));
    expect(d).toEqual(lab);
    expect(d).toMatchObject({
      version: 2,
      prefix: ref.prefix,
      subnet: '10.203.0.0/24',
      subnet6: 'fd62:6174:6f6e::/64',
      bridge: { ns: `${ref.prefix}-sw`, name: 'br0' },
      dvipa: { address: '10.203.0.10', address6: 'fd62:6174:6f6e::10', ports: [80, 7000] },
      distributor: 'n1',
      client: { ns: `${ref.prefix}-client`, interface: 'eth0', address: '10.203.0.100', address6: 'fd62:6174:6f6e::100' },
      freeClientAddresses: { first: '10.203.0.101', last: '10.203.0.199' },
      runDir: path.join(ref.dir, 'run'),
    });
    expect(d.nodes.map((n) => [n.name, n.address, n.address6])).toEqual([
      ['n1', '10.203.0.11', 'fd62:6174:6f6e::11'],
      ['n2', '10.203.0.12', 'fd62:6174:6f6e::12'],
      ['n3', '10.203.0.13', 'fd62:6174:6f6e::13'],
    ]);
    for (const e of [...d.nodes, d.client]) {
      expect(await macOf(e.ns, e.interface)).toBe(e.mac);
      expect(e.mac).toBe(labMac(ref.prefix, e.address));
      expect(parseInt(e.mac.slice(0, 2), 16) & 0x03).toBe(0x02); // locally administered, unicast
    }
    expect(new Set([...d.nodes, d.client].map((e) => e.mac)).size).toBe(4);
  });

  test('wire looks like a NIC: tx checksum offload off on both ends, XDP_PASS on node peers', async () => {
    for (const e of [...lab.nodes, lab.client]) {
      for (const [ns, dev] of [[e.ns, e.interface], [lab.bridge.ns, e.bridgePort]] as const) {
        const { stdout } = await inNamespace(ns, ['ethtool', '-k', dev], { step: 'test' });
        expect(stdout, `${ns} ${dev}`).toMatch(/^tx-checksumming: off/m);
      }
      const { stdout } = await ip(lab.bridge.ns, ['-j', 'link', 'show', 'dev', e.bridgePort], { step: 'test' });
      const xdp = (JSON.parse(stdout) as Array<{ xdp?: { mode: number } }>)[0]!.xdp;
      if (e === lab.client) expect(xdp).toBeUndefined();
      else expect(xdp?.mode, e.bridgePort).toBe(1); // XDP_ATTACHED_DRV
    }
    const { stdout } = await inNamespace(lab.nodes[0]!.ns, ['sysctl', '-n', 'net.ipv4.conf.eth0.rp_filter', 'net.ipv4.conf.all.rp_filter'], { step: 'test' });
    expect(stdout.trim().split('\n')).toEqual(['0', '0']);
  });

  test('the process runs in n2 and shows alive', async () => {
    const status = await labStatus(ref);
    const p = status.processes.find((x) => x.name === 'n2-sleep');
    expect(p?.alive).toBe(true);
    expect(namespacePids(lab.nodes[1]!.ns)).toContain(p!.pid);
    expect(fs.readFileSync(path.join(lab.runDir, 'n2-sleep.pid'), 'utf8').trim()).toBe(String(p!.pid));
  });

  test('a corrupted lab.json is rejected with the field at fault', async () => {
    const bad = path.join(ref.dir, 'bad.json');
    const good = JSON.parse(fs.readFileSync(labFile(ref.dir), 'utf8')) as LabDescription;

    fs.writeFileSync(bad, JSON.stringify({ ...good, nodes: good.nodes.map((n, i) => (i === 1 ? { ...n, mac: 'zz:00' } : n)) }));
    expect(() => readLabDescription(bad)).toThrow(/\/nodes\/1\/mac: .*"zz:00"/);

    // A lab.json written before the lab was dual-stack.
    fs.writeFileSync(bad, JSON.stringify({ ...good, version: 1 }));
    expect(() => readLabDescription(bad)).toThrow(/\/version: Expected 2/);

    fs.writeFileSync(bad, JSON.stringify({ ...good, client: { ...good.client, ns: 'other-client' } }));
    expect(() => readLabDescription(bad)).toThrow(`/client/ns: expected ${ref.prefix}-client`);

    fs.writeFileSync(bad, JSON.stringify({ ...good, dvipa: { ...good.dvipa, address: '10.9.9.9' } }));
    expect(() => readLabDescription(bad)).toThrow('/dvipa/address: 10.9.9.9 is outside 10.203.0.0/24');

    fs.writeFileSync(bad, JSON.stringify({ ...good, dvipa: { ...good.dvipa, address6: 'fd00::10' } }));
    expect(() => readLabDescription(bad)).toThrow('/dvipa/address6: fd00::10 is not an address in fd62:6174:6f6e::/64');

    fs.writeFileSync(bad, JSON.stringify({ ...good, client: { ...good.client, address6: good.nodes[0]!.address6 } }));
    expect(() => readLabDescription(bad)).toThrow(`/nodes/0/address6: ${good.nodes[0]!.address6} is also /client/address6`);

    fs.writeFileSync(bad, JSON.stringify(good).slice(0, 40));
    let err: unknown;
    try {
      readLabDescription(bad);
    } catch (e) {
      err = e;
    }
    expect(isBatonError(err, 'E_LAB')).toBe(true);
    expect((err as BatonError).context).toMatchObject({ step: 'read-description', path: bad });
    expect((err as Error).message).toMatch(/is not JSON/);
  });

  test('a second lab with another prefix comes and goes without touching the first', async () => {
    const other = newLab();
    const b = await labUp(other);
    try {
      expect(nsWithPrefix(other.prefix)).toHaveLength(5);
      expect(nsWithPrefix(ref.prefix)).toHaveLength(5);
      // Same subnet and addresses on purpose: only the namespaces separate the two labs.
      expect(b.nodes.map((n) => n.address)).toEqual(lab.nodes.map((n) => n.address));
      expect(b.nodes.map((n) => n.mac)).not.toEqual(lab.nodes.map((n) => n.mac));
      expect(await probe(b.client.ns, b.nodes[2]!.address)).toBe('ECONNREFUSED');
      expect(await neighbourMac(b.client.ns, b.nodes[2]!.address)).toBe(b.nodes[2]!.mac);
    } finally {
      await labDown(other);
    }
    expect(nsWithPrefix(other.prefix)).toEqual([]);
    expect(fs.existsSync(labFile(other.dir))).toBe(false);
    expect(nsWithPrefix(ref.prefix)).toHaveLength(5);
    expect(await probe(lab.client.ns, lab.nodes[0]!.address)).toBe('ECONNREFUSED');
    expect((await labStatus(ref)).processes.find((p) => p.name === 'n2-sleep')?.alive).toBe(true);
  });

  test('labUp refuses a prefix whose lab already exists, and leaves it alone', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'btdup-'));
    try {
      await expect(labUp({ prefix: ref.prefix, dir })).rejects.toMatchObject({ code: 'E_LAB', context: { step: 'preflight' } });
      expect(nsWithPrefix(ref.prefix)).toHaveLength(5);
      expect(fs.existsSync(labFile(ref.dir))).toBe(true);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('labDown stops the lab\'s processes and removes everything; a second labDown is a no-op', async () => {
    const pid = (await labStatus(ref)).processes.find((p) => p.name === 'n2-sleep')!.pid!;
    await labDown(ref);
    expect(isAlive(pid)).toBe(false);
    expect(nsWithPrefix(ref.prefix)).toEqual([]);
    expect(fs.existsSync(labFile(ref.dir))).toBe(false);
    expect(fs.existsSync(path.join(lab.runDir, 'n2-sleep.pid'))).toBe(false);
    expect(fs.existsSync(path.join(lab.runDir, 'n2-sleep.log'))).toBe(true);
    await labDown(ref);
    const status = await labStatus(ref);
    expect(status.description).toBeUndefined();
    expect(status.namespaces.every((n) => !n.exists)).toBe(true);
  });
});

describe('teardown after a crash', () => {
  test('without lab.json, with a supervised process still running in a node', async () => {
    const ref = newLab();
    const lab = await labUp(ref);
    const p = await startProcess({ name: 'orphan', ns: lab.nodes[0]!.ns, argv: ['sleep', '300'] }, { runDir: lab.runDir, lab: ref.prefix });
    expect(isAlive(p.pid, ref.prefix)).toBe(true);
    // Simulated crash: lab.json gone, the process and namespaces left behind.
    fs.rmSync(labFile(ref.dir));
    const status = await labStatus(ref);
    expect(status.description).toBeUndefined();
    expect(status.processes).toEqual([{ name: 'orphan', pid: p.pid, alive: true }]);

    await labDown(ref);
    expect(isAlive(p.pid)).toBe(false);
    expect(nsWithPrefix(ref.prefix)).toEqual([]);
    expect(fs.existsSync(path.join(lab.runDir, 'orphan.pid'))).toBe(false);
  });

  test('a corrupted lab.json does not stop labDown, and is removed', async () => {
    const ref = newLab();
    await labUp(ref);
    fs.writeFileSync(labFile(ref.dir), '{"version": 1, "prefix": ');
    const status = await labStatus(ref);
    expect(status.descriptionError).toMatch(/is not JSON/);
    await labDown(ref);
    expect(nsWithPrefix(ref.prefix)).toEqual([]);
    expect(fs.existsSync(labFile(ref.dir))).toBe(false);
  });
});

describe('labUp failing midway tears down what it made', () => {
  test('a process that exits at once', async () => {
    const ref = newLab();
    const err = await labUp({ ...ref, processes: (l) => [{ name: 'dies', ns: l.nodes[2]!.ns, argv: [process.execPath, '-e', 'console.error("boom"); process.exit(3)'] }] }).catch(
      (e: unknown) => e,
    );
    expect(isBatonError(err, 'E_LAB')).toBe(true);
    expect((err as BatonError).context).toMatchObject({ step: 'start-process', process: 'dies' });
    expect((err as Error).message).toMatch(/code 3[\s\S]*boom/);
    expect(nsWithPrefix(ref.prefix)).toEqual([]);
    expect(fs.existsSync(labFile(ref.dir))).toBe(false);
  });

  test('a process spec naming a namespace outside the lab', async () => {
    const ref = newLab();
    await expect(labUp({ ...ref, processes: () => [{ name: 'x', ns: 'elsewhere', argv: ['true'] }] })).rejects.toMatchObject({
      code: 'E_LAB',
      context: { step: 'processes', ns: 'elsewhere' },
    });
    expect(nsWithPrefix(ref.prefix)).toEqual([]);
  });

  test('bad options are refused before anything is made', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'btopt-'));
    await expect(labUp({ prefix: 'has-dash', dir })).rejects.toThrow(/invalid lab prefix/);
    await expect(labUp({ prefix: newPrefix(), dir, subnet: '10.203.0.5/24' })).rejects.toThrow(/host bits are set/);
    await expect(labUp({ prefix: newPrefix(), dir, subnet: '10.203.0.0/28' })).rejects.toThrow(/invalid lab subnet/);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
