// A Map that can be listed a page at a time, for views that may hold hundreds of thousands of
// entries (the routing table on the distributor, the connections a node serves) and are read by
// operators and scrapers while handoffs run. A page costs O(log n + page): entries keep their
// insertion order, each with a sequence number; a cursor is the last sequence number a page
// returned, found again by binary search. Stable while the map changes: an entry added later
// comes after the cursor, one removed is skipped, one changed in place keeps its place.

interface Slot<V> {
  key: string;
  value: V;
  seq: number;
  live: boolean;
}

/** The most entries one page of /v1/connections holds: a page costs O(page), never O(table). */
export const MAX_PAGE = 1000;

export interface PageOf<V> {
  values: V[];
  /** Where the next page starts; absent when this page reached the end. */
  next?: string;
}

const CURSOR = /^[1-9][0-9]{0,14}$/;

/** Decodes a page cursor; undefined if it is not one a page gave (the API answers 400). */
export function parseCursor(text: string): number | undefined {
  return CURSOR.test(text) ? Number(text) : undefined;
}

export class PagedMap<V> {
  private readonly byKey = new Map<string, Slot<V>>();
  /** Every slot in insertion order, removed ones until compaction: sorted by seq. */
  private order: Array<Slot<V>> = [];
  private dead = 0;
  private nextSeq = 1;

  get size(): number {
    return this.byKey.size;
  }

  get(key: string): V | undefined {
    return this.byKey.get(key)?.value;
  }

  /** Adds at the end, or replaces the value in place (its place in the order stays). */
  set(key: string, value: V): void {
    const slot = this.byKey.get(key);
    if (slot) {
      slot.value = value;
      return;
    }
    const fresh = { key, value, seq: this.nextSeq++, live: true };
    this.byKey.set(key, fresh);
    this.order.push(fresh);
  }

  delete(key: string): boolean {
    const slot = this.byKey.get(key);
    if (!slot) return false;
    this.byKey.delete(key);
    slot.live = false;
    // Compacted once the removed outnumber the living: amortised O(1) a removal.
    if (++this.dead > 1024 && this.dead > this.byKey.size) {
      this.order = this.order.filter((s) => s.live);
      this.dead = 0;
    }
    return true;
  }

  /** Every entry, a copy: for background work, never for a request path. */
  entries(): Array<[string, V]> {
    return [...this.byKey.values()].map((s) => [s.key, s.value]);
  }

  /**
   * Up to limit values that match, after the cursor `after`. At most maxScan entries are looked at
   * per call, so a filter that matches little cannot turn one request into a walk of everything:
   * the page may then be short (even empty) and still carry a next cursor.
   */
  page(opts: { after?: number; limit: number; match?: (v: V) => boolean; maxScan?: number }): PageOf<V> {
    const { limit, match } = opts;
    const maxScan = opts.maxScan ?? Math.max(10_000, limit * 10);
    let i = opts.after === undefined ? 0 : this.firstAfter(opts.after);
    const values: V[] = [];
    let scanned = 0;
    let last: Slot<V> | undefined;
    for (; i < this.order.length && values.length < limit && scanned < maxScan; i++) {
      const slot = this.order[i]!;
      if (!slot.live) continue;
      scanned++;
      last = slot;
      if (!match || match(slot.value)) values.push(slot.value);
    }
    // More may follow if a live slot remains past where the loop stopped (removed slots are at
    // most as many as live ones, and spread out: this finds one in a few steps).
    let more = false;
    for (let j = i; j < this.order.length && !more; j++) more = this.order[j]!.live;
    return more && last ? { values, next: String(last.seq) } : { values };
  }

  /** Index in order of the first slot with seq > after (binary search: order is sorted by seq). */
  private firstAfter(after: number): number {
    let lo = 0;
    let hi = this.order.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.order[mid]!.seq <= after) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
