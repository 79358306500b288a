// The connection routing table as batond uses it: freeze a flow before export, point it at the
// target after import, release and finish it as the connection closes, walk it a step at a time.
// Every method is one or a few bpf() syscalls on the pinned maps; their layout is table-layout.ts.
import os from 'node:os';
import path from 'node:path';
import { BatonError } from '../errors.js';
import { connectionId, type FlowKey } from '../flow.js';
import {
  BPF_ANY,
  closeFd,
  mapDelete,
  mapInfo,
  mapLookup,
  mapNextKey,
  mapUpdate,
  numPossibleCpus,
  objGet,
} from '../../native/libbpf.js';
import { FLOW_KEY_SIZE, ROUTES_MAP_NAME, ROUTE_SIZE, STATS_MAP_NAME, STAT_COUNTER_SIZE, STAT_INDEX, ZERO_MAC, decodeFlowKey, decodeRoute, encodeFlowKey, encodeRoute, sumPerCpuCounters, writeU32, type Counter, type RouteEntry, type StatName } from './table-layout.js';


// ---- the table ------------------------------------------------------------------------------

const BPF_MAP_TYPE_HASH = 1;
const BPF_MAP_TYPE_PERCPU_ARRAY = 6;
const TABLE_FULL_ERRNOS = new Set([os.constants.errno.E2BIG, os.constants.errno.ENOMEM]);

/**
 * The distributor's routing table, over the map fds of a loaded (or pinned) steering program.
 * Every method is one or a few bpf() syscalls (~1.5 µs each), cheap enough to sit inside a
 * handoff. Writes replace the whole value, so the per-entry counters restart at every write.
 */
export class RoutingTable {
  private readonly ownsFds: boolean;
  private closed = false;

  constructor(
    private readonly mapFd: number,
    private readonly statsFd: number,
    private readonly ncpus: number,
    opts: { ownsFds?: boolean } = {},
  ) {
    this.ownsFds = opts.ownsFds ?? false;
  }

  /**
   * Opens the maps a (possibly other, possibly exited) batond pinned in instanceDir, checking
   * that their layout is the one this code mirrors.
   */
  static openPinned(instanceDir: string): RoutingTable {
    const mapFd = objGet(path.join(instanceDir, ROUTES_MAP_NAME));
    let statsFd = -1;
    try {
      statsFd = objGet(path.join(instanceDir, STATS_MAP_NAME));
      checkLayout(mapFd, BPF_MAP_TYPE_HASH, FLOW_KEY_SIZE, ROUTE_SIZE, instanceDir);
      checkLayout(statsFd, BPF_MAP_TYPE_PERCPU_ARRAY, 4, STAT_COUNTER_SIZE, instanceDir);
      return new RoutingTable(mapFd, statsFd, numPossibleCpus(), { ownsFds: true });
    } catch (err) {
      closeFd(mapFd);
      if (statsFd >= 0) closeFd(statsFd);
      throw err;
    }
  }

  /**
   * Drops the client's packets for this flow until forward() or remove(): the socket is being
   * exported. The entry names the node serving the flow until then (none: the distributor itself),
   * which the program ignores: a distributor restarted mid-handoff reads it to give the flow back
   * (route-service.ts).
   */
  freeze(key: FlowKey, servedBy?: { node: number; mac: string }): void {
    this.write(key, encodeRoute({ state: 'frozen', targetNode: servedBy?.node ?? 0, targetMac: servedBy?.mac ?? ZERO_MAC }), 'freeze');
  }

  /** Sends the flow's packets to the target node's MAC from now on. */
  forward(key: FlowKey, target: { node: number; mac: string }): void {
    this.write(key, encodeRoute({ state: 'forward', targetNode: target.node, targetMac: target.mac }), 'forward');
  }

  /** Still forwarding, SYNs included: the owner's application closed the connection, TCP's closing handshake goes on there. */
  release(key: FlowKey, target: { node: number; mac: string }): void {
    this.rewrite(key, 'released', target, 'release');
  }

  /** Still forwarding, but the owner's kernel is done with the tuple: a new SYN on it reclaims it (XDP deletes the entry). */
  finish(key: FlowKey, target: { node: number; mac: string }): void {
    this.rewrite(key, 'finished', target, 'finish');
  }

  /**
   * Writes a whole entry as given (counters zero unless given): a backup distributor applying the
   * active's table (ha/replica-sink.ts), where the value, not a transition, is what arrives.
   */
  put(key: FlowKey, entry: Omit<RouteEntry, 'packets' | 'bytes'> & Partial<Pick<RouteEntry, 'packets' | 'bytes'>>): void {
    this.write(key, encodeRoute(entry), 'put');
  }

  /** True if there was an entry. Without one, the distributor's own kernel sees the flow again. */
  remove(key: FlowKey): boolean {
    return mapDelete(this.fd(), encodeFlowKey(key));
  }

  get(key: FlowKey): RouteEntry | undefined {
    const value = Buffer.alloc(ROUTE_SIZE);
    return mapLookup(this.fd(), encodeFlowKey(key), value) ? decodeRoute(value) : undefined;
  }

  /**
   * Keys are collected first, then read: an entry deleted mid-walk makes the kernel restart
   * the key walk from the first bucket, so keys are deduplicated and vanished entries skipped.
   */
  *entries(): Iterable<[FlowKey, RouteEntry]> {
    const value = Buffer.alloc(ROUTE_SIZE);
    for (const key of this.keys()) {
      if (mapLookup(this.fd(), key, value)) yield [decodeFlowKey(key), decodeRoute(value)];
    }
  }

  /**
   * Up to max entries after the key prev (null: from the first), and the key to resume from (null
   * at the end): a walk done a step at a time, so no single step blocks for long. If prev was
   * deleted meanwhile the kernel starts again from the first key: the caller must expect entries
   * it has seen already.
   */
  entriesAfter(prev: Buffer | null, max: number): { entries: Array<[FlowKey, RouteEntry]>; last: Buffer | null } {
    const entries: Array<[FlowKey, RouteEntry]> = [];
    const value = Buffer.alloc(ROUTE_SIZE);
    let at = prev;
    while (entries.length < max) {
      const next = Buffer.alloc(FLOW_KEY_SIZE);
      if (!mapNextKey(this.fd(), at, next)) return { entries, last: null };
      if (mapLookup(this.fd(), next, value)) entries.push([decodeFlowKey(next), decodeRoute(value)]);
      at = next;
    }
    return { entries, last: at };
  }

  /**
   * Up to max keys after the key prev (null: from the first), and the key to resume from (null at
   * the end): entriesAfter without reading the values, half the syscalls, for a walk that only
   * needs to know which flows are there. The same restart from the first key if prev was deleted.
   */
  keysAfter(prev: Buffer | null, max: number): { keys: FlowKey[]; last: Buffer | null } {
    const keys: FlowKey[] = [];
    let at = prev;
    while (keys.length < max) {
      const next = Buffer.alloc(FLOW_KEY_SIZE);
      if (!mapNextKey(this.fd(), at, next)) return { keys, last: null };
      keys.push(decodeFlowKey(next));
      at = next;
    }
    return { keys, last: at };
  }

  /**
   * The cursor entriesAfter and keysAfter resume after for this flow (its key's bytes): a walk whose
   * cursor was deleted meanwhile resumes from an earlier key it read instead of from the first.
   */
  cursorOf(key: FlowKey): Buffer {
    return encodeFlowKey(key);
  }

  /**
   * The map's own count, for tests: batond counts through its index (route-service.ts) and never
   * walks the map for it. O(entries) syscalls (the kernel keeps no element count user space can
   * read), but no allocation per entry: a Buffer per key of a 100k table grew the counting process
   * by tens of MiB. The walk restarts from the first key when the key it stands on is deleted
   * meanwhile; seeing the first key again means that happened, and only then are keys collected
   * to count each once.
   */
  size(): number {
    const fd = this.fd();
    const first = Buffer.alloc(FLOW_KEY_SIZE);
    let prev = Buffer.alloc(FLOW_KEY_SIZE);
    let next = Buffer.alloc(FLOW_KEY_SIZE);
    if (!mapNextKey(fd, null, first)) return 0;
    first.copy(prev);
    let count = 1;
    while (mapNextKey(fd, prev, next)) {
      if (next.equals(first)) return this.keys().length;
      count++;
      [prev, next] = [next, prev];
    }
    return count;
  }

  stats(): Record<StatName, Counter> {
    this.fd();
    const key = Buffer.alloc(4);
    const value = Buffer.alloc(STAT_COUNTER_SIZE * this.ncpus);
    const out = {} as Record<StatName, Counter>;
    for (const [name, index] of Object.entries(STAT_INDEX) as [StatName, number][]) {
      writeU32(key, index, 0);
      out[name] = mapLookup(this.statsFd, key, value) ? sumPerCpuCounters(value, this.ncpus) : { packets: 0n, bytes: 0n };
    }
    return out;
  }

  /**
   * Ends this table's use of the fds, closing them if it opened them (openPinned); a loaded
   * object closes its own. Later calls fail instead of reaching whatever reuses the fd number.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (!this.ownsFds) return;
    closeFd(this.mapFd);
    closeFd(this.statsFd);
  }

  private fd(): number {
    if (this.closed) throw new BatonError('E_BPF', 'routing table used after close', { step: 'routing-table' });
    return this.mapFd;
  }

  /** Changes a closing entry's state, keeping its counters: the totals are still worth reading during the grace. */
  private rewrite(key: FlowKey, state: 'released' | 'finished', target: { node: number; mac: string }, step: string): void {
    const current = this.get(key);
    this.write(key, encodeRoute({ state, targetNode: target.node, targetMac: target.mac, packets: current?.packets, bytes: current?.bytes }), step);
  }

  private write(key: FlowKey, value: Buffer, step: string): void {
    const keyBuf = encodeFlowKey(key);
    try {
      mapUpdate(this.fd(), keyBuf, value, BPF_ANY);
    } catch (err) {
      const errno = err instanceof BatonError ? err.context.errno : undefined;
      if (typeof errno === 'number' && TABLE_FULL_ERRNOS.has(errno)) {
        throw new BatonError(
          'E_BPF',
          'routing table full',
          { step, errno, errnoName: err instanceof BatonError ? err.context.errnoName : undefined, maxEntries: this.capacity(), flow: connectionId(key) },
          { cause: err },
        );
      }
      throw err;
    }
  }

  /** The map's max_entries: how many flows the table can hold (undefined if the kernel will not say). */
  capacity(): number | undefined {
    try {
      return mapInfo(this.mapFd).maxEntries;
    } catch {
      return undefined;
    }
  }

  private keys(): Buffer[] {
    const seen = new Set<string>();
    const keys: Buffer[] = [];
    let prev: Buffer | null = null;
    for (;;) {
      const next = Buffer.alloc(FLOW_KEY_SIZE);
      if (!mapNextKey(this.fd(), prev, next)) break;
      const id = next.toString('hex');
      if (!seen.has(id)) {
        seen.add(id);
        keys.push(next);
      }
      prev = next;
    }
    return keys;
  }
}

function checkLayout(fd: number, type: number, keySize: number, valueSize: number, instanceDir: string): void {
  const info = mapInfo(fd);
  if (info.type !== type || info.keySize !== keySize || info.valueSize !== valueSize) {
    throw new BatonError('E_BPF', `pinned map ${info.name} in ${instanceDir} has a different layout than this build`, {
      step: 'open-pinned',
      expected: { type, keySize, valueSize },
      found: { type: info.type, keySize: info.keySize, valueSize: info.valueSize },
    });
  }
}
