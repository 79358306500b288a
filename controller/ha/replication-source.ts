// The active distributor's side of replication (the model, its bounds and its wire helpers:
// replication.ts): one stream per attached backup, a session id (random per attach) and a seq per
// message; a snapshot walked a page per turn of the event loop, paced by the backup's link and
// acks; changes batched per turn; a backup that cannot keep up is dropped (it re-attaches later,
// with a fresh snapshot).
import { randomBytes } from 'node:crypto';
import { BatonError } from '../errors.js';
import { connectionId, type FlowKey } from '../flow.js';
import { errorText, logSparsely } from '../input.js';
import type { Logger } from '../log.js';
import type { RoutingTable } from '../agent/routing-table.js';
import type { RouteEntry } from '../agent/table-layout.js';
import type { Body, ReplicaChange } from '../transfer/messages.js';
import {
  chunks,
  MAX_BUFFERED_BYTES,
  MAX_WALK_RESTARTS,
  nextTurn,
  type ReplicaLink,
  resumeAfter,
  sleep,
  SNAPSHOT_PAGE,
  SNAPSHOT_PAUSE_BYTES,
  SNAPSHOT_POLL_MS,
  SNAPSHOT_STALL_MS,
  SNAPSHOT_WINDOW_ENTRIES,
  wireEntry,
  wireFlow,
} from './replication.js';

export const DROP_REASONS = ['backpressure', 'stalled', 'closed', 'send-failed', 'read-failed', 'walk-restarts', 'bad-ack'] as const;
/**
 * Why a stream was dropped: its link over the byte bound, a snapshot that could not send (link
 * full, or its window unacknowledged) for 30 s, the link found closed, a message that could not be
 * encoded, the table unreadable, a walk that kept restarting, an ack for what was never sent.
 */
export type DropReason = (typeof DROP_REASONS)[number];
export const ACK_REFUSALS = ['unknown-session', 'ahead'] as const;
export type AckRefusal = (typeof ACK_REFUSALS)[number];

export interface StreamStatus {
  backup: string;
  session: string;
  /** The last seq sent. */
  sentSeq: number;
  /** The last seq the backup acknowledged (0: none yet). */
  ackedSeq: number;
  /** Entries sent (snapshot and changes) and not yet acknowledged. */
  lagEntries: number;
  snapshotting: boolean;
  /** ms since the epoch. */
  attachedAt: number;
}

interface Stream {
  backup: string;
  link: ReplicaLink;
  session: string;
  seq: number;
  acked: number;
  /** Messages sent and not acknowledged, oldest first: their seq and entry count. */
  inFlight: Array<{ seq: number; entries: number }>;
  inFlightHead: number;
  lag: number;
  snapshotting: boolean;
  /** Entries the snapshot pages carried (duplicates of a resumed walk included): snapshot-end's count. */
  snapshotEntries: number;
  attachedAt: number;
  live: boolean;
}

export interface SourceCounters {
  messagesSent: number;
  entriesSent: number;
  acksReceived: number;
  snapshotsCompleted: number;
  dropped: Record<DropReason, number>;
  acksRefused: Record<AckRefusal, number>;
}

export interface SourceOptions {
  maxBufferedBytes?: number;
  snapshotPage?: number;
  stallMs?: number;
  snapshotWindowEntries?: number;
}

/** The active distributor's side: a stream of the routing table to each attached backup. */
export class ReplicationSource {
  private readonly streams = new Map<string, Stream>();
  private pending: ReplicaChange[] = [];
  private flushScheduled = false;
  private closed = false;
  private readonly maxBuffered: number;
  private readonly page: number;
  private readonly stallMs: number;
  private readonly window: number;
  readonly counters: SourceCounters = {
    messagesSent: 0,
    entriesSent: 0,
    acksReceived: 0,
    snapshotsCompleted: 0,
    dropped: Object.fromEntries(DROP_REASONS.map((r) => [r, 0])) as Record<DropReason, number>,
    acksRefused: Object.fromEntries(ACK_REFUSALS.map((r) => [r, 0])) as Record<AckRefusal, number>,
  };

  constructor(
    private readonly table: Pick<RoutingTable, 'entriesAfter' | 'get' | 'cursorOf'>,
    private readonly log: Logger,
    opts: SourceOptions = {},
  ) {
    this.maxBuffered = opts.maxBufferedBytes ?? MAX_BUFFERED_BYTES;
    this.page = opts.snapshotPage ?? SNAPSHOT_PAGE;
    this.stallMs = opts.stallMs ?? SNAPSHOT_STALL_MS;
    // Never below a page: a page must always be able to go once everything before it is acknowledged.
    this.window = Math.max(opts.snapshotWindowEntries ?? SNAPSHOT_WINDOW_ENTRIES, this.page);
  }

  /**
   * Starts a stream to backup on link: a new session, whose first page of snapshot is read and
   * sent before this returns (so no change can precede it), the rest a page per turn, then
   * snapshot-end. A stream the backup had is replaced (its link is the caller's to close).
   * Returns the session.
   */
  attach(backup: string, link: ReplicaLink): string {
    if (this.closed) throw new BatonError('E_HANDOFF_STATE', 'replication source is closed', { node: backup, step: 'replicate' });
    const previous = this.streams.get(backup);
    if (previous) previous.live = false;
    const s: Stream = {
      backup,
      link,
      session: randomBytes(8).toString('hex'),
      seq: 0,
      acked: 0,
      inFlight: [],
      inFlightHead: 0,
      lag: 0,
      snapshotting: true,
      snapshotEntries: 0,
      attachedAt: Date.now(),
      live: true,
    };
    this.streams.set(backup, s);
    this.log.info({ backup, session: s.session, replaced: previous?.session }, 'replication stream attached: snapshot starts');
    this.snapshot(s).catch((err: unknown) => {
      // snapshot() handles its own failures; this is one in that handling (a link's close throwing).
      this.log.error({ backup, session: s.session, err: errorText(err) }, 'replication snapshot failed unexpectedly');
      this.drop(s, 'read-failed', errorText(err));
    });
    return s.session;
  }

  /** The caller's link to backup closed (or is being given up): its stream ends, uncounted. Only that link's stream, if given. */
  detach(backup: string, link?: ReplicaLink): void {
    const s = this.streams.get(backup);
    if (!s || (link && s.link !== link)) return;
    s.live = false;
    this.streams.delete(backup);
    this.log.info({ backup, session: s.session, sentSeq: s.seq, ackedSeq: s.acked }, 'replication stream detached');
  }

  /** Whether any backup's stream is attached: until one is, changes need not be read back (replicating's wanted). */
  get streaming(): boolean {
    return this.streams.size > 0;
  }

  /** A flow's entry as it now is (undefined: removed), from replicating(): sent to every stream at the end of this turn. */
  change(flow: FlowKey, entry: RouteEntry | undefined): void {
    if (this.streams.size === 0) return; // a stream attached later reads the table itself
    this.pending.push({ flow: wireFlow(flow), entry: wireEntry(entry) });
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }

  /**
   * A lost change (its value could not be read back): no stream can be trusted to match any more.
   * Every stream is dropped; each backup's next attach re-snapshots.
   */
  lost(flow: FlowKey, err: unknown): void {
    this.log.error({ flow: connectionId(flow), err: errorText(err) }, 'routing-table entry could not be read back after a write: replication streams dropped');
    for (const s of [...this.streams.values()]) this.drop(s, 'read-failed', `entry of ${connectionId(flow)} unreadable after a write`);
  }

  /**
   * A replica-ack from backup. False when refused: an ack of another session (a stream since
   * replaced or dropped: harmless, ignored) or one for a seq never sent (the stream is dropped).
   */
  onAck(backup: string, session: string, seq: number): boolean {
    const s = this.streams.get(backup);
    if (!s || s.session !== session) {
      const n = ++this.counters.acksRefused['unknown-session'];
      if (logSparsely(n)) this.log.info({ backup, session, seq, refused: n }, 'replica-ack for a stream that is no longer attached: ignored');
      return false;
    }
    if (seq > s.seq) {
      this.counters.acksRefused.ahead++;
      this.drop(s, 'bad-ack', `ack of seq ${seq}, only ${s.seq} sent`);
      return false;
    }
    this.counters.acksReceived++;
    if (seq <= s.acked) return true; // acks are cumulative: an older one says nothing new
    s.acked = seq;
    while (s.inFlightHead < s.inFlight.length && s.inFlight[s.inFlightHead]!.seq <= seq) s.lag -= s.inFlight[s.inFlightHead++]!.entries;
    if (s.inFlightHead > 1024 && s.inFlightHead * 2 > s.inFlight.length) {
      s.inFlight = s.inFlight.slice(s.inFlightHead);
      s.inFlightHead = 0;
    }
    return true;
  }

  status(): StreamStatus[] {
    return [...this.streams.values()].map((s) => ({
      backup: s.backup,
      session: s.session,
      sentSeq: s.seq,
      ackedSeq: s.acked,
      lagEntries: s.lag,
      snapshotting: s.snapshotting,
      attachedAt: s.attachedAt,
    }));
  }

  /** Ends every stream (links are the caller's). */
  close(): void {
    this.closed = true;
    for (const s of this.streams.values()) s.live = false;
    this.streams.clear();
    this.pending = [];
  }

  private flush(): void {
    this.flushScheduled = false;
    const batch = this.pending;
    this.pending = [];
    if (batch.length === 0) return;
    const runs = chunks(batch);
    for (const s of [...this.streams.values()]) this.sendRuns(s, 'changes', runs);
  }

  private async snapshot(s: Stream): Promise<void> {
    const started = Date.now();
    let cursor: Buffer | null = null;
    let restarts = 0;
    try {
      for (;;) {
        // Read and sent in one synchronous step: the page holds the values as of its send (see replication.ts).
        const { entries, last } = this.table.entriesAfter(cursor, this.page);
        s.snapshotEntries += entries.length;
        const changes = entries.map(([flow, entry]) => ({ flow: wireFlow(flow), entry: wireEntry(entry) }));
        // The first message of a session is a snapshot page, even of an empty table.
        const runs = changes.length > 0 ? chunks(changes) : s.seq === 0 ? [[]] : [];
        if (!this.sendRuns(s, 'snapshot', runs) || !last) break;
        const page = entries.map(([flow]) => flow);
        await nextTurn();
        if (!(await this.paced(s))) return;
        const resume = page.length > 0 ? resumeAfter(this.table, page, last) : last;
        if (resume === 'restart') {
          if (++restarts > MAX_WALK_RESTARTS) {
            this.drop(s, 'walk-restarts', `the table walk restarted ${restarts} times`);
            return;
          }
          cursor = null;
        } else cursor = resume;
      }
    } catch (err) {
      this.log.error({ backup: s.backup, session: s.session, err: errorText(err) }, 'reading the routing table for a snapshot failed');
      this.drop(s, 'read-failed', `reading the table: ${errorText(err)}`);
      return;
    }
    if (!s.live) return;
    if (!this.send(s, { kind: 'snapshot-end', changes: [], count: s.snapshotEntries })) return;
    s.snapshotting = false;
    this.counters.snapshotsCompleted++;
    this.log.info({ backup: s.backup, session: s.session, entries: s.snapshotEntries, restarts, messages: s.seq, ms: Date.now() - started }, 'replication snapshot sent');
  }

  /** Waits until s's link and the backup have room for another page; false if the stream ended or stalled meanwhile. */
  private async paced(s: Stream): Promise<boolean> {
    const since = Date.now();
    while (s.live && (s.link.writableLength > SNAPSHOT_PAUSE_BYTES || s.lag + this.page > this.window)) {
      if (Date.now() - since > this.stallMs) {
        this.drop(s, 'stalled', `${s.link.writableLength} bytes unsent, ${s.lag} entries unacknowledged for ${this.stallMs} ms`);
        return false;
      }
      await sleep(SNAPSHOT_POLL_MS);
    }
    return s.live;
  }

  /** Sends each run as one message; false once the stream is gone. */
  private sendRuns(s: Stream, kind: 'snapshot' | 'changes', runs: ReplicaChange[][]): boolean {
    for (const changes of runs) if (!this.send(s, { kind, changes })) return false;
    return s.live;
  }

  private send(s: Stream, msg: Pick<Body<'replica'>, 'kind' | 'changes' | 'count'>): boolean {
    if (!s.live) return false;
    const seq = s.seq + 1;
    let sent: boolean;
    try {
      sent = s.link.send('replica', { session: s.session, seq, ...msg });
    } catch (err) {
      // Encoding refused the frame (chunks() keeps each under the header bound, so a bug): this
      // stream cannot go on without a gap, and a flush's exception must not reach the event loop.
      this.drop(s, 'send-failed', errorText(err));
      return false;
    }
    if (!sent) {
      this.drop(s, 'closed', 'link closed');
      return false;
    }
    s.seq = seq;
    const n = msg.changes.length;
    s.inFlight.push({ seq, entries: n });
    s.lag += n;
    this.counters.messagesSent++;
    this.counters.entriesSent += n;
    if (s.link.writableLength > this.maxBuffered) {
      this.drop(s, 'backpressure', `${s.link.writableLength} bytes unsent, bound ${this.maxBuffered}`);
      return false;
    }
    return true;
  }

  private drop(s: Stream, reason: DropReason, detail: string): void {
    if (!s.live) return;
    s.live = false;
    if (this.streams.get(s.backup) === s) this.streams.delete(s.backup);
    const n = ++this.counters.dropped[reason];
    if (logSparsely(n)) {
      this.log.warn({ backup: s.backup, session: s.session, reason, detail, sentSeq: s.seq, ackedSeq: s.acked, lagEntries: s.lag, dropped: n }, 'replication stream dropped: the backup re-attaches with a fresh snapshot');
    }
    if (reason !== 'closed') s.link.close(new BatonError('E_PEER', `replication stream to ${s.backup} dropped (${reason}): ${detail}`, { node: s.backup, step: 'replicate' }));
  }
}

