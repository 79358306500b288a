// The distributor's rules for changing its routing table: only the node that serves a flow may
// freeze it, only the freezer may repoint or restore it, a rollback restores what was there, and a
// freeze nobody finishes is undone on its own.
import { afterEach, describe, expect, it } from 'vitest';
import type { FlowKey } from '../../../controller/flow.js';
import type { RouteEntry } from '../../../controller/agent/table-layout.js';
import { RouteService, type TableOps } from '../../../controller/agent/route-service.js';
import type { ClusterConfig } from '../../../controller/config/cluster.js';
import { createLogger } from '../../../controller/log.js';

const config = {
  version: 1, instance: 't', dvipa: { addresses: ['10.0.0.10'], ports: [7000] }, distributors: ['n1'], controlPort: 4701, xdpMode: 'native', handoffStepTimeoutMs: 100, releaseGraceMs: 200, releasedMaxMs: 1000,
  nodes: ['n1', 'n2', 'n3'].map((name, i) => ({ name, id: i + 1, address: `10.0.0.${11 + i}`, mac: `02:00:00:00:00:0${i + 1}`, interface: 'eth0', peerPort: 4700, agentSocket: `/tmp/${name}`, controlSecretFile: `/tmp/${name}.secret` })),
} as ClusterConfig;

/** The table as a map, with the same get/freeze/forward/remove semantics as the BPF map. */
class MemoryTable implements TableOps {
  readonly map = new Map<string, RouteEntry>();
  private k = (f: FlowKey) => `${f.clientAddress}:${f.clientPort}`;
  private flowOf = (k: string): FlowKey => {
    const [clientAddress, port] = k.split(':');
    return { ...flow, clientAddress: clientAddress!, clientPort: Number(port) };
  };
  get(f: FlowKey) {
    return this.map.get(this.k(f));
  }
  freeze(f: FlowKey, servedBy?: { node: number; mac: string }) {
    this.map.set(this.k(f), { state: 'frozen', targetNode: servedBy?.node ?? 0, targetMac: servedBy?.mac ?? '00:00:00:00:00:00', packets: 0n, bytes: 0n });
  }
  forward(f: FlowKey, t: { node: number; mac: string }) {
    this.map.set(this.k(f), { state: 'forward', targetNode: t.node, targetMac: t.mac, packets: 0n, bytes: 0n });
  }
  release(f: FlowKey, t: { node: number; mac: string }) {
    this.map.set(this.k(f), { state: 'released', targetNode: t.node, targetMac: t.mac, packets: 0n, bytes: 0n });
  }
  finish(f: FlowKey, t: { node: number; mac: string }) {
    this.map.set(this.k(f), { state: 'finished', targetNode: t.node, targetMac: t.mac, packets: 0n, bytes: 0n });
  }
  remove(f: FlowKey) {
    return this.map.delete(this.k(f));
  }
  *entries(): Iterable<[FlowKey, RouteEntry]> {
    for (const [k, e] of this.map) yield [this.flowOf(k), e];
  }
  entriesAfter(prev: Buffer | null, max: number) {
    const keys = [...this.map.keys()];
    const from = prev === null ? 0 : keys.indexOf(prev.toString()) + 1;
    const slice = keys.slice(from, from + max);
    const last = from + max < keys.length ? Buffer.from(slice.at(-1)!) : null;
    return { entries: slice.map((k): [FlowKey, RouteEntry] => [this.flowOf(k), this.map.get(k)!]), last };
  }
}

const flow: FlowKey = { family: 4, clientAddress: '10.0.0.100', clientPort: 40000, vipAddress: '10.0.0.10', vipPort: 7000 };
const services: RouteService[] = [];
function setup(freezeLimitMs = 10_000) {
  const table = new MemoryTable();
  const service = new RouteService(table, config, createLogger({}, 'silent'), freezeLimitMs, 262_144);
  services.push(service);
  return { table, service, state: () => table.get(flow) && `${table.get(flow)!.state}:${table.get(flow)!.targetNode}` };
}
afterEach(() => services.splice(0).forEach((s) => s.close()));

describe('routing table changes at the distributor', () => {
  it('first handoff: the distributor freezes a flow with no entry and forwards it', () => {
    const { service, state } = setup();
    service.freeze('n1', flow);
    expect(state()).toBe('frozen:0');
    service.forward('n1', flow, 'n2');
    expect(state()).toBe('forward:2');
  });

  it('transfer again: only the node the entry forwards to may freeze it', () => {
    const { service, state } = setup();
    service.freeze('n1', flow);
    service.forward('n1', flow, 'n2');
    expect(() => service.freeze('n3', flow)).toThrow(/n3 does not serve this flow/);
    expect(() => service.freeze('n1', flow)).toThrow(/n1 does not serve this flow/);
    service.freeze('n2', flow);
    expect(() => service.forward('n3', flow, 'n3')).toThrow(/no freeze by n3/);
    service.forward('n2', flow, 'n3');
    expect(state()).toBe('forward:3');
  });

  it('rollback of a transfer again restores the forward entry; of a first handoff, removes it', () => {
    const { service, state } = setup();
    service.freeze('n1', flow);
    service.unfreeze('n1', flow);
    expect(state()).toBeUndefined();
    service.freeze('n1', flow);
    service.forward('n1', flow, 'n2');
    service.freeze('n2', flow);
    service.unfreeze('n2', flow);
    expect(state()).toBe('forward:2');
  });

  it('moving a connection back to the distributor removes the entry', () => {
    const { service, state } = setup();
    service.freeze('n1', flow);
    service.forward('n1', flow, 'n2');
    service.freeze('n2', flow);
    service.forward('n2', flow, 'n1');
    expect(state()).toBeUndefined();
  });

  it('one freeze at a time, and unknown nodes are refused', () => {
    const { service } = setup();
    service.freeze('n1', flow);
    expect(() => service.freeze('n1', flow)).toThrow(/already in progress/);
    expect(() => service.freeze('n9', { ...flow, clientPort: 1 })).toThrow(/unknown node n9/);
  });

  it('a forward refused (unknown target) or failed (the map write threw) leaves the freeze with its owner: forward or unfreeze later, or the sweep', async () => {
    const { table, service, state } = setup(50);
    service.freeze('n1', flow);
    expect(() => service.forward('n1', flow, 'n9')).toThrow(/unknown node n9/);
    expect(state()).toBe('frozen:0');
    service.forward('n1', flow, 'n2');
    expect(state()).toBe('forward:2');

    service.freeze('n2', flow);
    const write = table.forward;
    table.forward = () => {
      throw new Error('bpf map update failed: ENOMEM');
    };
    expect(() => service.forward('n2', flow, 'n3')).toThrow(/ENOMEM/);
    table.forward = write;
    expect(state()).toBe('frozen:2');
    service.unfreeze('n2', flow);
    expect(state()).toBe('forward:2');

    // Nobody comes back after a failed write: the sweep restores the entry from its record.
    service.freeze('n2', flow);
    table.forward = () => {
      throw new Error('bpf map update failed: ENOMEM');
    };
    expect(() => service.forward('n2', flow, 'n3')).toThrow(/ENOMEM/);
    table.forward = write;
    await new Promise((r) => setTimeout(r, 400));
    expect(state()).toBe('forward:2');
  });

  it('release: only the owner; the entry keeps forwarding as RELEASED while TCP closes, then goes the grace after finished', async () => {
    const { service, state } = setup();
    service.freeze('n1', flow);
    service.forward('n1', flow, 'n2');
    expect(() => service.release('n3', flow)).toThrow(/n3 does not serve this flow/);
    service.release('n2', flow);
    expect(state()).toBe('released:2');
    await new Promise((r) => setTimeout(r, 400)); // past releaseGraceMs (200): still closing, still there
    expect(state()).toBe('released:2');
    expect(() => service.finished('n3', flow)).toThrow(/n3 does not serve this flow/);
    service.finished('n2', flow);
    expect(state()).toBe('finished:2');
    await new Promise((r) => setTimeout(r, 400));
    expect(state()).toBeUndefined();
  });

  it('finished without a release (it was lost) finishes and removes the entry; an owner that never says finished loses it after releasedMaxMs', async () => {
    const { table, service, state } = setup();
    service.freeze('n1', flow);
    service.forward('n1', flow, 'n2');
    service.finished('n2', flow);
    expect(state()).toBe('finished:2');
    await new Promise((r) => setTimeout(r, 400));
    expect(state()).toBeUndefined();

    const other = { ...flow, clientPort: flow.clientPort + 1 };
    service.freeze('n1', other);
    service.forward('n1', other, 'n3');
    service.release('n3', other);
    await new Promise((r) => setTimeout(r, 600));
    expect(table.get(other)?.state).toBe('released');
    await new Promise((r) => setTimeout(r, 700)); // releasedMaxMs is 1000 here
    expect(table.get(other)).toBeUndefined();
  });

  it('a released entry reclaimed and reused meanwhile is not removed by the old grace timer', async () => {
    const { table, service, state } = setup();
    service.freeze('n1', flow);
    service.forward('n1', flow, 'n2');
    service.release('n2', flow);
    service.finished('n2', flow);
    table.remove(flow); // XDP reclaimed the tuple for a new connection...
    service.freeze('n1', flow);
    service.forward('n1', flow, 'n3'); // ...which was handed to n3
    await new Promise((r) => setTimeout(r, 400));
    expect(state()).toBe('forward:3');
  });

  it('a restarted distributor gives released entries left in the pinned table the longer bound again', async () => {
    const table = new MemoryTable();
    table.release(flow, { node: 2, mac: '02:00:00:00:00:02' });
    services.push(new RouteService(table, config, createLogger({}, 'silent'), 10_000, 262_144));
    await new Promise((r) => setTimeout(r, 400));
    expect(table.get(flow)?.state).toBe('released');
    await new Promise((r) => setTimeout(r, 900));
    expect(table.get(flow)).toBeUndefined();
  });

  it('a freeze nobody finishes is rolled back after the bound', async () => {
    const { service, state } = setup(50);
    service.freeze('n1', flow);
    service.forward('n1', flow, 'n2');
    service.freeze('n2', flow);
    // The frozen entry names the node that served the flow until then.
    expect(state()).toBe('frozen:2');
    await new Promise((r) => setTimeout(r, 400));
    expect(state()).toBe('forward:2');
  });
});

const at = (port: number, client = flow.clientAddress): FlowKey => ({ ...flow, clientAddress: client, clientPort: port });

describe('routing-table quotas', () => {
  const limited = (limits: ClusterConfig['limits']) => {
    const table = new MemoryTable();
    const service = new RouteService(table, { ...config, limits }, createLogger({}, 'silent'), 10_000, 262_144);
    services.push(service);
    return { table, service };
  };

  it('one client address cannot hold more than entriesPerSource handed-off connections; others still can; refusals counted', () => {
    const { table, service } = limited({ entriesPerSource: 3 });
    for (let p = 1; p <= 3; p++) {
      service.freeze('n1', at(p));
      service.forward('n1', at(p), 'n2');
    }
    expect(() => service.freeze('n1', at(4))).toThrow(expect.objectContaining({ code: 'E_QUOTA', message: expect.stringMatching(/client 10.0.0.100 holds 3 handed-off connections/) }));
    expect(table.get(at(4))).toBeUndefined();
    expect(service.quotas.refused.get('per-source')).toBe(1);
    service.freeze('n1', at(4, '10.0.0.101'));
    // Moving a connection on takes no new entry: no quota applies.
    service.freeze('n2', at(1));
    service.forward('n2', at(1), 'n3');
    expect(table.get(at(1))?.targetNode).toBe(3);
  });

  it('an IPv6 client counts by its /64 (limits.ipv6SourcePrefix sets the length): one holder cannot spread over its addresses', () => {
    const v6 = (client: string, port: number): FlowKey => ({ family: 6, clientAddress: client, clientPort: port, vipAddress: '2001:db8::10', vipPort: 7000 });
    const { table, service } = limited({ entriesPerSource: 2 });
    service.freeze('n1', v6('2001:db8:1:2::5', 1));
    service.freeze('n1', v6('2001:db8:1:2::6', 2));
    expect(() => service.freeze('n1', v6('2001:db8:1:2:ffff::1', 3))).toThrow(/client 2001:db8:1:2:ffff::1 \(source 2001:db8:1:2::\/64\) holds 2 handed-off connections/);
    expect(table.get(v6('2001:db8:1:2:ffff::1', 3))).toBeUndefined();
    // Another /64 has a quota of its own.
    service.freeze('n1', v6('2001:db8:1:3::5', 4));
    // Counted per address, the same two would leave room for a third address of the /64.
    const perAddress = limited({ entriesPerSource: 1, ipv6SourcePrefix: 128 });
    perAddress.service.freeze('n1', v6('2001:db8:1:2::5', 1));
    perAddress.service.freeze('n1', v6('2001:db8:1:2::6', 2));
    expect(() => perAddress.service.freeze('n1', v6('2001:db8:1:2::6', 3))).toThrow(/client 2001:db8:1:2::6 \(source 2001:db8:1:2::6\/128\) holds 1/);
  });

  it('the table as a whole stops at handedOffEntries, below its capacity; room comes back as entries go', () => {
    const { table, service } = limited({ handedOffEntries: 5, entriesPerSource: 100 });
    for (let p = 1; p <= 5; p++) service.freeze('n1', at(p, `10.0.1.${p}`));
    expect(() => service.freeze('n1', at(6, '10.0.1.6'))).toThrow(/quota \(limits.handedOffEntries\) is 5/);
    expect(service.quotas.refused.get('total')).toBe(1);
    expect(table.map.size).toBe(5);
    service.unfreeze('n1', at(1, '10.0.1.1'));
    service.freeze('n1', at(6, '10.0.1.6'));
    expect(table.map.size).toBe(5);
  });

  it('admit asks the same quotas before anything is exported, writing nothing; a move is always admitted', () => {
    const { table, service } = limited({ entriesPerSource: 1 });
    service.admit('n1', at(1));
    service.freeze('n1', at(1));
    service.forward('n1', at(1), 'n2');
    expect(() => service.admit('n1', at(2))).toThrow(expect.objectContaining({ code: 'E_QUOTA' }));
    expect(table.get(at(2))).toBeUndefined();
    expect(service.quotas.refused.get('per-source')).toBe(1);
    expect(() => service.admit('n2', at(1))).not.toThrow();
  });

  it('defaults: 7/8 of the capacity in all, 4096 per client address', () => {
    const table = new MemoryTable();
    const service = new RouteService(table, config, createLogger({}, 'silent'), 10_000, 1024);
    services.push(service);
    expect(service.quotas.limits).toEqual({ handedOffEntries: 896, entriesPerSource: 4096 });
  });
});

describe('the in-memory index', () => {
  it('counts and pages follow every change, without walking the map', () => {
    const { table, service } = setup();
    for (let p = 1; p <= 25; p++) {
      service.freeze('n1', at(p, `10.0.2.${p % 3}`));
      service.forward('n1', at(p, `10.0.2.${p % 3}`), p % 2 ? 'n2' : 'n3');
    }
    service.release('n2', at(1, '10.0.2.1'));
    const { index } = service;
    expect(index.size).toBe(25);
    expect(index.count({ state: 'released' })).toBe(1);
    expect(index.count({ node: 2 })).toBe(13);
    expect(index.count({ client: '10.0.2.0' })).toBe(8);
    expect(index.count({ node: 2, client: '10.0.2.0' })).toBeUndefined();
    const seen: string[] = [];
    let next: string | undefined;
    do {
      const page = index.page({ after: next === undefined ? undefined : Number(next), limit: 7 });
      seen.push(...page.values.map((e) => e.id));
      next = page.next;
    } while (next);
    expect(seen).toHaveLength(25);
    expect(new Set(seen).size).toBe(25);
    expect(table.map.size).toBe(25);
  });

  it('a page cursor stays valid while entries come and go: nothing listed twice, nothing that stayed is missed', () => {
    const { service } = setup();
    for (let p = 1; p <= 10; p++) service.freeze('n1', at(p));
    const first = service.index.page({ limit: 4 });
    service.unfreeze('n1', at(2)); // listed already, gone
    service.unfreeze('n1', at(6)); // not yet listed, gone
    service.freeze('n1', at(11)); // new: comes after
    const rest = service.index.page({ after: Number(first.next), limit: 100 });
    expect(first.values.map((e) => e.flow.clientPort)).toEqual([1, 2, 3, 4]);
    expect(rest.values.map((e) => e.flow.clientPort)).toEqual([5, 7, 8, 9, 10, 11]);
    expect(rest.next).toBeUndefined();
  });

  it('reconcile takes up what changed in the map behind its back (XDP reclaimed a tuple, bpftool), a step at a time', async () => {
    const { table, service } = setup();
    for (let p = 1; p <= 3000; p++) {
      service.freeze('n1', at(p));
      service.forward('n1', at(p), 'n2');
    }
    table.remove(at(5));
    table.forward(at(5000), { node: 3, mac: '02:00:00:00:00:03' });
    expect(await service.reconcile()).toEqual({ added: 1, removed: 1 });
    expect(service.index.size).toBe(3000);
    expect(service.index.get(at(5))).toBeUndefined();
    expect(service.index.get(at(5000))?.node).toBe(3);
  });
  it('entries reconcile finds behind its back are taken up as at start: closing ones go after their bound, frozen ones are recovered', async () => {
    const { table, service } = setup();
    await service.recover(async (_node, flows) => flows.map(() => 'GONE')); // at start: nothing to recover yet
    table.release(at(1), { node: 2, mac: '02:00:00:00:00:02' });
    table.finish(at(2), { node: 3, mac: '02:00:00:00:00:03' });
    table.freeze(at(3)); // the distributor's own flow
    table.freeze(at(4), { node: 2, mac: '02:00:00:00:00:02' }); // n2's, which holds no socket for it
    table.forward(at(5), { node: 2, mac: '02:00:00:00:00:02' });
    expect((await service.reconcile()).added).toBe(5);
    expect(table.get(at(3))).toBeUndefined();
    await new Promise((r) => setTimeout(r, 400)); // past releaseGraceMs (200)
    expect(table.get(at(4))).toBeUndefined();
    expect(table.get(at(2))).toBeUndefined();
    expect(table.get(at(1))?.state).toBe('released');
    await new Promise((r) => setTimeout(r, 800)); // past releasedMaxMs (1000)
    expect(table.get(at(1))).toBeUndefined();
    expect([...table.map.keys()]).toEqual([`${flow.clientAddress}:5`]);
    expect(service.index.size).toBe(1);
  });

  it('reconcile takes up, in one pass, however many entries were written behind its back', async () => {
    const { table, service } = setup();
    for (let p = 1; p <= 5000; p++) table.forward(at(p), { node: 2, mac: '02:00:00:00:00:02' });
    expect(await service.reconcile()).toEqual({ added: 5000, removed: 0 });
    expect(service.index.size).toBe(5000);
  });
});

describe('recovery of entries a previous batond left frozen', () => {
  const n2 = { node: 2, mac: '02:00:00:00:00:02' };

  it("the distributor's own flows go back to its kernel at once; another node's wait for its answer", async () => {
    const table = new MemoryTable();
    table.freeze(at(1)); // first handoff in flight: the distributor served it
    table.freeze(at(2), { node: 1, mac: '02:00:00:00:00:01' }); // the distributor, named
    table.freeze(at(3), n2); // moving on from n2, n2's kernel still holds it
    table.freeze(at(4), n2); // moving on from n2, gone there
    table.freeze(at(5), { node: 3, mac: '02:00:00:00:00:03' }); // from n3, which does not answer
    const service = new RouteService(table, config, createLogger({}, 'silent'), 10_000, 262_144);
    services.push(service);
    expect(table.get(at(1))).toBeUndefined();
    expect(table.get(at(2))).toBeUndefined();
    // Still frozen while the question is out, and nobody may start another handoff of them.
    expect(table.get(at(3))?.state).toBe('frozen');
    expect(() => service.freeze('n2', at(3))).toThrow(/already in progress/);
    const asked: Array<[string, number[]]> = [];
    await service.recover(async (node, flows) => {
      asked.push([node, flows.map((f) => f.clientPort)]);
      if (node === 'n3') throw new Error('no welcome from n3 within 100 ms');
      return flows.map((f) => (f.clientPort === 3 ? 'ESTABLISHED' : 'GONE'));
    });
    expect(asked.sort()).toEqual([['n2', [3, 4]], ['n3', [5]]]);
    expect(table.get(at(3))).toMatchObject({ state: 'forward', targetNode: 2 });
    expect(table.get(at(4))).toBeUndefined();
    expect(table.get(at(5))).toMatchObject({ state: 'forward', targetNode: 3 });
    expect([...table.map.values()].filter((e) => e.state === 'frozen')).toEqual([]);
    expect(service.index.count({ state: 'frozen' })).toBe(0);
    // Given back, the flow moves on again as usual.
    service.freeze('n2', at(3));
    service.forward('n2', at(3), 'n3');
  });
});
