// The distributor's rules for changing its routing table: only the node that serves a flow may
// freeze it, only the freezer may repoint or restore it, a rollback restores what was there, and a
// freeze nobody finishes is undone on its own.
import { afterEach, describe, expect, it } from 'vitest';
import type { FlowKey, RouteEntry } from '../../../controller/agent/routing-table.js';
import { RouteService, type TableOps } from '../../../controller/agent/route-service.js';
import type { ClusterConfig } from '../../../controller/config/cluster.js';
import { createLogger } from '../../../controller/log.js';

const config = {
  version: 1, instance: 't', dvipa: { address: '10.0.0.10', ports: [7000] }, distributor: 'n1', controlPort: 4701, xdpMode: 'native', handoffStepTimeoutMs: 100, releaseGraceMs: 200, releasedMaxMs: 1000,
  nodes: ['n1', 'n2', 'n3'].map((name, i) => ({ name, id: i + 1, address: `10.0.0.${11 + i}`, mac: `02:00:00:00:00:0${i + 1}`, interface: 'eth0', peerPort: 4700, agentSocket: `/tmp/${name}`, controlSecretFile: `/tmp/${name}.secret` })),
} as ClusterConfig;

/** The table as a map, with the same get/freeze/forward/remove semantics as the BPF map. */
class MemoryTable implements TableOps {
  readonly map = new Map<string, RouteEntry>();
  private k = (f: FlowKey) => `${f.clientAddress}:${f.clientPort}`;
  get(f: FlowKey) {
    return this.map.get(this.k(f));
  }
  freeze(f: FlowKey) {
    this.map.set(this.k(f), { state: 'frozen', targetNode: 0, targetMac: '00:00:00:00:00:00', packets: 0n, bytes: 0n });
  }
  forward(f: FlowKey, t: { node: number; mac: string }) {
    this.map.set(this.k(f), { state: 'forward', targetNode: t.node, targetMac: t.mac, packets: 0n, bytes: 0n });
  }
  release(f: FlowKey, t: { node: number; mac: string }) {
    this.map.set(this.k(f), { state: 'released', targetNode: t.node, targetMac: t.mac, packets: 0n, bytes: 0n });
  }
  remove(f: FlowKey) {
    return this.map.delete(this.k(f));
  }
  *entries(): Iterable<[FlowKey, RouteEntry]> {
    for (const [k, e] of this.map) {
      const [clientAddress, port] = k.split(':');
      yield [{ ...flow, clientAddress: clientAddress!, clientPort: Number(port) }, e];
    }
  }
}

const flow: FlowKey = { family: 4, clientAddress: '10.0.0.100', clientPort: 40000, vipAddress: '10.0.0.10', vipPort: 7000 };
const services: RouteService[] = [];
function setup(freezeLimitMs = 10_000) {
  const table = new MemoryTable();
  const service = new RouteService(table, config, createLogger({}, 'silent'), freezeLimitMs);
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
    expect(state()).toBe('released:2');
    await new Promise((r) => setTimeout(r, 400));
    expect(state()).toBeUndefined();
  });

  it('finished without a release (it was lost) releases and removes the entry; an owner that never says finished loses it after releasedMaxMs', async () => {
    const { table, service, state } = setup();
    service.freeze('n1', flow);
    service.forward('n1', flow, 'n2');
    service.finished('n2', flow);
    expect(state()).toBe('released:2');
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
    services.push(new RouteService(table, config, createLogger({}, 'silent'), 10_000));
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
    expect(state()).toBe('frozen:0');
    await new Promise((r) => setTimeout(r, 400));
    expect(state()).toBe('forward:2');
  });
});
