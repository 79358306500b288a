// An in-memory routing table with the BPF map's semantics, for tests of what writes and walks the
// distributor's table (RouteService, the replication source and sink, the distributor role)
// without a kernel: every RoutingTable method they call, over a Map.
import { connectionId, type FlowKey } from '../../controller/flow.js';
import type { RouteEntry, RouteState } from '../../controller/agent/table-layout.js';

/**
 * RoutingTable's methods over a Map keyed by connection id. The key walk is the Map's insertion
 * order and behaves as the kernel's get_next_key does: after a key still there, the next one; after
 * a key that is gone, from the first key again.
 */
export class MemoryTable {
  readonly map = new Map<string, { flow: FlowKey; entry: RouteEntry }>();
  /** Every page entriesAfter/keysAfter returned: how much a walk read. */
  pagesRead = 0;
  keysRead = 0;

  constructor(private readonly maxEntries: number | undefined = 262_144) {}

  get(f: FlowKey): RouteEntry | undefined {
    const e = this.map.get(connectionId(f))?.entry;
    return e && { ...e };
  }
  private set(f: FlowKey, state: RouteState, node: number, mac: string, keep = false): void {
    const old = keep ? this.map.get(connectionId(f))?.entry : undefined;
    this.map.set(connectionId(f), { flow: f, entry: { state, targetNode: node, targetMac: mac, packets: old?.packets ?? 0n, bytes: old?.bytes ?? 0n } });
  }
  freeze(f: FlowKey, servedBy?: { node: number; mac: string }): void {
    this.set(f, 'frozen', servedBy?.node ?? 0, servedBy?.mac ?? '00:00:00:00:00:00');
  }
  forward(f: FlowKey, t: { node: number; mac: string }): void {
    this.set(f, 'forward', t.node, t.mac);
  }
  release(f: FlowKey, t: { node: number; mac: string }): void {
    this.set(f, 'released', t.node, t.mac, true);
  }
  finish(f: FlowKey, t: { node: number; mac: string }): void {
    this.set(f, 'finished', t.node, t.mac, true);
  }
  put(f: FlowKey, e: { state: RouteState; targetNode: number; targetMac: string }): void {
    this.set(f, e.state, e.targetNode, e.targetMac);
  }
  remove(f: FlowKey): boolean {
    return this.map.delete(connectionId(f));
  }
  *entries(): Iterable<[FlowKey, RouteEntry]> {
    for (const { flow, entry } of this.map.values()) yield [flow, entry];
  }
  cursorOf(f: FlowKey): Buffer {
    return Buffer.from(connectionId(f));
  }
  private walk(prev: Buffer | null, max: number): { ids: string[]; last: Buffer | null } {
    this.pagesRead++;
    const from = prev === null ? undefined : prev.toString();
    let started = from === undefined || !this.map.has(from);
    const ids: string[] = [];
    for (const id of this.map.keys()) {
      if (!started) {
        started = id === from;
        continue;
      }
      ids.push(id);
      if (ids.length === max) break;
    }
    this.keysRead += ids.length;
    return { ids, last: ids.length === max ? Buffer.from(ids.at(-1)!) : null };
  }
  entriesAfter(prev: Buffer | null, max: number): { entries: Array<[FlowKey, RouteEntry]>; last: Buffer | null } {
    const { ids, last } = this.walk(prev, max);
    return { entries: ids.map((id) => [this.map.get(id)!.flow, { ...this.map.get(id)!.entry }]), last };
  }
  keysAfter(prev: Buffer | null, max: number): { keys: FlowKey[]; last: Buffer | null } {
    const { ids, last } = this.walk(prev, max);
    return { keys: ids.map((id) => this.map.get(id)!.flow), last };
  }
  /** The map's max_entries, as RoutingTable.capacity() answers it (undefined: the kernel would not say). */
  capacity(): number | undefined {
    return this.maxEntries;
  }
  /** What XDP steers by, per connection id. */
  view(): Map<string, string> {
    return new Map([...this.map].map(([id, { entry }]) => [id, `${entry.state}/${entry.targetNode}/${entry.targetMac}`]));
  }
}
