import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type AddressHolder, DvipaSet } from '../../../controller/agent/dvipa-set.js';
import { DvipaPolicy } from '../../../controller/config/dvipa-policy.js';

/** Records what would be put on and taken off lo; the kernel side is covered by the lab tests. */
function recorder(): AddressHolder & { held: Set<string> } {
  const held = new Set<string>();
  return { held, hold: async (a) => void held.add(a), release: async (a) => void held.delete(a) };
}

const dirs: string[] = [];
const fresh = () => {
  dirs.push(fs.mkdtempSync(path.join(os.tmpdir(), 'baton-dvipa-')));
  return path.join(dirs.at(-1)!, 'dvipas.json');
};
afterAll(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));
const primary = { addresses: ['10.0.0.10'], ports: [80, 7000] };
/** The cluster's allow-list in these tests: 10.0.0.0/24, node n1 at .11, the node's gateway at .1. */
const policy = (gateways: string[] = ['10.0.0.1']) => new DvipaPolicy(['10.0.0.0/24'], primary.addresses, ['10.0.0.11'], () => gateways);

describe('DvipaSet', () => {
  it('holds the config DVIPA, adds and removes others, and serves the union of their ports', async () => {
    const holder = recorder();
    const set = new DvipaSet(primary, fresh(), holder, policy());
    await set.load();
    expect([...holder.held]).toEqual(['10.0.0.10']);
    await set.add({ address: '10.0.0.20', ports: [443, 80] });
    expect(set.ports()).toEqual([80, 443, 7000]);
    expect(set.has('10.0.0.20')).toBe(true);
    expect(set.all().map((d) => [d.address, d.source])).toEqual([['10.0.0.10', 'config'], ['10.0.0.20', 'api']]);
    await set.remove('10.0.0.20');
    expect([...holder.held]).toEqual(['10.0.0.10']);
    expect(set.ports()).toEqual([80, 7000]);
  });

  it('adds an IPv6 DVIPA, kept and compared in its canonical text however it was written', async () => {
    const holder = recorder();
    const set = new DvipaSet({ addresses: ['10.0.0.10', '2001:db8::10'], ports: [80] }, fresh(), holder, new DvipaPolicy(['10.0.0.0/24', '2001:db8::/64'], ['10.0.0.10'], ['10.0.0.11'], () => []));
    await set.load();
    expect([...holder.held]).toEqual(['10.0.0.10', '2001:db8::10']);
    const added = await set.add({ address: '2001:DB8:0::0020', ports: [443] });
    expect(added.address).toBe('2001:db8::20');
    expect(set.has('2001:db8::20')).toBe(true);
    expect(holder.held.has('2001:db8::20')).toBe(true);
    await expect(set.add({ address: '2001:db8:1::20', ports: [443] })).rejects.toThrow(/outside the cluster's DVIPA allow-list/);
    await expect(set.remove('2001:db8::10')).rejects.toThrow(/config's DVIPA/);
  });

  it('tells onChange the added DVIPAs after each change, once held and kept', async () => {
    const file = fresh();
    const told: string[][] = [];
    const set = new DvipaSet(primary, file, recorder(), policy(), async (added) => void told.push(added.map((d) => d.address)));
    await set.load();
    await set.add({ address: '10.0.0.20', ports: [80] });
    await set.add({ address: '10.0.0.21', ports: [80] });
    await set.remove('10.0.0.20');
    expect(told).toEqual([['10.0.0.20'], ['10.0.0.20', '10.0.0.21'], ['10.0.0.21']]);
    // A refused change tells nothing; a retry of an add tells again (it repairs a failed reload).
    await expect(set.add({ address: '10.0.1.5', ports: [80] })).rejects.toThrow(/allow-list/);
    expect(told).toHaveLength(3);
    await set.add({ address: '10.0.0.21', ports: [80] });
    expect(told).toEqual([['10.0.0.20'], ['10.0.0.20', '10.0.0.21'], ['10.0.0.21'], ['10.0.0.21']]);
  });

  it('a restarted agent holds what was added before', async () => {
    const file = fresh();
    const first = new DvipaSet(primary, file, recorder(), policy());
    await first.load();
    await first.add({ address: '10.0.0.21', ports: [8080] });
    const holder = recorder();
    const second = new DvipaSet(primary, file, holder, policy());
    await second.load();
    expect([...holder.held].sort()).toEqual(['10.0.0.10', '10.0.0.21']);
  });

  it('refuses what would break the cluster, changing nothing', async () => {
    const holder = recorder();
    const file = fresh();
    const set = new DvipaSet(primary, file, holder, policy());
    await set.load();
    await expect(set.add({ address: '10.0.0.11', ports: [80] })).rejects.toThrow(/management address/);
    await expect(set.add({ address: '10.0.0.10', ports: [81] })).rejects.toThrow(/already exists/);
    await expect(set.add({ address: '10.0.0.300', ports: [81] })).rejects.toThrow(/not an IPv4 or IPv6 address/);
    await expect(set.remove('10.0.0.10')).rejects.toThrow(/config's DVIPA/);
    await expect(set.remove('10.0.0.99')).rejects.toThrow(/no DVIPA 10.0.0.99/);
    expect([...holder.held]).toEqual(['10.0.0.10']);
    expect(fs.existsSync(file)).toBe(false);
  });

  it.each([
    ['outside the allow-list', '10.0.1.5', /outside the cluster's DVIPA allow-list \(dvipaCidrs: 10.0.0.0\/24\)/],
    ['loopback', '127.0.0.5', /loopback/],
    ['multicast', '224.0.0.18', /multicast/],
    ['broadcast', '255.255.255.255', /broadcast/],
    ['link-local', '169.254.1.1', /link-local/],
    ['unspecified', '0.0.0.0', /unspecified/],
    ['a node', '10.0.0.11', /management address/],
    ['the gateway', '10.0.0.1', /gateway of this node/],
  ])('refuses a DVIPA that is %s, holding nothing and writing nothing', async (_what, address, why) => {
    const holder = recorder();
    const file = fresh();
    const set = new DvipaSet(primary, file, holder, policy());
    await set.load();
    await expect(set.add({ address, ports: [80] })).rejects.toThrow(why);
    expect([...holder.held]).toEqual(['10.0.0.10']);
    expect(fs.existsSync(file)).toBe(false);
    expect(set.has(address)).toBe(false);
  });

  it('a kept DVIPA the policy refuses now (a gateway moved onto it) stops the start, naming it', async () => {
    const file = fresh();
    const first = new DvipaSet(primary, file, recorder(), policy());
    await first.add({ address: '10.0.0.30', ports: [80] });
    const holder = recorder();
    await expect(new DvipaSet(primary, file, holder, policy(['10.0.0.30'])).load()).rejects.toThrow(/DVIPA 10.0.0.30 \(added through the API.*gateway of this node/);
    expect(holder.held.size).toBe(0);
  });

  it('a start reads the gateways once for all its DVIPAs: each read runs `ip` twice', async () => {
    const file = fresh();
    const first = new DvipaSet(primary, file, recorder(), policy());
    for (let i = 40; i < 50; i++) await first.add({ address: `10.0.0.${i}`, ports: [80] });
    let reads = 0;
    const counted = new DvipaPolicy(['10.0.0.0/24'], primary.addresses, ['10.0.0.11'], () => (reads++, ['10.0.0.1']));
    const holder = recorder();
    await new DvipaSet(primary, file, holder, counted).load();
    expect(holder.held.size).toBe(11);
    expect(reads).toBe(1);
  });

  it('adding the same DVIPA again is idempotent (a retried fan-out)', async () => {
    const set = new DvipaSet(primary, fresh(), recorder(), policy());
    await set.add({ address: '10.0.0.22', ports: [80] });
    await expect(set.add({ address: '10.0.0.22', ports: [80] })).resolves.toMatchObject({ source: 'api' });
    await expect(set.add({ address: '10.0.0.22', ports: [81] })).rejects.toThrow(/already exists/);
  });

  it('a corrupt state file is a clear config error', async () => {
    const file = fresh();
    fs.writeFileSync(file, '{"version":1,"added":[{"address":"x"}]}');
    await expect(new DvipaSet(primary, file, recorder(), policy()).load()).rejects.toThrow(/does not match its schema/);
  });
});
