// Routing-table replication from the active distributor to a backup (controller/ha/replication.ts,
// replication-source.ts, replica-sink.ts): an in-memory table with the BPF map's walk semantics on
// both ends (test/helpers/fake-table.ts), the stream over two real Channels on a loopback TCP
// connection with the real replica and replica-ack messages. The backup's table must end equal to
// the active's, key by key, whatever the changes did during the snapshot; a backup changed behind
// its back is made equal again by its next snapshot; anything out of line in a session is refused
// and applies nothing; a backup that cannot keep up is dropped.
import { afterEach, describe, expect, it } from 'vitest';
import { connectionId, type FlowKey } from '../../../controller/flow.js';
import { createLogger } from '../../../controller/log.js';
import type { RouteEntry, RouteState } from '../../../controller/agent/table-layout.js';
import { Channel } from '../../../controller/transfer/channel.js';
import { Accepts, decodeMessage, type Message, MAX_REPLICA_CHANGES } from '../../../controller/transfer/messages.js';
import { MAX_HEADER_BYTES } from '../../../controller/transfer/framing.js';
import { ReplicaSink } from '../../../controller/ha/replica-sink.js';
import { replicaLinkOf, replicating, type ReplicaLink } from '../../../controller/ha/replication.js';
import { ReplicationSource } from '../../../controller/ha/replication-source.js';
import { useTcpPairs } from '../../helpers/loopback.js';
import { MemoryTable } from '../../helpers/fake-table.js';
import { until } from '../../helpers/wait.js';

const log = createLogger({}, 'silent');
const tcpPair = useTcpPairs();

/** Flow i: IPv4 mostly, every seventh IPv6 (longer JSON: the byte bound of a message matters). */
function flow(i: number): FlowKey {
  if (i % 7 === 0) return { family: 6, clientAddress: `fd00:98::${(i + 1).toString(16)}`, clientPort: 1024 + (i % 60000), vipAddress: 'fd00:10::10', vipPort: 7000 };
  return { family: 4, clientAddress: `10.98.${(i >> 8) & 255}.${i & 255}`, clientPort: 1024 + (i >> 16), vipAddress: '10.203.0.10', vipPort: 7000 };
}
const TARGETS = [2, 3, 4].map((node) => ({ node, mac: `02:00:00:00:00:0${node}` }));

/** A small seeded generator (mulberry32): the same operations on every run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Ops = ReturnType<typeof replicating>;

/** One random table operation on one of the flows [from, from + span). */
function randomOp(ops: Ops, rnd: () => number, from: number, span: number): void {
  const f = flow(from + Math.floor(rnd() * span));
  const t = TARGETS[Math.floor(rnd() * TARGETS.length)]!;
  const r = rnd();
  if (r < 0.2) ops.freeze(f, rnd() < 0.5 ? undefined : t);
  else if (r < 0.5) ops.forward(f, t);
  else if (r < 0.65) ops.release(f, t);
  else if (r < 0.8) ops.finish(f, t);
  else ops.remove(f);
}

const turn = () => new Promise<void>((r) => setImmediate(r));

// ---- the two ends over real channels -------------------------------------------------------------

const open: Array<{ close(): void }> = [];
afterEach(() => {
  for (const o of open.splice(0)) o.close();
});

/** The active's outbound link to the backup and the backup's inbound one, each wired as batond would be. */
async function connect(source: ReplicationSource, sink: ReplicaSink) {
  const { client, server } = await tcpPair();
  const active = new Channel(client, Accepts.peerReplies, log);
  const backup = new Channel(server, Accepts.agentFromPeer, log);
  open.push(active, backup);
  const link = replicaLinkOf(active);
  const refusals: string[] = [];
  let acks = 0;
  let lastSession: string | undefined;
  backup.on('message', (d) => {
    if (d.msg.type !== 'replica') return;
    const msg = d.msg;
    lastSession = msg.session;
    const verdict = sink.receive('n1', msg, (seq) => backup.send('replica-ack', { session: msg.session, seq }));
    if (!verdict.ok) {
      refusals.push(verdict.reason);
      backup.close();
    }
  });
  backup.on('close', () => sink.detach('n1', lastSession));
  active.on('message', (d) => {
    if (d.msg.type !== 'replica-ack') return;
    acks++;
    source.onAck('n2', d.msg.session, d.msg.seq);
  });
  active.on('close', () => source.detach('n2', link));
  return { active, backup, server, link, refusals, acks: () => acks, attach: () => source.attach('n2', link) };
}

function ends(a: MemoryTable, b: MemoryTable, opts: ConstructorParameters<typeof ReplicationSource>[2] = {}) {
  const source = new ReplicationSource(a, log, opts);
  const sink = new ReplicaSink(b, log);
  open.push(source, sink);
  const ops = replicating(a, (f, e) => source.change(f, e));
  return { source, sink, ops };
}

/** The stream is idle and acknowledged up to its last message, the backup synced. */
function settled(source: ReplicationSource, sink: ReplicaSink): boolean {
  const s = source.status()[0];
  return s !== undefined && !s.snapshotting && s.ackedSeq === s.sentSeq && sink.status()?.synced === true;
}
const describeState = (source: ReplicationSource, sink: ReplicaSink) => () => `settled stream: source ${JSON.stringify(source.status())}, sink ${JSON.stringify(sink.status())}`;

describe('replication: the backup ends equal to the active', () => {
  it('10,000 random changes on 2,000 flows while a 5,000-entry snapshot is under way: equal key by key after the last ack', async () => {
    const a = new MemoryTable();
    for (let i = 0; i < 5000; i++) a.forward(flow(i), TARGETS[i % 3]!);
    const b = new MemoryTable();
    // The backup starts with entries the active does not have, and others with another value.
    for (let i = 9000; i < 9200; i++) b.forward(flow(i), TARGETS[0]!);
    for (let i = 0; i < 100; i++) b.freeze(flow(i));
    // Small pages: the snapshot takes ~40 turns, and the changes run through all of them.
    const { source, sink, ops } = ends(a, b, { snapshotPage: 128 });
    const c = await connect(source, sink);
    c.attach();
    const rnd = prng(20240611);
    let duringSnapshot = 0;
    for (let done = 0; done < 10_000; ) {
      for (let k = 0; k < 50 && done < 10_000; k++, done++) {
        // Half the flows are in the table being walked (4000-4999), half are new.
        randomOp(ops, rnd, 4000, 2000);
        if (source.status()[0]?.snapshotting) duringSnapshot++;
      }
      await turn();
    }
    await until(describeState(source, sink), () => settled(source, sink));
    expect(duringSnapshot, 'changes made while the snapshot was being walked').toBeGreaterThan(1000);
    expect(c.refusals).toEqual([]);
    expect(b.view()).toEqual(a.view());
    expect(sink.counters.swept).toBeGreaterThanOrEqual(200);
    expect(source.status()[0]!.lagEntries).toBe(0);
  });

  it('a backup whose table changed behind its back while disconnected: the next session\'s snapshot makes it equal again, stale keys swept', async () => {
    const a = new MemoryTable();
    for (let i = 0; i < 3000; i++) a.forward(flow(i), TARGETS[i % 3]!);
    const b = new MemoryTable();
    const { source, sink, ops } = ends(a, b);
    const first = await connect(source, sink);
    const firstSession = first.attach();
    await until(describeState(source, sink), () => settled(source, sink));
    expect(b.view()).toEqual(a.view());

    first.active.close();
    await until('both ends to notice the link closed', () => source.status().length === 0 && sink.status()?.ended === true);
    // Behind the backup's back: entries added, changed and removed there; changes on the active it never hears of.
    for (let i = 5000; i < 5500; i++) b.forward(flow(i), TARGETS[1]!);
    for (let i = 0; i < 200; i++) b.freeze(flow(i));
    for (let i = 200; i < 400; i++) b.remove(flow(i));
    const rnd = prng(7);
    for (let k = 0; k < 3000; k++) randomOp(ops, rnd, 2000, 2000);
    expect(b.view()).not.toEqual(a.view());

    const second = await connect(source, sink);
    const secondSession = second.attach();
    expect(secondSession).not.toBe(firstSession);
    await until(describeState(source, sink), () => settled(source, sink) && sink.status()!.session === secondSession);
    expect(second.refusals).toEqual([]);
    expect(b.view()).toEqual(a.view());
    expect(sink.counters.swept).toBeGreaterThanOrEqual(500);
  });

  it('a walk whose cursor is removed between two pages resumes from an earlier key of its page, not from the first key', async () => {
    const a = new MemoryTable();
    for (let i = 0; i < 1000; i++) a.forward(flow(i), TARGETS[0]!);
    const b = new MemoryTable();
    const { source, sink, ops } = ends(a, b, { snapshotPage: 10 });
    const c = await connect(source, sink);
    // After each page, the flows it ended with go: the next page must not start over.
    const read = a.entriesAfter.bind(a);
    a.entriesAfter = (prev, max) => {
      const page = read(prev, max);
      const tail = page.entries.slice(-3).map(([f]) => f);
      setImmediate(() => tail.forEach((f) => ops.remove(f)));
      return page;
    };
    c.attach();
    await until(describeState(source, sink), () => settled(source, sink));
    expect(b.view()).toEqual(a.view());
    // From the first key again after each page would read ~1000²/20 keys.
    expect(a.keysRead).toBeLessThan(2 * 1000);
  });
});

describe('replication: messages out of line are refused and apply nothing', () => {
  const change = (i: number, state: RouteState | null = 'forward') => ({ flow: flow(i), entry: state && { state, node: 2, mac: '02:00:00:00:00:02' } });
  const msg = (session: string, seq: number, kind: Message<'replica'>['kind'], changes: ReturnType<typeof change>[], count?: number): Message<'replica'> => ({
    v: 1,
    type: 'replica',
    session,
    seq,
    kind,
    changes,
    ...(count === undefined ? {} : { count }),
  });
  const S = 'aaaaaaaaaaaaaaaa';
  const T = 'bbbbbbbbbbbbbbbb';
  const U = 'cccccccccccccccc';

  function sinkWithAcks() {
    const table = new MemoryTable();
    const sink = new ReplicaSink(table, log, { ackEveryMs: 5 });
    open.push(sink);
    const acks: number[] = [];
    const recv = (m: Message<'replica'>, from = 'n1') => sink.receive(from, m, (seq) => acks.push(seq));
    return { table, sink, acks, recv };
  }

  it('a changes message (or a later seq) before any snapshot, a gap, a repeat, a stray session: refused, nothing applied', async () => {
    const { table, sink, recv } = sinkWithAcks();
    expect(recv(msg(S, 1, 'changes', [change(1)]))).toEqual({ ok: false, reason: 'unknown-session' });
    expect(recv(msg(S, 2, 'snapshot', [change(1)]))).toEqual({ ok: false, reason: 'unknown-session' });
    expect(table.map.size).toBe(0);

    expect(recv(msg(S, 1, 'snapshot', [change(1), change(2)]))).toEqual({ ok: true });
    expect(recv(msg(S, 2, 'changes', [change(3)]))).toEqual({ ok: true });
    const before = table.view();
    // A repeat (seq 2 again, with another value) and a gap (seq 4): nothing of either applied.
    expect(recv(msg(S, 2, 'changes', [change(3, 'frozen'), change(4)]))).toEqual({ ok: false, reason: 'repeat' });
    expect(table.view()).toEqual(before);
    // The session is over: even the seq that would have come next is refused.
    expect(recv(msg(S, 3, 'changes', [change(5)]))).toEqual({ ok: false, reason: 'unknown-session' });
    expect(table.view()).toEqual(before);

    expect(recv(msg(T, 1, 'snapshot', [change(1)]))).toEqual({ ok: true });
    expect(recv(msg(T, 3, 'changes', [change(6)]))).toEqual({ ok: false, reason: 'gap' });
    expect(table.get(flow(6))).toBeUndefined();

    expect(recv(msg(U, 1, 'snapshot', [change(1)]))).toEqual({ ok: true });
    expect(recv(msg(U, 2, 'snapshot-end', [], 1))).toEqual({ ok: true });
    await until('the sweep', () => sink.status()!.synced);
    // A message of another session, and one of this session from another node: the current session goes on.
    expect(recv(msg(T, 2, 'changes', [change(7)]))).toEqual({ ok: false, reason: 'unknown-session' });
    expect(recv(msg(U, 3, 'changes', [change(8)]), 'n3')).toEqual({ ok: false, reason: 'unknown-session' });
    expect(table.get(flow(7))).toBeUndefined();
    expect(table.get(flow(8))).toBeUndefined();
    expect(recv(msg(U, 3, 'changes', [change(9)]))).toEqual({ ok: true });
    expect(table.get(flow(9))?.state).toBe('forward');
    expect(sink.counters.refused).toMatchObject({ 'unknown-session': 5, repeat: 1, gap: 1 });
  });

  it('a snapshot-end with changes, without its count, with a count not the pages\' entries; a snapshot page after it: refused', async () => {
    const { table, sink, recv } = sinkWithAcks();
    expect(recv(msg(S, 1, 'snapshot', [change(1), change(2)]))).toEqual({ ok: true });
    expect(recv(msg(S, 2, 'snapshot-end', [change(3)], 2))).toEqual({ ok: false, reason: 'malformed' });
    expect(table.get(flow(3))).toBeUndefined();
    expect(recv(msg(T, 1, 'snapshot', [change(1)], 1))).toEqual({ ok: false, reason: 'malformed' });
    expect(recv(msg(T, 1, 'snapshot', [change(1), change(2)]))).toEqual({ ok: true });
    expect(recv(msg(T, 2, 'snapshot-end', []))).toEqual({ ok: false, reason: 'malformed' });
    expect(recv(msg(U, 1, 'snapshot', [change(1), change(2)]))).toEqual({ ok: true });
    expect(recv(msg(U, 2, 'snapshot-end', [], 3))).toEqual({ ok: false, reason: 'count-mismatch' });
    expect(sink.status()).toMatchObject({ synced: false, ended: true });
    const V = 'dddddddddddddddd';
    expect(recv(msg(V, 1, 'snapshot', [change(1)]))).toEqual({ ok: true });
    expect(recv(msg(V, 2, 'snapshot-end', [], 1))).toEqual({ ok: true });
    expect(recv(msg(V, 3, 'snapshot', [change(4)]))).toEqual({ ok: false, reason: 'out-of-order' });
    expect(table.get(flow(4))).toBeUndefined();
    expect(sink.counters.refused).toMatchObject({ malformed: 3, 'count-mismatch': 1, 'out-of-order': 1 });
  });

  it('the schemas refuse what no source sends: a session that is not 16 hex digits, seq 0 or beyond 2^53, more than 1024 changes, an unknown state, a field too many', () => {
    const good = { v: 1, type: 'replica', session: S, seq: 1, kind: 'snapshot', changes: [change(1), change(2, null)] };
    const decode = (header: Record<string, unknown>) => () => decodeMessage({ header, blobs: [] }, Accepts.agentFromPeer);
    expect(decode(good)().msg).toMatchObject({ type: 'replica', seq: 1 });
    expect(decode({ ...good, session: 'AAAAAAAAAAAAAAAA' })).toThrow(/invalid replica message/);
    expect(decode({ ...good, seq: 0 })).toThrow(/invalid replica message/);
    expect(decode({ ...good, seq: 2 ** 53 })).toThrow(/invalid replica message/);
    expect(decode({ ...good, changes: Array.from({ length: MAX_REPLICA_CHANGES + 1 }, (_, i) => change(i)) })).toThrow(/invalid replica message/);
    expect(decode({ ...good, changes: [{ flow: flow(1), entry: { state: 'gone', node: 2, mac: '02:00:00:00:00:02' } }] })).toThrow(/invalid replica message/);
    expect(decode({ ...good, extra: 1 })).toThrow(/invalid replica message/);
    // Each end accepts only its own direction.
    expect(decode(good)).not.toThrow();
    expect(() => decodeMessage({ header: good, blobs: [] }, Accepts.peerReplies)).toThrow(/unexpected message type/);
    expect(() => decodeMessage({ header: { v: 1, type: 'replica-ack', session: S, seq: 3 }, blobs: [] }, Accepts.peerReplies)).not.toThrow();
    expect(() => decodeMessage({ header: { v: 1, type: 'distributor', node: 'n1', active: true, since: Date.now() }, blobs: [] }, Accepts.agentFromPeer)).not.toThrow();
  });

  it('a message of the longest flows fits a frame header: 1024 IPv6 changes go as several messages, each under 64 KiB', async () => {
    const a = new MemoryTable();
    const long = (i: number): FlowKey => ({ family: 6, clientAddress: `ffff:ffff:ffff:ffff:ffff:ffff:ffff:${(0x1000 + i).toString(16)}`, clientPort: 65535, vipAddress: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', vipPort: 65535 });
    for (let i = 0; i < 1024; i++) a.put(long(i), { state: 'finished', targetNode: 0xffffffff, targetMac: '02:ff:ff:ff:ff:ff' });
    const sent: Array<Parameters<ReplicaLink['send']>[1]> = [];
    const link: ReplicaLink = { send: (_t, body) => (sent.push(body), true), writableLength: 0, close: () => undefined };
    const source = new ReplicationSource(a, log);
    open.push(source);
    source.attach('n2', link);
    await until('the snapshot', () => source.status()[0]?.snapshotting === false);
    expect(sent.length).toBeGreaterThan(2);
    for (const body of sent) expect(JSON.stringify({ v: 1, type: 'replica', ...body }).length).toBeLessThanOrEqual(MAX_HEADER_BYTES);
    expect(sent.at(-1)).toMatchObject({ kind: 'snapshot-end', count: 1024 });
  });
});

describe('replication: acks, lag and a backup that cannot keep up', () => {
  it('acks are bounded in number: 10,000 changes sent one per turn are acknowledged by a few dozen acks, not one per message', async () => {
    const a = new MemoryTable();
    const { source, sink, ops } = ends(a, new MemoryTable());
    const c = await connect(source, sink);
    c.attach();
    await until(describeState(source, sink), () => settled(source, sink));
    const acksBefore = c.acks();
    const messagesBefore = source.counters.messagesSent;
    const started = Date.now();
    const rnd = prng(3);
    for (let k = 0; k < 10_000; k++) {
      randomOp(ops, rnd, 0, 2000);
      await turn();
    }
    await until(describeState(source, sink), () => settled(source, sink));
    const elapsed = Date.now() - started;
    const acks = c.acks() - acksBefore;
    const messages = source.counters.messagesSent - messagesBefore;
    console.log(`10,000 changes in ${elapsed} ms: ${messages} messages, ${acks} acks`);
    expect(messages).toBeGreaterThan(1000);
    // One every 50 ms or 1024 entries, and the last.
    expect(acks).toBeLessThanOrEqual(Math.ceil(elapsed / 50) + Math.ceil(10_000 / 1024) + 2);
    expect(acks).toBeGreaterThanOrEqual(1);
  });

  it('lag counts the entries sent and not yet acknowledged, bounds the snapshot in flight, and drops to 0 once the backup reads again', async () => {
    const a = new MemoryTable();
    for (let i = 0; i < 10_000; i++) a.forward(flow(i), TARGETS[1]!);
    const { source, sink, ops } = ends(a, new MemoryTable());
    const c = await connect(source, sink);
    c.server.pause(); // the backup reads nothing: no ack comes
    c.attach();
    await new Promise((r) => setTimeout(r, 100));
    // The snapshot waits for acks: at most its window (4096 entries) is ever unacknowledged.
    const waiting = source.status()[0]!;
    expect(waiting.snapshotting).toBe(true);
    expect(waiting.lagEntries).toBeGreaterThan(0);
    expect(waiting.lagEntries).toBeLessThanOrEqual(4096);
    c.server.resume();
    await until(describeState(source, sink), () => settled(source, sink));
    expect(source.status()[0]!.lagEntries).toBe(0);

    c.server.pause();
    for (let i = 0; i < 500; i++) ops.remove(flow(i));
    await turn();
    expect(source.status()[0]).toMatchObject({ lagEntries: 500, snapshotting: false });
    c.server.resume();
    await until(describeState(source, sink), () => settled(source, sink));
    expect(source.status()[0]!.lagEntries).toBe(0);
    expect(sink.status()).toMatchObject({ synced: true, entriesApplied: 10_500 });
  });

  it('a backup that stops reading is dropped once its link holds more than the bound: link closed, counted, not attached any more', async () => {
    const a = new MemoryTable();
    for (let i = 0; i < 2000; i++) a.forward(flow(i), TARGETS[1]!);
    const { source, sink, ops } = ends(a, new MemoryTable(), { maxBufferedBytes: 1024 * 1024 });
    const c = await connect(source, sink);
    c.server.pause();
    c.attach();
    // Changes until the kernel's buffers are full and a MiB more waits in the process.
    const rnd = prng(11);
    for (let k = 0; k < 400 && source.status().length > 0; k++) {
      for (let j = 0; j < 2000; j++) randomOp(ops, rnd, 0, 2000);
      await turn();
    }
    expect(source.status()).toEqual([]);
    expect(source.counters.dropped.backpressure).toBe(1);
    expect(c.active.isClosed).toBe(true);
  });

  it('a snapshot the backup does not read for the stall bound is dropped; an ack of a seq never sent drops the stream too', async () => {
    const a = new MemoryTable();
    for (let i = 0; i < 100; i++) a.forward(flow(i), TARGETS[1]!);
    let closedWith: Error | undefined;
    const stuck: ReplicaLink = { send: () => true, writableLength: 2 * 1024 * 1024, close: (err) => (closedWith = err) };
    const source = new ReplicationSource(a, log, { snapshotPage: 10, stallMs: 50 });
    open.push(source);
    source.attach('n2', stuck);
    await until('the stall', () => source.status().length === 0, 2000);
    expect(source.counters.dropped.stalled).toBe(1);
    expect(closedWith?.message).toMatch(/dropped \(stalled\)/);

    const fine: ReplicaLink = { send: () => true, writableLength: 0, close: (err) => (closedWith = err) };
    const session = source.attach('n2', fine);
    expect(source.onAck('n2', 'ffffffffffffffff', 1)).toBe(false);
    expect(source.status()).toHaveLength(1);
    expect(source.onAck('n2', session, 1_000_000)).toBe(false);
    expect(source.status()).toEqual([]);
    expect(source.counters.dropped['bad-ack']).toBe(1);
    expect(closedWith?.message).toMatch(/dropped \(bad-ack\)/);
  });
});

describe('replicating(): every write reported as the entry now is', () => {
  it('reports the value read back after each write (release and finish keep the counters), undefined after a remove, nothing for a write that threw or removed nothing', () => {
    const a = new MemoryTable();
    const seen: Array<[string, RouteEntry | undefined]> = [];
    const ops = replicating(a, (f, e) => seen.push([connectionId(f), e]));
    const f = flow(1);
    ops.forward(f, TARGETS[0]!);
    a.map.get(connectionId(f))!.entry.packets = 42n;
    ops.release(f, TARGETS[0]!);
    ops.finish(f, TARGETS[1]!);
    expect(ops.remove(f)).toBe(true);
    expect(ops.remove(f)).toBe(false);
    const failing = replicating({ ...a, get: a.get.bind(a), entries: a.entries.bind(a), entriesAfter: a.entriesAfter.bind(a), freeze: () => { throw new Error('routing table full'); }, forward: a.forward.bind(a), release: a.release.bind(a), finish: a.finish.bind(a), remove: a.remove.bind(a) }, (fl, e) => seen.push([connectionId(fl), e]));
    expect(() => failing.freeze(f)).toThrow(/full/);
    expect(seen.map(([, e]) => e && `${e.state}/${e.targetNode}/${e.packets}`)).toEqual(['forward/2/0', 'released/2/42', 'finished/3/42', undefined]);
  });

  it('reads nothing back while no backup listens (wanted() false), and reports again once one does', () => {
    const a = new MemoryTable();
    let reads = 0;
    const counted = { ...a, get: (k: FlowKey) => (reads++, a.get(k)), entries: a.entries.bind(a), entriesAfter: a.entriesAfter.bind(a), freeze: a.freeze.bind(a), forward: a.forward.bind(a), release: a.release.bind(a), finish: a.finish.bind(a), remove: a.remove.bind(a) };
    const seen: string[] = [];
    let listening = false;
    const ops = replicating(counted, (f, e) => seen.push(`${connectionId(f)} ${e?.state}`), undefined, () => listening);
    const f = flow(1);
    ops.freeze(f);
    ops.forward(f, TARGETS[0]!);
    expect([reads, seen.length]).toEqual([0, 0]);
    listening = true;
    ops.release(f, TARGETS[0]!);
    expect(reads).toBe(1);
    expect(seen).toEqual([`${connectionId(f)} released`]);
    expect(a.get(f)?.state).toBe('released');
  });
});
