// A distributor's role (controller/agent/distributor-role.ts) over an in-memory table
// (test/helpers/fake-table.ts) and fake peer links that record what is sent: standby until told
// otherwise; activation adopts the replica (its own flows out, frozen ones asked about), says so to
// every node and streams the table to the other distributor; standing down ends all of that; a
// standby applies the stream of a distributor that claims to be active and refuses any other.
import { EventEmitter } from 'node:events';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { DistributorRole } from '../../../controller/agent/distributor-role.js';
import type { Prober } from '../../../controller/agent/route-service.js';
import type { RouteEntry } from '../../../controller/agent/table-layout.js';
import type { Steering } from '../../../controller/agent/xdp.js';
import type { ClusterConfig, NodeConfig } from '../../../controller/config/cluster.js';
import { BatonError } from '../../../controller/errors.js';
import { connectionId, type FlowKey } from '../../../controller/flow.js';
import { EXPIRY_MS } from '../../../controller/control/server.js';
import { ActiveDistributor, type Announcement } from '../../../controller/ha/active.js';
import type { Served } from '../../../controller/ha/served.js';
import { createLogger } from '../../../controller/log.js';
import type { Channel } from '../../../controller/transfer/channel.js';
import { type Body, header, type Message, type MessageType } from '../../../controller/transfer/messages.js';
import type { PeerLinks } from '../../../controller/transfer/peers.js';
import { MemoryTable } from '../../helpers/fake-table.js';
import { until } from '../../helpers/wait.js';

const log = createLogger({}, 'silent');

const config = {
  version: 1, instance: 't', dvipa: { addresses: ['10.0.0.10'], ports: [7000] }, distributors: ['n1', 'n2'], controlPort: 4701, xdpMode: 'native', handoffStepTimeoutMs: 100, releaseGraceMs: 200, releasedMaxMs: 1000,
  nodes: ['n1', 'n2', 'n3'].map((name, i) => ({ name, id: i + 1, address: `10.0.0.${11 + i}`, mac: `02:00:00:00:00:0${i + 1}`, interface: 'eth0', peerPort: 4700, agentSocket: `/tmp/${name}`, controlSecretFile: `/tmp/${name}.secret` })),
} as ClusterConfig;
const node = (name: string): NodeConfig => config.nodes.find((n) => n.name === name)!;
const mac = (id: number) => `02:00:00:00:00:0${id}`;

function flow(i: number): FlowKey {
  return { family: 4, clientAddress: `10.0.1.${i}`, clientPort: 40000 + i, vipAddress: '10.0.0.10', vipPort: 7000 };
}

/**
 * A peer link's channel: what is sent on it, in order; closing it tells its listeners, as Channel
 * does. An EventEmitter: listenerCount('close') says how many listeners the role left on it.
 */
class FakeChannel extends EventEmitter {
  readonly sent: Array<{ type: string; body: Record<string, unknown> }> = [];
  closed = false;
  readonly socket = { writableLength: 0 };
  send(type: string, body: Record<string, unknown>): boolean {
    if (this.closed) return false;
    this.sent.push({ type, body });
    return true;
  }
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.emit('close');
  }
  /** Bodies of the messages of this type sent so far. */
  of(type: string): Array<Record<string, unknown>> {
    return this.sent.filter((m) => m.type === type).map((m) => m.body);
  }
}

/** PeerLinks as the role uses it: one link per node, a new one once the last closed; unreachable nodes reject. */
class FakePeers {
  readonly links = new Map<string, FakeChannel>();
  readonly unreachable = new Set<string>();
  readonly asked: string[] = [];
  get(name: string): Promise<{ channel: FakeChannel }> {
    this.asked.push(name);
    if (this.unreachable.has(name)) return Promise.reject(new BatonError('E_PEER', `cannot reach ${name}`, { node: name, step: 'connect' }));
    let channel = this.links.get(name);
    if (!channel || channel.closed) {
      channel = new FakeChannel();
      this.links.set(name, channel);
    }
    return Promise.resolve({ channel });
  }
  /** Bodies of the messages of this type sent on the link to name (none if it was never opened). */
  sentTo(name: string, type: string): Array<Record<string, unknown>> {
    return this.links.get(name)?.of(type) ?? [];
  }
}

const roles: DistributorRole[] = [];
afterEach(() => {
  roles.splice(0).forEach((r) => r.close());
  vi.useRealTimers();
});

/**
 * A role on self over table, with a probe whose answers the test sets (ESTABLISHED unless told),
 * or the test's own probe; ActiveDistributor reads the test's clock when given one.
 */
function setup(self = 'n1', table = new MemoryTable(), opts: { now?: () => number; probe?: Prober; served?: (node: string) => Promise<Served[]> } = {}) {
  const peers = new FakePeers();
  const active = new ActiveDistributor(config, self, opts.now);
  const probeSays = new Map<string, string>();
  const probes: Array<{ node: string; flows: string[] }> = [];
  const probe: Prober = async (n, flows) => {
    probes.push({ node: n, flows: flows.map(connectionId) });
    if (opts.probe) return opts.probe(n, flows);
    return flows.map((f) => probeSays.get(connectionId(f)) ?? 'ESTABLISHED');
  };
  const deferred: boolean[] = [];
  const role = new DistributorRole({
    config,
    self: node(self),
    log,
    // Records each deferToPeers: what the steering program is told about frames other distributors steered.
    steering: { routes: table, deferToPeers: (on: boolean) => deferred.push(on) } as unknown as Steering,
    active,
    probe,
    peers: peers as unknown as PeerLinks,
    // Unless the test says otherwise, no node answers: takeovers keep the replica as it is.
    served: opts.served ?? ((n) => Promise.reject(new BatonError('E_PEER', `${n} not asked in this test`, { node: n }))),
  });
  roles.push(role);
  return { role, table, peers, active, probeSays, probes, deferred };
}

/** Lets promise callbacks and setImmediate work (link opening, change flushes, recovery) run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((r) => setImmediate(r));
}

const entryOf = (table: MemoryTable, f: FlowKey) => {
  const e = table.get(f);
  return e && `${e.state}/${e.targetNode}/${e.targetMac}`;
};

/** The active one's stream as a standby receives it. */
const SESSION = '0123456789abcdef';
const replicaMsg = (body: Body<'replica'>) => header('replica', body) as Message<'replica'>;
const change = (i: number, node: number) => ({ flow: flow(i), entry: { state: 'forward' as const, node, mac: mac(node) } });
const inbound = () => new FakeChannel();
const asChannel = (c: FakeChannel) => c as unknown as Channel<MessageType>;
/** n2's announcement that it is active, heard (as it is on the link, before its stream). */
const n2Claims = (active: ActiveDistributor) => expect(active.heard({ node: 'n2', since: Date.now(), active: true })).toBe(true);

/** A pinned table that cannot be walked while `unreadable` (a BPF map operation failing: E_BPF). */
class UnreadableTable extends MemoryTable {
  unreadable = false;
  private fail(): never {
    throw new BatonError('E_BPF', 'cannot walk the routing table', { step: 'routes' });
  }
  override *entries(): Iterable<[FlowKey, RouteEntry]> {
    if (this.unreadable) this.fail();
    yield* super.entries();
  }
  override entriesAfter(prev: Buffer | null, max: number): { entries: Array<[FlowKey, RouteEntry]>; last: Buffer | null } {
    if (this.unreadable) this.fail();
    return super.entriesAfter(prev, max);
  }
}

describe('distributor role: phases', () => {
  it('starts standby; activate makes it active with a route service and tells ActiveDistributor; standDown undoes it; both are idempotent', async () => {
    const { role, active, peers, deferred } = setup('n1');
    expect(role.phase()).toBe('standby');
    expect(role.routeService()).toBeUndefined();
    expect(role.since()).toBe(0);
    expect(active.since()).toBe(0);

    const before = Date.now();
    role.activate('test');
    expect(role.phase()).toBe('active');
    // Active, its own table steers every frame, a peer's too (the peer's replica may lag).
    expect(deferred).toEqual([false]);
    const service = role.routeService();
    expect(service).toBeDefined();
    const since = role.since();
    expect(since).toBeGreaterThanOrEqual(before);
    expect(active.name()).toBe('n1');
    expect(active.isSelf()).toBe(true);
    expect(active.since()).toBe(since);
    await settle();
    const announced = peers.sentTo('n3', 'distributor').length;
    expect(announced).toBe(1);

    // A second activation (keepalived repeating MASTER) is no transition: no error, nothing new.
    expect(() => role.activate('again')).not.toThrow();
    await settle();
    expect(role.phase()).toBe('active');
    expect(role.routeService()).toBe(service);
    expect(role.since()).toBe(since);
    expect(peers.sentTo('n3', 'distributor')).toHaveLength(announced);
    expect(role.replication().streams).toHaveLength(1);

    role.standDown('test');
    expect(role.phase()).toBe('standby');
    // Standing by, a frame the active one steered here is this node's kernel's, whatever the replica says.
    expect(deferred).toEqual([false, true]);
    expect(role.routeService()).toBeUndefined();
    expect(role.since()).toBe(0);
    expect(active.since()).toBe(0); // its own claim withdrawn: nobody is known active now
    expect(role.replication().streams).toEqual([]);
    expect(() => role.standDown('again')).not.toThrow();
    expect(role.phase()).toBe('standby');

    // And active again: a new service over the same table, not the closed one.
    role.activate('back');
    expect(role.phase()).toBe('active');
    expect(role.routeService()).toBeDefined();
    expect(role.routeService()).not.toBe(service);
  });

  it('standing down stops the route service: its timers no longer change the table, now a replica', async () => {
    const table = new MemoryTable();
    const { role } = setup('n1', table);
    role.activate('test');
    const service = role.routeService()!;
    service.freeze('n1', flow(1));
    service.forward('n1', flow(1), 'n3');
    service.finished('n3', flow(1)); // removed after releaseGraceMs (200 ms) while active
    role.standDown('keepalived: BACKUP');
    await new Promise((r) => setTimeout(r, 2 * config.releaseGraceMs));
    expect(entryOf(table, flow(1))).toBe(`finished/3/${mac(3)}`);
  });

  it('a standDown before any activation is no transition either: standby, no error', () => {
    const { role } = setup('n1');
    expect(() => role.standDown('keepalived: BACKUP')).not.toThrow();
    expect(role.phase()).toBe('standby');
    expect(role.routeService()).toBeUndefined();
  });
});

describe('distributor role: activation over a replica', () => {
  it('removes the entries naming this node, keeps those naming another, and settles frozen ones with a probe', async () => {
    // n2 takes over: the replica it was sent names n2 for the flows the old active had moved to it.
    const table = new MemoryTable();
    const own = [flow(1), flow(2), flow(3)];
    table.put(own[0]!, { state: 'forward', targetNode: 2, targetMac: mac(2) });
    table.put(own[1]!, { state: 'released', targetNode: 2, targetMac: mac(2) });
    table.put(own[2]!, { state: 'finished', targetNode: 2, targetMac: mac(2) });
    const kept = [flow(4), flow(5), flow(6)];
    table.put(kept[0]!, { state: 'forward', targetNode: 3, targetMac: mac(3) });
    table.put(kept[1]!, { state: 'released', targetNode: 3, targetMac: mac(3) });
    table.put(kept[2]!, { state: 'forward', targetNode: 1, targetMac: mac(1) }); // the old active, a target now
    const frozenBack = flow(7);
    const frozenGone = flow(8);
    const frozenOwn = flow(9);
    table.put(frozenBack, { state: 'frozen', targetNode: 3, targetMac: mac(3) });
    table.put(frozenGone, { state: 'frozen', targetNode: 3, targetMac: mac(3) });
    table.put(frozenOwn, { state: 'frozen', targetNode: 0, targetMac: '00:00:00:00:00:00' }); // a first handoff the old active never finished
    const keptBefore = kept.map((f) => entryOf(table, f));

    const { role, probeSays, probes } = setup('n2', table);
    probeSays.set(connectionId(frozenGone), 'GONE');
    role.activate('keepalived: MASTER');

    for (const f of own) expect(table.get(f), `own entry ${connectionId(f)}`).toBeUndefined();
    expect(kept.map((f) => entryOf(table, f))).toEqual(keptBefore);
    expect(table.get(frozenOwn)).toBeUndefined();
    // entries: what the service kept of the 9 (the index after adoption), not what the replica held.
    expect(role.lastTakeover).toEqual({ at: role.since(), entries: 5, ownRemoved: 3 });

    await until('the frozen entries settled', () => entryOf(table, frozenBack) !== `frozen/3/${mac(3)}` && !table.get(frozenGone));
    expect(probes).toEqual([{ node: 'n3', flows: [connectionId(frozenBack), connectionId(frozenGone)] }]);
    expect(entryOf(table, frozenBack)).toBe(`forward/3/${mac(3)}`);
    expect(table.get(frozenGone)).toBeUndefined();
    expect(role.routeService()!.tableSize().entries).toBe(4);
  });

  it('counts a takeover when another distributor was active, not the preferred one starting, nor its own return', () => {
    // Only Date is faked: activations a second apart, so every `since` orders as it would in life.
    vi.useFakeTimers({ toFake: ['Date'], now: 1_700_000_000_000 });
    const later = () => vi.setSystemTime(Date.now() + 1000);
    const preferred = setup('n1');
    preferred.role.activate('first start');
    expect(preferred.role.takeovers).toBe(0);
    // Stood down and active again with nobody else heard in between: still no takeover.
    preferred.role.standDown('keepalived: BACKUP');
    later();
    preferred.role.activate('keepalived: MASTER');
    expect(preferred.role.takeovers).toBe(0);
    // n2 was heard active meanwhile: this one is a takeover.
    preferred.role.standDown('keepalived: BACKUP');
    later();
    expect(preferred.active.heard({ node: 'n2', since: Date.now(), active: true })).toBe(true);
    later();
    preferred.role.activate('keepalived: MASTER');
    expect(preferred.role.takeovers).toBe(1);
    expect(preferred.active.name()).toBe('n1');

    // n2's ActiveDistributor names n1 (the preferred one) until told otherwise: its activation is a takeover.
    const backup = setup('n2');
    expect(backup.active.name()).toBe('n1');
    backup.role.activate('keepalived: MASTER');
    expect(backup.role.takeovers).toBe(1);
    expect(backup.active.name()).toBe('n2');
    expect(backup.role.lastTakeover).toEqual({ at: backup.role.since(), entries: 0, ownRemoved: 0 });
  });

  it.each(['GONE', 'ESTABLISHED'])('a probe answered (%s) after standing down changes nothing: the table is a replica again', async (answer) => {
    const table = new MemoryTable();
    const left = flow(7);
    table.put(left, { state: 'frozen', targetNode: 3, targetMac: mac(3) });
    // n3's answer held until the test gives it.
    let answerProbe: ((states: string[]) => void) | undefined;
    const { role, probes } = setup('n1', table, { probe: () => new Promise<string[]>((r) => (answerProbe = r)) });
    role.activate('keepalived: MASTER');
    await until('n3 asked about the entry left frozen', () => answerProbe !== undefined);
    expect(probes).toEqual([{ node: 'n3', flows: [connectionId(left)] }]);

    role.standDown('keepalived: BACKUP');
    answerProbe!([answer]);
    await settle();
    // Active, GONE would have removed it and ESTABLISHED given it back (forward/3): the replica keeps
    // it as the active one streams it.
    expect(entryOf(table, left)).toBe(`frozen/3/${mac(3)}`);
  });

  it('a table that cannot be read at activation leaves the node standing by, its replica still applied', async () => {
    const table = new UnreadableTable();
    const { role, active, peers } = setup('n1', table);
    n2Claims(active);
    const ch = inbound();
    role.replica('n2', replicaMsg({ session: SESSION, seq: 1, kind: 'snapshot', changes: [change(1, 3)] }), asChannel(ch));

    table.unreadable = true;
    expect(() => role.activate('keepalived: MASTER')).not.toThrow();
    expect(role.phase()).toBe('standby');
    expect(role.routeService()).toBeUndefined();
    expect(role.since()).toBe(0);
    expect(role.lastTakeover).toBeUndefined();
    expect(active.name()).toBe('n2'); // no claim made: the nodes keep sending their requests to n2
    expect(active.claimsActive('n1')).toBe(false);
    await settle();
    expect(peers.asked).toEqual([]); // nothing announced, no stream started
    expect(role.replication()).toEqual({ streams: [], replica: expect.objectContaining({ from: 'n2', session: SESSION, ended: false }) });

    // n2's session goes on, on the same link: the sink was not closed.
    role.replica('n2', replicaMsg({ session: SESSION, seq: 2, kind: 'changes', changes: [change(2, 3)] }), asChannel(ch));
    expect(ch.closed).toBe(false);
    expect(entryOf(table, flow(2))).toBe(`forward/3/${mac(3)}`);
    expect(role.replication().replica).toMatchObject({ from: 'n2', session: SESSION, seq: 2, ended: false });
    await until('the change acked', () => ch.of('replica-ack').some((a) => a.seq === 2));

    // Readable again: the next MASTER takes the table over.
    table.unreadable = false;
    role.activate('keepalived: MASTER');
    expect(role.phase()).toBe('active');
    expect(role.routeService()!.tableSize().entries).toBe(2);
  });
});

describe('distributor role: reconciling the replica with the nodes at a takeover', () => {
  const live = (f: FlowKey): Served => ({ flow: f, state: 'ESTABLISHED' });
  const closing = (f: FlowKey): Served => ({ flow: f, state: 'TIME_WAIT' });

  /** n2 takes over from n1 (dead: it never answers) over a replica short of the truth in every way a lost change can leave it. */
  function replicaShortOfTheTruth() {
    const table = new MemoryTable();
    const f = (i: number) => flow(20 + i);
    table.put(f(0), { state: 'forward', targetNode: 3, targetMac: mac(3) }); // right
    // f(1): missing, n3 serves it (the old active died before streaming its forward)
    table.put(f(2), { state: 'forward', targetNode: 3, targetMac: mac(3) }); // nobody serves it any more
    table.put(f(3), { state: 'forward', targetNode: 1, targetMac: mac(1) }); // names the dead old active: nobody can say
    table.put(f(4), { state: 'forward', targetNode: 3, targetMac: mac(3) }); // moved to n2 since: its own now
    table.put(f(5), { state: 'released', targetNode: 3, targetMac: mac(3) }); // closing on n3 (TIME_WAIT there)
    // f(6): missing, only a TIME_WAIT on n3: nothing to add
    table.put(f(7), { state: 'forward', targetNode: 1, targetMac: mac(1) }); // moved n1 → n3 since
    table.put(f(8), { state: 'frozen', targetNode: 3, targetMac: mac(3) }); // recovery's, not reconciliation's
    table.put(f(9), { state: 'forward', targetNode: 3, targetMac: mac(3) }); // live on n3, missed by its dump (no snapshot)
    const answers: Record<string, Served[]> = { n2: [live(f(4))], n3: [live(f(0)), live(f(1)), closing(f(5)), closing(f(6)), live(f(7)), live(f(8))] };
    return { table, f, answers };
  }

  it('adds what the replica lacks, points entries at the node serving the flow, drops what no node serves; frozen ones are recovery\'s', async () => {
    const { table, f, answers } = replicaShortOfTheTruth();
    const asked: string[] = [];
    const { role, probes, probeSays } = setup('n2', table, {
      served: async (n) => {
        asked.push(n);
        if (n === 'n1') throw new BatonError('E_PEER', 'n1 is dead', { node: n });
        return answers[n]!;
      },
    });
    // The exact lookup confirms f(2) is gone from n3; f(9) it finds (ESTABLISHED, the probe's default here).
    probeSays.set(connectionId(f(2)), 'GONE');
    role.activate('keepalived: MASTER');
    await until('the reconciliation counted', () => role.lastTakeover?.reconciled !== undefined);
    expect(asked.sort()).toEqual(['n1', 'n2', 'n3']);
    expect(entryOf(table, f(0))).toBe(`forward/3/${mac(3)}`);
    expect(entryOf(table, f(1))).toBe(`forward/3/${mac(3)}`);
    expect(table.get(f(2))).toBeUndefined();
    expect(entryOf(table, f(3))).toBe(`forward/1/${mac(1)}`);
    expect(table.get(f(4))).toBeUndefined();
    expect(entryOf(table, f(5))).toBe(`released/3/${mac(3)}`);
    expect(table.get(f(6))).toBeUndefined();
    expect(entryOf(table, f(7))).toBe(`forward/3/${mac(3)}`);
    expect(entryOf(table, f(9))).toBe(`forward/3/${mac(3)}`);
    // f(1) and f(7) pointed at n3, f(4) removed as n2's own, f(2) dropped.
    expect(role.lastTakeover?.reconciled).toBe(4);
    // The frozen one went to recovery (a probe of n3), which gave it back to n3; the two entries
    // n3's dump did not list were looked up one by one before any was dropped.
    await until('the frozen entry recovered', () => entryOf(table, f(8)) === `forward/3/${mac(3)}`);
    expect(probes).toContainEqual({ node: 'n3', flows: [connectionId(f(8))] });
    expect(probes).toContainEqual({ node: 'n3', flows: [connectionId(f(2)), connectionId(f(9))] });
    expect(probes).toHaveLength(2);
    expect(role.routeService()!.tableSize().entries).toBe(7);
  });

  it('a silent node other than the old distributor: entries are added and pointed, none dropped (it might serve them)', async () => {
    const { table, f, answers } = replicaShortOfTheTruth();
    const { role } = setup('n2', table, {
      served: async (n) => {
        if (n === 'n1' || n === 'n2') throw new BatonError('E_TIMEOUT', `${n} did not answer`, { node: n });
        return answers[n]!;
      },
    });
    role.activate('keepalived: MASTER');
    await until('the reconciliation counted', () => role.lastTakeover?.reconciled !== undefined);
    expect(entryOf(table, f(1))).toBe(`forward/3/${mac(3)}`);
    expect(entryOf(table, f(2))).toBe(`forward/3/${mac(3)}`);
    expect(entryOf(table, f(4))).toBe(`forward/3/${mac(3)}`);
    expect(role.lastTakeover?.reconciled).toBe(2);
  });

  it('an entry changed while the nodes were asked is left as it is; standing down meanwhile stops every change', async () => {
    const { table, f, answers } = replicaShortOfTheTruth();
    let release: (() => void) | undefined;
    const held = new Promise<void>((r) => (release = r));
    const { role, probeSays } = setup('n2', table, {
      served: async (n) => {
        if (n === 'n1') throw new BatonError('E_PEER', 'n1 is dead', { node: n });
        await held;
        return answers[n]!;
      },
    });
    // Even the exact lookup would say GONE (the socket closes just after): the changed record is what keeps it.
    probeSays.set(connectionId(f(2)), 'GONE');
    role.activate('keepalived: MASTER');
    // While n2 and n3 are asked, n3 releases f(2) (its application closed it just now): a new record.
    role.routeService()!.release('n3', f(2));
    await settle();
    release!();
    await until('the reconciliation counted', () => role.lastTakeover?.reconciled !== undefined);
    expect(entryOf(table, f(2))).toBe(`released/3/${mac(3)}`);

    const again = replicaShortOfTheTruth();
    let answer: (() => void) | undefined;
    const later = new Promise<void>((r) => (answer = r));
    const second = setup('n2', again.table, {
      served: async (n) => {
        await later;
        return again.answers[n] ?? [];
      },
    });
    second.role.activate('keepalived: MASTER');
    second.role.standDown('keepalived: BACKUP');
    const before = [...Array(10).keys()].map((i) => entryOf(again.table, again.f(i)));
    answer!();
    await settle();
    expect([...Array(10).keys()].map((i) => entryOf(again.table, again.f(i)))).toEqual(before);
    expect(second.role.lastTakeover?.reconciled).toBeUndefined();
  });
});

describe('distributor role: moving the DVIPA (refusals; the move itself: test/integration/ha/takeover.test.ts)', () => {
  it('refuses a move to a node that is not another distributor, from a standby, and without keepalived', async () => {
    const { role } = setup('n1');
    await expect(role.handOver('n2')).rejects.toThrow(/not the active distributor/);
    role.activate('the only distributor');
    await expect(role.handOver('n3')).rejects.toThrow(/not another of the distributors/);
    await expect(role.handOver('n1')).rejects.toThrow(/not another of the distributors/);
    await expect(role.handOver('n2')).rejects.toMatchObject({ code: 'E_HANDOFF_STATE', message: expect.stringMatching(/keepalived does not run here/) });
  });
});

describe('distributor role: announcements', () => {
  it('activation tells every other node, tick tells them again; standing down says so, and a standby\'s tick repeats that and attaches no stream', async () => {
    const { role, peers } = setup('n1');
    peers.unreachable.add('n3');
    role.activate('test');
    await settle();
    const active = { node: 'n1', active: true, since: role.since() };
    expect(peers.sentTo('n2', 'distributor')).toEqual([active]);
    expect(peers.asked).toContain('n3'); // tried, not reached: no throw, no unhandled rejection
    expect(peers.asked).not.toContain('n1');

    peers.unreachable.delete('n3');
    role.tick();
    await settle();
    expect(peers.sentTo('n2', 'distributor')).toEqual([active, active]);
    expect(peers.sentTo('n3', 'distributor')).toEqual([active]);

    // Standing down is said at once (the nodes stop sending requests here), and again each tick.
    const standby = { node: 'n1', active: false, since: 0 };
    role.standDown('test');
    await settle();
    expect(peers.sentTo('n2', 'distributor')).toEqual([active, active, standby]);
    expect(peers.sentTo('n3', 'distributor')).toEqual([active, standby]);
    const replicas = peers.sentTo('n2', 'replica').length;
    role.tick();
    await settle();
    expect(peers.sentTo('n2', 'distributor')).toEqual([active, active, standby, standby]);
    expect(peers.sentTo('n3', 'distributor')).toEqual([active, standby, standby]);
    expect(peers.sentTo('n2', 'replica')).toHaveLength(replicas);
    expect(role.replication().streams).toEqual([]);
  });

  it('an activation is later than any claim heard, even from a node whose clock runs ahead', async () => {
    const { role, active, peers } = setup('n1');
    const ahead = Date.now() + 60_000; // n2's clock a minute ahead of this one
    active.heard({ node: 'n2', since: ahead, active: true });
    expect(active.name()).toBe('n2');

    role.activate('keepalived: MASTER');
    expect(active.name()).toBe('n1');
    expect(active.isSelf()).toBe(true);
    expect(role.since()).toBeGreaterThan(ahead);
    await settle();
    const [said] = peers.sentTo('n3', 'distributor');
    expect(said).toEqual({ node: 'n1', active: true, since: role.since() });
    expect(said!.since as number).toBeGreaterThan(ahead);
    // n3, which heard both claims, sends its requests to n1 too.
    const n3 = new ActiveDistributor(config, 'n3');
    n3.heard({ node: 'n2', since: ahead, active: true });
    n3.heard(said as unknown as Announcement);
    expect(n3.name()).toBe('n1');
  });

  it('announces before it streams: on the backup\'s link `distributor` comes first, and a standby fed that link takes the stream', async () => {
    const { role, peers } = setup('n1');
    role.activate('keepalived: MASTER');
    await settle();
    const link = peers.links.get('n2')!;
    const types = () => link.sent.map((m) => m.type);
    expect(types()[0]).toBe('distributor');
    expect(types().indexOf('replica')).toBeGreaterThan(0);

    // A standby n2 reading that link in order: the announcement, then the stream, all taken.
    const table = new MemoryTable();
    const backup = setup('n2', table);
    const from = inbound();
    for (const m of link.sent) {
      if (m.type === 'distributor') backup.active.heard(m.body as unknown as Announcement);
      else if (m.type === 'replica') backup.role.replica('n1', replicaMsg(m.body as unknown as Body<'replica'>), asChannel(from));
    }
    expect(from.closed).toBe(false);
    expect(backup.role.replication().replica).toMatchObject({ from: 'n1', ended: false });

    // The same on the link that stays open through standing down and activating again.
    role.standDown('keepalived: BACKUP');
    await settle();
    const mark = link.sent.length;
    role.activate('keepalived: MASTER');
    await settle();
    expect(peers.links.get('n2')).toBe(link);
    const after = link.sent.slice(mark);
    expect(after[0]).toEqual({ type: 'distributor', body: { node: 'n1', active: true, since: role.since() } });
    expect(after.findIndex((m) => m.type === 'replica')).toBeGreaterThan(0);
  });
});

describe('distributor role: replication to the other distributor', () => {
  it('streams a snapshot to each other distributor, then every change made through the route service; acks shrink the lag', async () => {
    const table = new MemoryTable();
    table.put(flow(1), { state: 'forward', targetNode: 3, targetMac: mac(3) });
    table.put(flow(2), { state: 'released', targetNode: 2, targetMac: mac(2) });
    const { role, peers } = setup('n1', table);
    role.activate('test');
    await settle();

    const replica = () => peers.sentTo('n2', 'replica');
    expect(peers.sentTo('n3', 'replica')).toEqual([]); // n3 is no distributor
    const [first, end] = replica();
    expect(first).toMatchObject({ kind: 'snapshot', seq: 1, session: expect.stringMatching(/^[0-9a-f]{16}$/) });
    expect((first!.changes as unknown[]).length).toBe(2);
    expect(end).toEqual({ session: first!.session, seq: 2, kind: 'snapshot-end', changes: [], count: 2 });
    const session = first!.session as string;

    const service = role.routeService()!;
    service.freeze('n1', flow(3));
    service.forward('n1', flow(3), 'n3');
    await settle();
    const wire = { family: 4, clientAddress: '10.0.1.3', clientPort: 40003, vipAddress: '10.0.0.10', vipPort: 7000 };
    expect(replica()[2]).toEqual({
      session,
      seq: 3,
      kind: 'changes',
      changes: [
        { flow: wire, entry: { state: 'frozen', node: 0, mac: '00:00:00:00:00:00' } },
        { flow: wire, entry: { state: 'forward', node: 3, mac: mac(3) } },
      ],
    });
    expect(role.replication().streams).toMatchObject([{ backup: 'n2', session, sentSeq: 3, ackedSeq: 0, lagEntries: 4, snapshotting: false }]);

    const ack = (s: string, seq: number) => header('replica-ack', { session: s, seq }) as Message<'replica-ack'>;
    role.acked('n2', ack('ffffffffffffffff', 3)); // another session: ignored
    expect(role.replication().streams[0]).toMatchObject({ ackedSeq: 0, lagEntries: 4 });
    role.acked('n2', ack(session, 2));
    expect(role.replication().streams[0]).toMatchObject({ ackedSeq: 2, lagEntries: 2 });
    role.acked('n2', ack(session, 3));
    expect(role.replication().streams[0]).toMatchObject({ ackedSeq: 3, lagEntries: 0 });
    expect(role.replication().replica).toBeUndefined(); // active: no replica shown
  });

  it('a backup unreachable at activation, or whose link closed, gets a stream (a fresh snapshot) at the next tick', async () => {
    const { role, peers } = setup('n1');
    peers.unreachable.add('n2');
    role.activate('test');
    await settle();
    expect(role.replication().streams).toEqual([]);

    peers.unreachable.delete('n2');
    role.tick();
    await settle();
    const [stream] = role.replication().streams;
    expect(stream).toMatchObject({ backup: 'n2', sentSeq: 2 });

    // The link breaks: its stream ends with it, and the next tick starts another on a new link.
    peers.links.get('n2')!.close();
    expect(role.replication().streams).toEqual([]);
    role.tick();
    await settle();
    const [again] = role.replication().streams;
    expect(again).toMatchObject({ backup: 'n2', sentSeq: 2 });
    expect(again!.session).not.toBe(stream!.session);
    expect(peers.sentTo('n2', 'replica')[0]).toMatchObject({ session: again!.session, seq: 1, kind: 'snapshot' });
  });

  it('flapping between roles leaves no close listeners piling up on a backup link that stays open', async () => {
    const { role, peers } = setup('n1');
    let link: FakeChannel | undefined;
    for (let i = 0; i < 12; i++) {
      role.activate(`keepalived: MASTER (${i})`);
      await settle();
      link ??= peers.links.get('n2')!;
      expect(peers.links.get('n2'), `activation ${i}`).toBe(link);
      expect(link.closed).toBe(false);
      expect(role.replication().streams, `activation ${i}`).toHaveLength(1);
      expect(link.listenerCount('close'), `activation ${i}`).toBe(1);
      role.standDown(`keepalived: BACKUP (${i})`);
      expect(link.listenerCount('close'), `standing down ${i}`).toBeLessThanOrEqual(1);
    }
    expect(link!.listenerCount('close')).toBe(0);
  });
});

describe('distributor role: the active one\'s stream on a standby', () => {

  it('applies a snapshot from the other distributor, sweeps what it did not name, and acks', async () => {
    const table = new MemoryTable();
    table.put(flow(9), { state: 'forward', targetNode: 3, targetMac: mac(3) }); // stale: the active no longer has it
    const { role, active } = setup('n1', table);
    n2Claims(active);
    const ch = inbound();
    role.replica('n2', replicaMsg({ session: SESSION, seq: 1, kind: 'snapshot', changes: [change(1, 3), change(2, 1)] }), asChannel(ch));
    expect(entryOf(table, flow(1))).toBe(`forward/3/${mac(3)}`);
    expect(entryOf(table, flow(2))).toBe(`forward/1/${mac(1)}`);
    role.replica('n2', replicaMsg({ session: SESSION, seq: 2, kind: 'snapshot-end', changes: [], count: 2 }), asChannel(ch));
    await until('the snapshot acked', () => ch.of('replica-ack').length > 0);
    expect(ch.of('replica-ack')).toEqual([{ session: SESSION, seq: 2 }]);
    expect(table.get(flow(9))).toBeUndefined();
    expect(ch.closed).toBe(false);
    expect(role.replication().replica).toMatchObject({ from: 'n2', session: SESSION, seq: 2, synced: true, ended: false });

    role.replica('n2', replicaMsg({ session: SESSION, seq: 3, kind: 'changes', changes: [change(3, 3)] }), asChannel(ch));
    expect(entryOf(table, flow(3))).toBe(`forward/3/${mac(3)}`);
    await until('the change acked', () => ch.of('replica-ack').length > 1);
    expect(ch.of('replica-ack')[1]).toEqual({ session: SESSION, seq: 3 });

    // The link closes: the session ends with it, the table stays as it is.
    ch.close();
    expect(role.replication().replica).toMatchObject({ session: SESSION, ended: true });
    expect(entryOf(table, flow(3))).toBe(`forward/3/${mac(3)}`);
  });

  it('activation ends the session being applied: a stream from the old active does not outlive the takeover', () => {
    const table = new MemoryTable();
    const { role, active } = setup('n1', table);
    n2Claims(active);
    const ch = inbound();
    role.replica('n2', replicaMsg({ session: SESSION, seq: 1, kind: 'snapshot', changes: [change(1, 3)] }), asChannel(ch));
    expect(role.replication().replica).toMatchObject({ session: SESSION, ended: false });
    role.activate('keepalived: MASTER');
    expect(role.replication().replica).toBeUndefined(); // active: its table is no replica
    // Its link closed at once: the old active drops the stream even with no change to send (a
    // quiet table), and streams a fresh snapshot once this node stands by again.
    expect(ch.closed).toBe(true);
    role.standDown('keepalived: BACKUP');
    expect(role.replication().replica).toMatchObject({ session: SESSION, ended: true, synced: false });
    // n2 still claims to be active (split brain, or its claim not yet lapsed): the session is what refuses.
    expect(active.claimsActive('n2')).toBe(true);
    // Its next message continues a session that ended: refused, the link closed, nothing applied.
    role.replica('n2', replicaMsg({ session: SESSION, seq: 2, kind: 'changes', changes: [change(2, 3)] }), asChannel(ch));
    expect(ch.closed).toBe(true);
    expect(table.get(flow(2))).toBeUndefined();
  });

  it('refuses, and closes the link, a stream from a node that is no distributor, from itself, or while active', async () => {
    const table = new MemoryTable();
    const { role, active } = setup('n1', table);
    n2Claims(active);
    const snapshot = replicaMsg({ session: SESSION, seq: 1, kind: 'snapshot', changes: [change(1, 3)] });

    for (const from of ['n3', 'n1']) {
      const ch = inbound();
      role.replica(from, snapshot, asChannel(ch));
      expect(ch.closed, `from ${from}`).toBe(true);
      expect(table.map.size, `from ${from}`).toBe(0);
      expect(role.replication().replica).toBeUndefined();
    }

    role.activate('test');
    const ch = inbound();
    role.replica('n2', snapshot, asChannel(ch));
    expect(ch.closed).toBe(true);
    expect(table.map.size).toBe(0);
    await settle();
    expect(ch.of('replica-ack')).toEqual([]);

    // Standby again: the same stream is taken.
    role.standDown('test');
    const ok = inbound();
    role.replica('n2', snapshot, asChannel(ok));
    expect(ok.closed).toBe(false);
    expect(entryOf(table, flow(1))).toBe(`forward/3/${mac(3)}`);
  });

  it('refuses a stream from a distributor that does not claim to be active, or whose claim lapsed; takes it once the claim is heard', () => {
    let now = 1_700_000_000_000;
    const table = new MemoryTable();
    const { role, active } = setup('n1', table, { now: () => now });
    const snapshot = replicaMsg({ session: SESSION, seq: 1, kind: 'snapshot', changes: [change(1, 3)] });
    const refused = (why: string) => {
      const ch = inbound();
      role.replica('n2', snapshot, asChannel(ch));
      expect(ch.closed, why).toBe(true);
      expect(table.map.size, why).toBe(0);
      expect(role.replication().replica, why).toBeUndefined();
    };

    refused('never heard from n2');
    active.heard({ node: 'n2', since: 0, active: false });
    refused('n2 says it stands by');

    // Its claim heard: the same stream is taken.
    active.heard({ node: 'n2', since: now, active: true });
    const ch = inbound();
    role.replica('n2', snapshot, asChannel(ch));
    expect(ch.closed).toBe(false);
    expect(entryOf(table, flow(1))).toBe(`forward/3/${mac(3)}`);
    now += EXPIRY_MS - 1;
    role.replica('n2', replicaMsg({ session: SESSION, seq: 2, kind: 'changes', changes: [change(2, 3)] }), asChannel(ch));
    expect(ch.closed).toBe(false);
    expect(entryOf(table, flow(2))).toBe(`forward/3/${mac(3)}`);

    // n2 quiet past the expiry (announcements lost, or it died): its next message is refused.
    now += 2;
    expect(active.claimsActive('n2')).toBe(false);
    role.replica('n2', replicaMsg({ session: SESSION, seq: 3, kind: 'changes', changes: [change(3, 3)] }), asChannel(ch));
    expect(ch.closed).toBe(true);
    expect(table.get(flow(3))).toBeUndefined();
    expect(table.map.size).toBe(2);
    expect(role.replication().replica).toMatchObject({ from: 'n2', session: SESSION, seq: 2, ended: true });

    // Heard again: its new stream (a new link, a fresh snapshot) is taken.
    active.heard({ node: 'n2', since: 1_700_000_000_000, active: true });
    const again = inbound();
    role.replica('n2', replicaMsg({ session: 'fedcba9876543210', seq: 1, kind: 'snapshot', changes: [change(4, 3)] }), asChannel(again));
    expect(again.closed).toBe(false);
    expect(entryOf(table, flow(4))).toBe(`forward/3/${mac(3)}`);
    expect(role.replication().replica).toMatchObject({ from: 'n2', session: 'fedcba9876543210', seq: 1, ended: false });
  });

  it('a gap in the seq closes the link and applies nothing of the message', () => {
    const table = new MemoryTable();
    const { role, active } = setup('n1', table);
    n2Claims(active);
    const ch = inbound();
    role.replica('n2', replicaMsg({ session: SESSION, seq: 1, kind: 'snapshot', changes: [change(1, 3)] }), asChannel(ch));
    expect(ch.closed).toBe(false);
    role.replica('n2', replicaMsg({ session: SESSION, seq: 3, kind: 'snapshot', changes: [change(2, 3)] }), asChannel(ch));
    expect(ch.closed).toBe(true);
    expect(table.get(flow(2))).toBeUndefined();
    expect(role.replication().replica).toMatchObject({ session: SESSION, seq: 1, ended: true });
  });
});
