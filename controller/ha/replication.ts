// Replication of the connection routing table from the active distributor to each backup, so that
// at takeover the backup's XDP program forwards every existing connection from the first packet.
// The model is conntrackd's primary-backup: the active streams every table change to each backup
// over the peer link it already holds (mutual TLS), numbered; a backup that connects or reconnects
// gets a snapshot of the whole table first, then the stream. Wire: the `replica` and `replica-ack`
// messages (transfer/messages.ts, docs/protocol.md).
//
//   replicating()       wraps the TableOps the active's RouteService writes through: after each
//                       write the entry is read back (one bpf syscall) and reported as it now is.
//   ReplicationSource   on the active (replication-source.ts): one stream per backup, a session
//                       id (random per attach) and a seq per message; a snapshot walked a page per
//                       turn of the event loop; changes batched per turn; a backup that cannot keep
//                       up is dropped.
//   ReplicaSink         on a backup (replica-sink.ts): checks each message continues its session
//                       without a gap, applies it to the local map, sweeps what the snapshot did
//                       not name, acks.
//
// Why a snapshot and the change stream may interleave freely: every message carries entries as
// they are at the moment it is built, never a transition. A snapshot page is sent in the same
// synchronous step that reads it, so it holds each entry's value as of that send; a change is
// queued in the same step that makes it, the queue is sent in order, and every stream gets the
// whole queue. So for any flow, the last message a backup gets about it was built after the last
// change to it: either that change's own report, or a page read later, which holds the same value.
// Applying in order (last write wins) therefore leaves the backup's entry equal to the active's.
import type { FlowKey } from '../flow.js';
import type { TableOps } from '../agent/route-service.js';
import type { RoutingTable } from '../agent/routing-table.js';
import type { RouteEntry } from '../agent/table-layout.js';
import { MAX_HEADER_BYTES } from '../transfer/framing.js';
import { type Body, header, MAX_REPLICA_CHANGES, type ReplicaChange } from '../transfer/messages.js';

// ---- bounds -----------------------------------------------------------------------------------

/** Entries read per turn of the event loop: ~3 ms of syscalls on the real map, so a 200,000-entry table never holds the loop for long. */
export const SNAPSHOT_PAGE = 1024;
/** Bytes a backup's link may hold unsent before its stream is dropped (it re-attaches later, with a fresh snapshot). */
export const MAX_BUFFERED_BYTES = 16 * 1024 * 1024;
/** A snapshot reads its next page only once the link holds less than this: it goes at the backup's pace, leaving room for changes. */
export const SNAPSHOT_PAUSE_BYTES = 1024 * 1024;
/**
 * A snapshot reads its next page only while fewer entries than this are unacknowledged. The backup
 * applies what arrives as it arrives, and libuv reads up to 2 MiB from a socket in one go: without
 * this bound a backlog of ~10,000 entries held the backup's event loop ~100 ms at once (measured);
 * with it a burst is at most ~4,000 entries (~35 ms on the real map). Four acks' worth (a backup
 * acks every 1024 entries), so the pages keep flowing while acks travel.
 */
export const SNAPSHOT_WINDOW_ENTRIES = 4 * 1024;
/** A snapshot that could not send for this long (the backup reads or acknowledges nothing) is dropped. */
export const SNAPSHOT_STALL_MS = 30_000;
/** How often a paused snapshot looks at its link again. */
export const SNAPSHOT_POLL_MS = 2;
/**
 * A walk whose cursor and the whole page before it vanished between two turns starts again from
 * the first key (the kernel's rule). Possible under mass removals; more than this many times in one
 * snapshot and the table is churning faster than it can be walked: the stream is dropped.
 */
export const MAX_WALK_RESTARTS = 8;
/** A backup acknowledges at most this often (ms) or after this many entries, not once per message. */
export const ACK_EVERY_MS = 50;
export const ACK_EVERY_ENTRIES = 1024;

/** The longest change JSON can hold besides its two addresses (the +1: the comma between array items). */
const CHANGE_FIXED_BYTES =
  Buffer.byteLength(JSON.stringify({ flow: { family: 6, clientAddress: '', clientPort: 65535, vipAddress: '', vipPort: 65535 }, entry: { state: 'finished', node: 0xffffffff, mac: 'ff:ff:ff:ff:ff:ff' } })) + 1;
/** Bytes of a replica header around its changes, at their longest. */
const ENVELOPE_BYTES = Buffer.byteLength(
  JSON.stringify(header('replica', { session: '0'.repeat(16), seq: Number.MAX_SAFE_INTEGER, kind: 'snapshot-end', changes: [], count: Number.MAX_SAFE_INTEGER })),
);
/**
 * Change bytes per message. A frame's JSON header is at most 64 KiB (framing.ts), which 1024
 * changes of IPv6 flows (~230 bytes each) would exceed: a message holds at most
 * MAX_REPLICA_CHANGES and at most this many bytes of them, whichever comes first (~250 IPv6 or
 * ~350 IPv4 flows).
 */
const MESSAGE_CHANGE_BYTES = MAX_HEADER_BYTES - ENVELOPE_BYTES - 64;

/** An upper bound of the change's JSON bytes: addresses are ASCII (IpAddressSchema), everything else is at most its longest. */
function changeBytes(c: ReplicaChange): number {
  return CHANGE_FIXED_BYTES + c.flow.clientAddress.length + c.flow.vipAddress.length;
}

/** Splits changes into message-sized runs (count and header bytes), in order. */
export function chunks(changes: ReplicaChange[]): ReplicaChange[][] {
  const out: ReplicaChange[][] = [];
  let run: ReplicaChange[] = [];
  let bytes = 0;
  for (const c of changes) {
    const n = changeBytes(c);
    if (run.length > 0 && (run.length === MAX_REPLICA_CHANGES || bytes + n > MESSAGE_CHANGE_BYTES)) {
      out.push(run);
      run = [];
      bytes = 0;
    }
    run.push(c);
    bytes += n;
  }
  if (run.length > 0) out.push(run);
  return out;
}

/** The flow with exactly its five fields: the wire schema refuses any other (a caller's object may carry more). */
export function wireFlow(f: FlowKey): FlowKey {
  return { family: f.family, clientAddress: f.clientAddress, clientPort: f.clientPort, vipAddress: f.vipAddress, vipPort: f.vipPort };
}

export function wireEntry(e: RouteEntry | undefined): ReplicaChange['entry'] {
  return e ? { state: e.state, node: e.targetNode, mac: e.targetMac } : null;
}

export const nextTurn = () => new Promise<void>((r) => setImmediate(r));
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

// ---- walking the map a page at a time -----------------------------------------------------------

type WalkTable = Pick<RoutingTable, 'get' | 'cursorOf'>;

/**
 * Where a walk resumes after its previous page (those flows, in order), read a turn ago: after the
 * last of them still in the table. The kernel resumes after a key only if the key is still there
 * (else it starts from the first one); the last key is, nearly always (one lookup), and an earlier
 * one otherwise, which re-reads a few entries rather than the whole table. 'restart' if none is left.
 */
export function resumeAfter(table: WalkTable, page: readonly FlowKey[], last: Buffer): Buffer | 'restart' {
  for (let i = page.length - 1; i >= 0; i--) {
    if (table.get(page[i]!) !== undefined) return i === page.length - 1 ? last : table.cursorOf(page[i]!);
  }
  return 'restart';
}

// ---- the active's side ----------------------------------------------------------------------------

/**
 * The table ops the active's RouteService writes through, each write then read back and reported
 * as the entry now is (undefined: none). Read back, not derived: release and finish rewrite the
 * entry in place keeping its counters, and the report must be the value, exactly. A write that
 * throws changed nothing (a failed bpf update leaves the map as it was) and is not reported. A
 * read-back that fails leaves the backups unable to know the value: onLost is told (the source
 * drops its streams, which re-snapshot), or, without onLost, the error is thrown to the writer.
 * While wanted() says no backup listens, nothing is read back (a backup that attaches later reads
 * the table itself): a lone distributor pays no extra map read per write.
 */
export function replicating(
  ops: TableOps,
  onChange: (flow: FlowKey, entry: RouteEntry | undefined) => void,
  onLost?: (flow: FlowKey, err: unknown) => void,
  wanted: () => boolean = () => true,
): TableOps {
  const report = (flow: FlowKey) => {
    if (!wanted()) return;
    let entry: RouteEntry | undefined;
    try {
      entry = ops.get(flow);
    } catch (err) {
      if (!onLost) throw err;
      onLost(flow, err);
      return;
    }
    onChange(flow, entry);
  };
  return {
    get: (key) => ops.get(key),
    entries: () => ops.entries(),
    entriesAfter: (prev, max) => ops.entriesAfter(prev, max),
    freeze(key, servedBy) {
      ops.freeze(key, servedBy);
      report(key);
    },
    forward(key, target) {
      ops.forward(key, target);
      report(key);
    },
    release(key, target) {
      ops.release(key, target);
      report(key);
    },
    finish(key, target) {
      ops.finish(key, target);
      report(key);
    },
    remove(key) {
      const had = ops.remove(key);
      // Nothing but the map's owner creates entries (XDP only deletes them): after a delete there
      // is none, no read needed. Nothing deleted, nothing changed.
      if (had) onChange(key, undefined);
      return had;
    },
  };
}

/** What a source needs of a backup's link: the outbound peer channel to it (replicaLinkOf). */
export interface ReplicaLink {
  /** False once the link is closed: nothing was sent. */
  send(type: 'replica', body: Body<'replica'>): boolean;
  /** Bytes written and not yet taken by the kernel: how far the backup is behind. */
  readonly writableLength: number;
  close(err?: Error): void;
}

/** A Channel (transfer/channel.ts) as a replica link. */
export function replicaLinkOf(channel: { send(type: 'replica', body: Body<'replica'>): boolean; close(err?: Error): void; socket: { writableLength: number } }): ReplicaLink {
  return {
    send: (type, body) => channel.send(type, body),
    get writableLength() {
      return channel.socket.writableLength;
    },
    close: (err) => channel.close(err),
  };
}
