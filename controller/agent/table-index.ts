// The distributor's routing table as batond keeps it in memory, changed in the same place as the
// BPF map (route-service.ts), so that nothing an operator or a scraper asks for walks the map:
// the kernel keeps no element count, and a walk of 200,000 entries costs two syscalls each,
// about half a second of a blocked event loop, during which no handoff moves.
//
//   counts      total, by state, by serving node, by client address, by client source (an IPv6
//               client's /64: flow.ts, sourceOf) and by DVIPA: O(1) to read, and what the quotas
//               check (one client cannot fill the table).
//   pages       a page at a time after a cursor (paged-map.ts): O(page) however large the table.
//
// The map can change behind batond's back (XDP deletes an entry a new SYN reclaims; an operator's
// bpftool): route-service reconciles the two now and then, in small steps.
import { connectionId, type FlowKey, IPV6_SOURCE_PREFIX, sourceOf } from '../flow.js';
import { PagedMap, type PageOf } from './paged-map.js';
import type { RouteState } from './table-layout.js';

export { parseCursor } from './paged-map.js';

export interface IndexedRoute {
  /** The connection's operator id (flow.ts): its 4-tuple. */
  id: string;
  flow: FlowKey;
  state: RouteState;
  /** Node id the entry names: the target (forward, released, finished), the node serving it before the freeze (frozen; 0: the distributor). */
  node: number;
  /** When this batond pointed the flow at its node (ms since the epoch); undefined if before a restart. */
  since: number | undefined;
}

export interface RouteFilter {
  state?: RouteState;
  node?: number;
  client?: string;
  /** A client source as sourceOf() names it (TableIndex.sourceOf): counts only, for the quotas. */
  source?: string;
  vip?: string;
}

function bump<K>(map: Map<K, number>, key: K, by: number): void {
  const n = (map.get(key) ?? 0) + by;
  if (n > 0) map.set(key, n);
  else map.delete(key);
}

export class TableIndex {
  private readonly entries = new PagedMap<IndexedRoute>();
  private readonly byState = new Map<RouteState, number>();
  private readonly byNode = new Map<number, number>();
  private readonly byClient = new Map<string, number>();
  private readonly bySource = new Map<string, number>();
  private readonly byVip = new Map<string, number>();

  /** ipv6SourcePrefix: how many leading bits of an IPv6 client address make its source (limits.ipv6SourcePrefix). */
  constructor(private readonly ipv6SourcePrefix = IPV6_SOURCE_PREFIX) {}

  /** The source a client address counts under here. */
  sourceOf(address: string): string {
    return sourceOf(address, this.ipv6SourcePrefix);
  }

  get size(): number {
    return this.entries.size;
  }

  get(flow: FlowKey): IndexedRoute | undefined {
    return this.entries.get(connectionId(flow));
  }

  getById(id: string): IndexedRoute | undefined {
    return this.entries.get(id);
  }

  /** Records the entry the map now holds for flow: inserted, or changed in place. since stays unless given. */
  set(flow: FlowKey, state: RouteState, node: number, since?: number): void {
    const id = connectionId(flow);
    const old = this.entries.get(id);
    if (old) this.account(old, -1);
    const entry: IndexedRoute = { id, flow, state, node, since: since ?? old?.since };
    this.entries.set(id, entry);
    this.account(entry, 1);
  }

  delete(flow: FlowKey): boolean {
    return this.deleteId(connectionId(flow));
  }

  deleteId(id: string): boolean {
    const old = this.entries.get(id);
    if (!old) return false;
    this.account(old, -1);
    return this.entries.delete(id);
  }

  /** How many entries match; undefined for a combination of filters no count is kept for. */
  count(filter: RouteFilter = {}): number | undefined {
    const given = Object.entries(filter).filter(([, v]) => v !== undefined);
    if (given.length === 0) return this.entries.size;
    if (given.length > 1) return undefined;
    if (filter.state !== undefined) return this.byState.get(filter.state) ?? 0;
    if (filter.node !== undefined) return this.byNode.get(filter.node) ?? 0;
    if (filter.client !== undefined) return this.byClient.get(filter.client) ?? 0;
    if (filter.source !== undefined) return this.bySource.get(filter.source) ?? 0;
    return this.byVip.get(filter.vip!) ?? 0;
  }

  page(opts: { after?: number; limit: number; filter?: RouteFilter }): PageOf<IndexedRoute> {
    const f = opts.filter ?? {};
    const none = Object.values(f).every((v) => v === undefined);
    return this.entries.page({
      after: opts.after,
      limit: opts.limit,
      match: none
        ? undefined
        : (e) =>
            (f.state === undefined || e.state === f.state) &&
            (f.node === undefined || e.node === f.node) &&
            (f.client === undefined || e.flow.clientAddress === f.client) &&
            (f.vip === undefined || e.flow.vipAddress === f.vip),
    });
  }

  /** Every entry's id: for the reconciler and tests, not for request paths. */
  ids(): string[] {
    return this.entries.entries().map(([id]) => id);
  }

  private account(e: IndexedRoute, by: number): void {
    bump(this.byState, e.state, by);
    bump(this.byNode, e.node, by);
    bump(this.byClient, e.flow.clientAddress, by);
    bump(this.bySource, this.sourceOf(e.flow.clientAddress), by);
    bump(this.byVip, e.flow.vipAddress, by);
  }
}
