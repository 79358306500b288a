// A backup distributor's side of replication (the model and its bounds: replication.ts): checks
// each message of the active's stream continues its session without a gap, applies it to the local
// map, sweeps what the snapshot did not name, and acknowledges. One session at a time.
import { BatonError, isBatonError } from '../errors.js';
import { connectionId, type FlowKey } from '../flow.js';
import { errorText, logSparsely } from '../input.js';
import type { Logger } from '../log.js';
import type { RoutingTable } from '../agent/routing-table.js';
import type { Message, ReplicaChange } from '../transfer/messages.js';
import { ACK_EVERY_ENTRIES, ACK_EVERY_MS, MAX_WALK_RESTARTS, nextTurn, resumeAfter, SNAPSHOT_PAGE } from './replication.js';

/** What a sink needs of its table: the backup's own pinned map (RoutingTable). */
export type ReplicaTable = Pick<RoutingTable, 'put' | 'remove' | 'keysAfter' | 'get' | 'cursorOf'>;

export const REPLICA_REFUSALS = ['unknown-session', 'gap', 'repeat', 'out-of-order', 'malformed', 'count-mismatch'] as const;
/**
 * Why a replica message was refused (nothing of it applied; the caller closes the link and the
 * active re-snapshots at its next attach): a session this sink does not hold that does not start
 * with seq 1 snapshot (a changes message before any snapshot, a stray or ended session); a seq
 * beyond the next (a message lost) or at or before the last (a repeat); a snapshot page after
 * snapshot-end or a second snapshot-end; a snapshot-end with changes or without its count, a
 * count on another kind; a snapshot-end whose count is not the entries its pages carried.
 */
export type ReplicaRefusal = (typeof REPLICA_REFUSALS)[number];
export const WRITE_FAILURES = ['full', 'invalid', 'other'] as const;
export type WriteFailure = (typeof WRITE_FAILURES)[number];

export type ReplicaVerdict = { ok: true } | { ok: false; reason: ReplicaRefusal };

export interface SinkStatus {
  from: string;
  session: string;
  /** The last seq applied. */
  seq: number;
  /** The snapshot is complete: its sweep done, the table equal to the active's as of the last ack. */
  synced: boolean;
  /** ms since the epoch. */
  lastAppliedAt: number;
  /** Entries applied in this session (snapshot and changes). */
  entriesApplied: number;
  /** The session's link closed or a message of it was refused: nothing more applies to it. */
  ended: boolean;
}

export interface SinkCounters {
  messagesApplied: number;
  entriesApplied: number;
  acksSent: number;
  swept: number;
  snapshotsCompleted: number;
  refused: Record<ReplicaRefusal, number>;
  writeFailures: Record<WriteFailure, number>;
  /** Sweeps that could not finish (the map unreadable, or a walk that kept restarting): stale entries may remain until the next snapshot. */
  sweepsFailed: number;
}

interface SinkSession {
  from: string;
  session: string;
  seq: number;
  /** snapshot: pages arriving; sweeping: snapshot-end came, unseen entries being removed; synced; unsynced: the sweep failed, the stream goes on. */
  phase: 'snapshot' | 'sweeping' | 'synced' | 'unsynced';
  /** Flows named since the session began (snapshot pages and changes), until the sweep is done. */
  seen: Set<string> | undefined;
  snapshotEntries: number;
  entriesApplied: number;
  startedAt: number;
  lastAppliedAt: number;
  ack: (seq: number) => void;
  ackedSeq: number;
  unackedEntries: number;
  ackTimer: NodeJS.Timeout | undefined;
  ended: boolean;
}

export interface SinkOptions {
  ackEveryMs?: number;
  ackEveryEntries?: number;
  sweepPage?: number;
}

/** A backup distributor's side: applies the active's stream to the local map. One session at a time. */
export class ReplicaSink {
  private current: SinkSession | undefined;
  private readonly ackEveryMs: number;
  private readonly ackEveryEntries: number;
  private readonly sweepPage: number;
  readonly counters: SinkCounters = {
    messagesApplied: 0,
    entriesApplied: 0,
    acksSent: 0,
    swept: 0,
    snapshotsCompleted: 0,
    refused: Object.fromEntries(REPLICA_REFUSALS.map((r) => [r, 0])) as Record<ReplicaRefusal, number>,
    writeFailures: Object.fromEntries(WRITE_FAILURES.map((r) => [r, 0])) as Record<WriteFailure, number>,
    sweepsFailed: 0,
  };

  constructor(
    private readonly table: ReplicaTable,
    private readonly log: Logger,
    opts: SinkOptions = {},
  ) {
    this.ackEveryMs = opts.ackEveryMs ?? ACK_EVERY_MS;
    this.ackEveryEntries = opts.ackEveryEntries ?? ACK_EVERY_ENTRIES;
    this.sweepPage = opts.sweepPage ?? SNAPSHOT_PAGE;
  }

  /**
   * A replica message from the node `from` (the caller checked it may send one: the active
   * distributor), with the way to acknowledge on its link. Checked whole before anything of it is
   * applied. Refused: the caller closes the link; the active re-snapshots on its next attach.
   */
  receive(from: string, msg: Message<'replica'>, ack: (seq: number) => void): ReplicaVerdict {
    const refusal = this.check(from, msg);
    if (refusal) return this.refuse(from, msg, refusal);
    let s = this.current!;
    if (msg.seq === 1) s = this.begin(from, msg, ack);
    s.seq = msg.seq;
    s.ack = ack;
    if (msg.kind === 'snapshot') s.snapshotEntries += msg.changes.length;
    for (const c of msg.changes) this.apply(s, c);
    s.entriesApplied += msg.changes.length;
    s.lastAppliedAt = Date.now();
    s.unackedEntries += msg.changes.length;
    this.counters.messagesApplied++;
    this.counters.entriesApplied += msg.changes.length;
    if (msg.kind === 'snapshot-end') {
      s.phase = 'sweeping';
      this.sweep(s).catch((err: unknown) => this.log.error({ from, session: s.session, err: errorText(err) }, 'replica sweep failed unexpectedly'));
    } else this.scheduleAck(s);
    return { ok: true };
  }

  /**
   * The link from `from` closed: its session ends, nothing more applies to it (the table stays as
   * it is). Given the session that link carried (the last one seen on it), only that one: the same
   * node's next link may have begun a new session before the old link's close is noticed.
   */
  detach(from: string, session?: string): void {
    const s = this.current;
    if (s && !s.ended && s.from === from && (session === undefined || s.session === session)) this.end(s);
  }

  status(): SinkStatus | undefined {
    const s = this.current;
    if (!s) return undefined;
    return { from: s.from, session: s.session, seq: s.seq, synced: s.phase === 'synced', lastAppliedAt: s.lastAppliedAt, entriesApplied: s.entriesApplied, ended: s.ended };
  }

  /** Ends the session, whichever it is (batond stopping). */
  close(): void {
    if (this.current && !this.current.ended) this.end(this.current);
  }

  /** Why msg cannot apply, or undefined. */
  private check(from: string, msg: Message<'replica'>): ReplicaRefusal | undefined {
    const s = this.current;
    const fresh = msg.seq === 1 && msg.kind === 'snapshot';
    const known = s !== undefined && !s.ended && s.session === msg.session && s.from === from;
    if (!known && !fresh) return 'unknown-session';
    if ((msg.kind === 'snapshot-end') !== (msg.count !== undefined)) return 'malformed';
    if (msg.kind === 'snapshot-end' && msg.changes.length > 0) return 'malformed';
    if (!known) return undefined; // a new session, starting as it must
    if (msg.seq <= s.seq) return 'repeat';
    if (msg.seq > s.seq + 1) return 'gap';
    if (msg.kind !== 'changes' && s.phase !== 'snapshot') return 'out-of-order';
    // Every page arrived, in order (seq): a count that differs means the two ends disagree on what was sent.
    if (msg.kind === 'snapshot-end' && msg.count !== s.snapshotEntries) return 'count-mismatch';
    return undefined;
  }

  private begin(from: string, msg: Message<'replica'>, ack: (seq: number) => void): SinkSession {
    const previous = this.current;
    if (previous) this.end(previous);
    const now = Date.now();
    const s: SinkSession = {
      from,
      session: msg.session,
      seq: 0,
      phase: 'snapshot',
      seen: new Set(),
      snapshotEntries: 0,
      entriesApplied: 0,
      startedAt: now,
      lastAppliedAt: now,
      ack,
      ackedSeq: 0,
      unackedEntries: 0,
      ackTimer: undefined,
      ended: false,
    };
    this.current = s;
    this.log.info({ from, session: msg.session, previous: previous?.session }, 'replica session started: snapshot arriving');
    return s;
  }

  private end(s: SinkSession): void {
    s.ended = true;
    if (s.phase !== 'synced') s.phase = 'unsynced';
    s.seen = undefined;
    if (s.ackTimer) clearTimeout(s.ackTimer);
    s.ackTimer = undefined;
  }

  private refuse(from: string, msg: Message<'replica'>, reason: ReplicaRefusal): ReplicaVerdict {
    const s = this.current;
    const inSession = s !== undefined && !s.ended && s.session === msg.session && s.from === from;
    const n = ++this.counters.refused[reason];
    if (logSparsely(n)) {
      this.log.warn({ from, session: msg.session, seq: msg.seq, kind: msg.kind, reason, expectedSeq: inSession ? s.seq + 1 : undefined, count: msg.count, refused: n }, 'replica message refused: nothing of it applied');
    }
    // A message out of line in the session it names ends that session: what follows cannot be
    // trusted to line up. One naming no session here leaves the current one alone (it may be a
    // stray from another link; the caller closes that link).
    if (inSession && reason !== 'unknown-session') this.end(s);
    return { ok: false, reason };
  }

  private apply(s: SinkSession, c: ReplicaChange): void {
    try {
      // The id first: a flow whose text is no address is refused before the map is touched.
      const id = connectionId(c.flow);
      if (c.entry) this.table.put(c.flow, { state: c.entry.state, targetNode: c.entry.node, targetMac: c.entry.mac });
      else this.table.remove(c.flow);
      s.seen?.add(id);
    } catch (err) {
      const kind: WriteFailure = isBatonError(err, 'E_CONFIG') ? 'invalid' : isBatonError(err, 'E_BPF') && err.detail === 'routing table full' ? 'full' : 'other';
      const n = ++this.counters.writeFailures[kind];
      if (logSparsely(n)) {
        this.log.error({ from: s.from, session: s.session, seq: s.seq, flow: c.flow.clientAddress, clientPort: c.flow.clientPort, state: c.entry?.state ?? 'removed', kind, err: errorText(err), failures: n }, 'replicated entry could not be written to the local routing table');
      }
    }
  }

  private scheduleAck(s: SinkSession): void {
    if (s.phase === 'sweeping') return; // acked once the sweep is done: an ack says the table matches
    if (s.unackedEntries >= this.ackEveryEntries) this.ackNow(s);
    else if (!s.ackTimer) {
      s.ackTimer = setTimeout(() => this.ackNow(s), this.ackEveryMs);
      s.ackTimer.unref();
    }
  }

  private ackNow(s: SinkSession): void {
    if (s.ackTimer) clearTimeout(s.ackTimer);
    s.ackTimer = undefined;
    if (s.ended || s.seq <= s.ackedSeq) return;
    s.ackedSeq = s.seq;
    s.unackedEntries = 0;
    this.counters.acksSent++;
    try {
      s.ack(s.seq);
    } catch (err) {
      // The caller's send (a timer calls this): logged here, not thrown into the event loop.
      this.log.error({ from: s.from, session: s.session, seq: s.seq, err: errorText(err) }, 'sending a replica-ack failed');
    }
  }

  /**
   * Removes every local entry the snapshot and the changes since did not name: what the active no
   * longer has (removed while this backup was away, or never had). Keys are collected a page per
   * turn, then removed a page per turn; a flow named meanwhile (a change goes on arriving) is kept.
   */
  private async sweep(s: SinkSession): Promise<void> {
    const started = Date.now();
    const stale = new Map<string, FlowKey>();
    let removed = 0;
    try {
      let cursor: Buffer | null = null;
      let restarts = 0;
      for (;;) {
        const { keys, last } = this.table.keysAfter(cursor, this.sweepPage);
        for (const k of keys) {
          const id = connectionId(k);
          if (!s.seen!.has(id)) stale.set(id, k);
        }
        if (!last) break;
        await nextTurn();
        if (s.ended) return;
        const resume = keys.length > 0 ? resumeAfter(this.table, keys, last) : last;
        if (resume === 'restart') {
          if (++restarts > MAX_WALK_RESTARTS) throw new BatonError('E_BPF', `the sweep's walk restarted ${restarts} times`, { step: 'replica-sweep' });
          cursor = null;
        } else cursor = resume;
      }
      let inPage = 0;
      for (const [id, k] of stale) {
        if (s.seen!.has(id)) continue; // named by a change since it was collected
        if (this.table.remove(k)) removed++;
        if (++inPage === this.sweepPage) {
          inPage = 0;
          await nextTurn();
          if (s.ended) return;
        }
      }
    } catch (err) {
      if (s.ended) return;
      this.counters.sweepsFailed++;
      s.phase = 'unsynced';
      s.seen = undefined;
      this.log.error({ from: s.from, session: s.session, removed, err: errorText(err) }, 'replica sweep failed: stale entries may remain until the next snapshot');
      this.ackNow(s);
      return;
    }
    if (s.ended) return;
    s.phase = 'synced';
    s.seen = undefined;
    this.counters.swept += removed;
    this.counters.snapshotsCompleted++;
    this.log.info({ from: s.from, session: s.session, entries: s.snapshotEntries, swept: removed, ms: Date.now() - s.startedAt, sweepMs: Date.now() - started }, 'replica synced: the snapshot is applied');
    this.ackNow(s);
  }
}
