import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type AddressHolder, DvipaSet } from '../../../controller/agent/dvipa-set.js';

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
const primary = { address: '10.0.0.10', ports: [80, 7000] };

describe('DvipaSet', () => {
  it('holds the config DVIPA, adds and removes others, and serves the union of their ports', async () => {
    const holder = recorder();
    const set = new DvipaSet(primary, fresh(), holder, ['10.0.0.11']);
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

  it('a restarted agent holds what was added before', async () => {
    const file = fresh();
    const first = new DvipaSet(primary, file, recorder(), []);
    await first.load();
    await first.add({ address: '10.0.0.21', ports: [8080] });
    const holder = recorder();
    const second = new DvipaSet(primary, file, holder, []);
    await second.load();
    expect([...holder.held].sort()).toEqual(['10.0.0.10', '10.0.0.21']);
  });

  it('refuses what would break the cluster, changing nothing', async () => {
    const holder = recorder();
    const file = fresh();
    const set = new DvipaSet(primary, file, holder, ['10.0.0.11']);
    await set.load();
    await expect(set.add({ address: '10.0.0.11', ports: [80] })).rejects.toThrow(/management address/);
    await expect(set.add({ address: '10.0.0.10', ports: [81] })).rejects.toThrow(/already exists/);
    await expect(set.add({ address: '10.0.0.300', ports: [81] })).rejects.toThrow(/not an IPv4 address/);
    await expect(set.remove('10.0.0.10')).rejects.toThrow(/config's DVIPA/);
    await expect(set.remove('10.0.0.99')).rejects.toThrow(/no DVIPA 10.0.0.99/);
    expect([...holder.held]).toEqual(['10.0.0.10']);
    expect(fs.existsSync(file)).toBe(false);
  });

  it('adding the same DVIPA again is idempotent (a retried fan-out)', async () => {
    const set = new DvipaSet(primary, fresh(), recorder(), []);
    await set.add({ address: '10.0.0.22', ports: [80] });
    await expect(set.add({ address: '10.0.0.22', ports: [80] })).resolves.toMatchObject({ source: 'api' });
    await expect(set.add({ address: '10.0.0.22', ports: [81] })).rejects.toThrow(/already exists/);
  });

  it('a corrupt state file is a clear config error', async () => {
    const file = fresh();
    fs.writeFileSync(file, '{"version":1,"added":[{"address":"x"}]}');
    await expect(new DvipaSet(primary, file, recorder(), []).load()).rejects.toThrow(/does not match its schema/);
  });
});
