// The distributor's authority over its connection routing table. Every handoff, whether it starts
// here (first transfer) or on the node currently serving the connection (a transfer again, claim
// 10), changes the table only through these calls, which check that the requester owns the flow:
//
//   freeze(R, flow)        R serves the flow now: the distributor itself when there is no entry,
//                          or the node the entry forwards to. The entry it replaces is remembered,
//                          and named in the frozen entry itself (see recovery below). A new
//                          handed-off connection must fit the quotas: the table's total and the
//                          client address's share (E_QUOTA), so no client can fill the table.
//   forward(R, flow, T)    only after R's freeze; T is the new owner (no entry when T is the
//                          distributor: its own kernel serves the flow).
//   unfreeze(R, flow)      only after R's freeze: puts the remembered entry back (rollback).
//   release(R, flow)       R serves the flow and its application has closed it: the entry becomes
//                          RELEASED (still forwarding, SYNs too: TCP's closing handshake goes on).
//   finished(R, flow)      R's kernel is done with the flow too (no socket, or TIME_WAIT; see
//                          close-watcher.ts): the entry becomes FINISHED (a new SYN on the tuple
//                          reclaims it in XDP) and is removed after releaseGraceMs. A RELEASED
//                          entry whose owner never says so (it died) goes after releasedMaxMs.
//
// Every change goes to the BPF map and to the in-memory index (table-index.ts) together, so
// listings and counts never walk the map. A freeze nobody finishes (its owner died mid-handoff)
// is rolled back after a bound.
//
// Recovery. A distributor whose batond died mid-handoff leaves FROZEN entries in the pinned map,
// and XDP drops those clients' packets for as long as they stay. The new batond finds them at
// start (and the reconciler any that appear later): a flow the distributor served before the
// freeze (the entry names node 0 or itself) is its own kernel's again, so the entry goes at once
// (a socket the routing application resumed gets the packets; without one the kernel resets the
// client). A flow that another node served (a transfer again) is given back to that node if its
// kernel still holds the socket, asked with a probe bounded by one step timeout, and removed
// otherwise.
import { BatonError } from '../errors.js';
import type { Logger } from '../log.js';
import { type ClusterConfig, type NodeConfig, preferredDistributor } from '../config/cluster.js';
import { connectionId, type FlowKey } from '../flow.js';
import type { RoutingTable } from './routing-table.js';
import type { RouteEntry } from './table-layout.js';
import { type IndexedRoute, TableIndex } from './table-index.js';
import { Quotas } from './quotas.js';
import { MAX_FLOWS_PER_MESSAGE } from '../transfer/messages.js';
import { errorText } from '../input.js';

interface FreezeRecord {
  flow: FlowKey;
  /** The node that froze it, or RECOVERY for an entry frozen by a previous batond. */
  owner: string;
  previous: RouteEntry | undefined;
  since: number;
}

export type TableOps = Pick<RoutingTable, 'get' | 'freeze' | 'forward' | 'release' | 'finish' | 'remove' | 'entries' | 'entriesAfter'>;

/** Asks a node which of these flows its kernel holds: one TCP state name per flow, GONE for none. */
export type Prober = (node: string, flows: FlowKey[]) => Promise<string[]>;

/** How long a RELEASED entry waits for its owner's finished before it goes anyway, unless configured. */
const DEFAULT_RELEASED_MAX_MS = 300_000;
/** The freeze owner of entries a previous batond left frozen, while they are being recovered. */
const RECOVERY = '(recovery)';
/** Keys the reconciler reads per turn of the event loop: a few milliseconds at most. */
const RECONCILE_STEP = 1024;
export const RECONCILE_EVERY_MS = 30_000;

export class RouteService {
  /** The table as this service wrote it: counts and pages without walking the map. */
  readonly index: TableIndex;
  private readonly frozen = new Map<string, FreezeRecord>();
  private readonly releasing = new Map<string, NodeJS.Timeout>();
  private readonly sweeper: NodeJS.Timeout;
  private readonly reconciler: NodeJS.Timeout;
  private reconciling = false;
  /** Entries found at start that named this node itself (a backup that took over). */
  ownAdopted = 0;
  private closed = false;
  private readonly byId: Map<number, NodeConfig>;
  /** Remote owners of entries left frozen by a previous batond, waiting for recover(). */
  private readonly toRecover = new Map<string, FlowKey[]>();
  /** How recover() asked the nodes: entries the reconciler finds frozen later are settled the same way. */
  private prober?: Prober;
  /** The quotas (limits) and how often each refused. */
  readonly quotas: Quotas;

  constructor(
    private readonly routes: TableOps,
    private readonly config: ClusterConfig,
    private readonly log: Logger,
    private readonly freezeLimitMs: number,
    /** The map's max_entries, from which the default total quota derives. */
    private readonly capacity: number,
    /** The distributor this service runs on: flows its own kernel serves have no entry. */
    private readonly self: string = preferredDistributor(config),
  ) {
    this.byId = new Map(config.nodes.map((n) => [n.id, n]));
    this.index = new TableIndex(config.limits?.ipv6SourcePrefix);
    this.quotas = new Quotas(config, capacity, this.index, log);
    // The pinned table outlives batond: learn it once, and take up what its previous life left.
    // Before any timer starts: a table that cannot be read leaves nothing to write to it later.
    try {
      for (const [flow, entry] of routes.entries()) this.adopt(flow, entry);
    } catch (err) {
      for (const t of this.releasing.values()) clearTimeout(t);
      throw err;
    }
    if (this.ownAdopted > 0) this.log.info({ entries: this.ownAdopted }, 'entries for connections this node serves removed: its own kernel serves them as the distributor');
    this.sweeper = setInterval(() => this.sweep(), Math.max(250, freezeLimitMs / 2)).unref();
    this.reconciler = setInterval(() => void this.reconcile(), RECONCILE_EVERY_MS).unref();
  }

  private adopt(flow: FlowKey, entry: RouteEntry): void {
    // A replica taken over (this node was a backup and a target): this kernel's own flows now.
    if (entry.state !== 'frozen' && this.byId.get(entry.targetNode)?.name === this.self) {
      this.routes.remove(flow);
      this.ownAdopted++;
      return;
    }
    this.index.set(flow, entry.state, entry.targetNode);
    if (entry.state === 'released') this.scheduleRemoval(flow, entry.targetNode, this.releasedMaxMs());
    else if (entry.state === 'finished') this.scheduleRemoval(flow, entry.targetNode, this.config.releaseGraceMs);
    else if (entry.state === 'frozen') this.recoverLater(flow, entry);
  }

  /** An entry frozen by a previous batond: the distributor's own flow goes back now; a node's waits for recover(). */
  private recoverLater(flow: FlowKey, entry: RouteEntry): void {
    const servedBy = this.byId.get(entry.targetNode);
    if (!servedBy || servedBy.name === this.self) {
      this.removeEntry(flow);
      this.log.warn({ flow: connectionId(flow) }, 'entry left frozen by a previous batond: removed (the flow is the distributor\'s own kernel\'s again)');
      return;
    }
    const key = connectionId(flow);
    this.frozen.set(key, { flow, owner: RECOVERY, previous: { ...entry, state: 'forward', targetMac: servedBy.mac }, since: Date.now() });
    const flows = this.toRecover.get(servedBy.name);
    if (flows) flows.push(flow);
    else this.toRecover.set(servedBy.name, [flow]);
  }

  /**
   * Gives each entry a previous batond left frozen for another node back to that node, if its
   * kernel still holds the socket, or removes it. Within one step timeout: a node that does not
   * answer in time keeps its flows (it served them a moment ago; if it died, so did they).
   */
  async recover(probe: Prober): Promise<void> {
    this.prober = probe;
    const work = [...this.toRecover];
    this.toRecover.clear();
    await Promise.all(
      work.map(async ([node, flows]) => {
        for (let i = 0; i < flows.length; i += MAX_FLOWS_PER_MESSAGE) {
          const batch = flows.slice(i, i + MAX_FLOWS_PER_MESSAGE);
          let states: string[] | undefined;
          try {
            states = await probe(node, batch);
          } catch (err) {
            this.log.warn({ node, flows: batch.length, err: (err as Error).message }, 'cannot ask a node about flows left frozen: given back to it');
          }
          batch.forEach((flow, j) => this.settleRecovery(flow, node, states?.[j]));
        }
      }),
    );
  }

  private settleRecovery(flow: FlowKey, node: string, state: string | undefined): void {
    // A probe answered after this service closed (its node stood down: the table is a replica now).
    if (this.closed) return;
    const key = connectionId(flow);
    const record = this.frozen.get(key);
    if (!record || record.owner !== RECOVERY) return;
    this.frozen.delete(key);
    if (state === 'GONE') {
      this.removeEntry(flow);
      this.log.warn({ flow: key, node }, 'entry left frozen by a previous batond: removed (the node it was moving from holds no socket)');
    } else {
      this.restore(flow, record);
      this.log.warn({ flow: key, node, state: state ?? 'unknown' }, 'entry left frozen by a previous batond: given back to the node serving it');
    }
  }

  release(requester: string, flow: FlowKey): void {
    const owner = this.node(requester, flow);
    const current = this.routes.get(flow);
    if (current?.state !== 'forward' || current.targetNode !== owner.id) throw this.refuse(`${requester} does not serve this flow`, flow, requester);
    this.routes.release(flow, { node: owner.id, mac: owner.mac });
    this.index.set(flow, 'released', owner.id);
    this.scheduleRemoval(flow, owner.id, this.releasedMaxMs());
  }

  finished(requester: string, flow: FlowKey): void {
    const owner = this.node(requester, flow);
    const current = this.routes.get(flow);
    const owned = (current?.state === 'released' || current?.state === 'forward' || current?.state === 'finished') && current.targetNode === owner.id;
    if (!owned) throw this.refuse(`${requester} does not serve this flow`, flow, requester);
    // Only now may a new SYN on the tuple reclaim the entry: the serving node's kernel, not the client, said the connection is over.
    this.routes.finish(flow, { node: owner.id, mac: owner.mac });
    this.index.set(flow, 'finished', owner.id);
    this.scheduleRemoval(flow, owner.id, this.config.releaseGraceMs);
  }

  private releasedMaxMs(): number {
    return this.config.releasedMaxMs ?? DEFAULT_RELEASED_MAX_MS;
  }

  private scheduleRemoval(flow: FlowKey, node: number, afterMs: number): void {
    const key = connectionId(flow);
    clearTimeout(this.releasing.get(key));
    const timer = setTimeout(() => {
      this.releasing.delete(key);
      const entry = this.routes.get(flow);
      // Only the entry we released: the tuple may have been reclaimed by a new connection since.
      if ((entry?.state === 'released' || entry?.state === 'finished') && entry.targetNode === node) this.removeEntry(flow);
      else if (!entry) this.index.delete(flow); // XDP reclaimed it (a new SYN after finished)
    }, afterMs);
    timer.unref();
    this.releasing.set(key, timer);
  }

  freeze(requester: string, flow: FlowKey): void {
    const key = connectionId(flow);
    const owner = this.node(requester, flow);
    if (this.frozen.has(key)) throw this.refuse('a handoff of this flow is already in progress', flow, requester);
    const current = this.routes.get(flow);
    // No entry: the distributor's own flow. An entry naming the distributor: its own flow too, named during a move of the DVIPA (pointAt).
    const isOwner = current === undefined ? owner.name === this.self : current.state === 'forward' && current.targetNode === owner.id;
    if (!isOwner) throw this.refuse(`${requester} does not serve this flow`, flow, requester);
    // A new handed-off connection (the distributor's own so far) takes a new entry: check the quotas.
    if (current === undefined) this.quotas.check(flow);
    this.routes.freeze(flow, current ? { node: current.targetNode, mac: current.targetMac } : undefined);
    this.index.set(flow, 'frozen', current?.targetNode ?? 0);
    this.frozen.set(key, { flow, owner: requester, previous: current, since: Date.now() });
  }

  /**
   * Would requester's freeze of flow fit the quotas? Asked before anything is exported, so a
   * refused handoff costs no offer; freeze() checks again (the table may have filled meanwhile).
   */
  admit(requester: string, flow: FlowKey): void {
    if (requester === this.self && !this.routes.get(flow)) this.quotas.check(flow);
  }

  forward(requester: string, flow: FlowKey, targetName: string): void {
    this.heldFreeze(requester, flow);
    const target = this.node(targetName, flow);
    if (target.name === this.self) this.removeEntry(flow);
    else {
      this.routes.forward(flow, { node: target.id, mac: target.mac });
      this.index.set(flow, 'forward', target.id, Date.now());
    }
    this.frozen.delete(connectionId(flow));
  }

  /**
   * Reconciliation (ha/served.ts): node's kernel serves flow live, so the entry names it, or none
   * names this distributor's own flow, unless keepOwn (a move of the DVIPA: the next distributor
   * must steer it here). Frozen flows are recovery's. True when the table changed.
   */
  pointAt(flow: FlowKey, nodeName: string, keepOwn = false): boolean {
    const node = this.node(nodeName, flow);
    const current = this.routes.get(flow);
    if (this.frozen.has(connectionId(flow)) || current?.state === 'frozen' || (current && current.targetNode === node.id)) return false;
    if (node.name === this.self && !keepOwn) {
      if (current) this.removeEntry(flow);
      return current !== undefined;
    }
    this.routes.forward(flow, { node: node.id, mac: node.mac });
    this.index.set(flow, 'forward', node.id, Date.now());
    return true;
  }

  /** Removes the entry if the index still holds this very record (every change makes a new one) and no handoff holds it. */
  dropIf(record: IndexedRoute): boolean {
    if (this.index.get(record.flow) !== record || this.frozen.has(record.id)) return false;
    this.removeEntry(record.flow);
    return true;
  }

  /** The flows the table holds (the index: no walk) and can hold (the map's max_entries, known since start). */
  tableSize(): { entries: number; capacity: number } {
    return { entries: this.index.size, capacity: this.capacity };
  }

  /** Does the table say node serves flow (its entry forwards there)? What a target asks before it takes an offer from that node. */
  serves(node: string, flow: FlowKey): boolean {
    const entry = this.routes.get(flow);
    return entry?.state === 'forward' && this.byId.get(entry.targetNode)?.name === node;
  }

  /** When this batond pointed flow at its node (ms since the epoch); undefined if before a restart, or gone. */
  installedAt(flow: FlowKey): number | undefined {
    return this.index.get(flow)?.since;
  }

  unfreeze(requester: string, flow: FlowKey): void {
    this.restore(flow, this.heldFreeze(requester, flow));
    this.frozen.delete(connectionId(flow));
  }

  close(): void {
    this.closed = true;
    clearInterval(this.sweeper);
    clearInterval(this.reconciler);
    for (const t of this.releasing.values()) clearTimeout(t);
  }

  /**
   * requester's freeze of flow. Its record goes only after the table change that ends the freeze
   * succeeded: a change refused or failed leaves the entry frozen, and the record is what the
   * sweep restores it from.
   */
  private heldFreeze(requester: string, flow: FlowKey): FreezeRecord {
    const record = this.frozen.get(connectionId(flow));
    if (!record || record.owner !== requester) throw this.refuse(`no freeze by ${requester} for this flow`, flow, requester);
    return record;
  }

  private restore(flow: FlowKey, record: FreezeRecord): void {
    const prev = record.previous;
    if (prev?.state === 'forward') {
      this.routes.forward(flow, { node: prev.targetNode, mac: prev.targetMac });
      this.index.set(flow, 'forward', prev.targetNode);
    } else this.removeEntry(flow);
  }

  private removeEntry(flow: FlowKey): void {
    this.routes.remove(flow);
    this.index.delete(flow);
  }

  private node(name: string, flow: FlowKey): NodeConfig {
    const node = this.config.nodes.find((n) => n.name === name);
    if (!node) throw this.refuse(`unknown node ${name}`, flow, name);
    return node;
  }

  private refuse(why: string, flow: FlowKey, requester: string): BatonError {
    return new BatonError('E_HANDOFF_STATE', `routing table change refused: ${why}`, { step: 'route', node: requester, flow: connectionId(flow) });
  }

  private sweep(): void {
    const now = Date.now();
    for (const [key, record] of this.frozen) {
      if (now - record.since < this.freezeLimitMs) continue;
      this.frozen.delete(key);
      this.restore(record.flow, record);
      this.log.warn({ flow: key, owner: record.owner }, 'freeze never finished: entry restored');
    }
  }

  /**
   * Brings the index back in line with the map, which XDP (a reclaimed tuple) or an operator
   * (bpftool) may have changed: reads the map a few keys per turn of the event loop, so a table
   * of 200,000 entries takes some seconds of background work and never blocks a handoff. An entry
   * written meanwhile is left as this service wrote it.
   */
  async reconcile(): Promise<{ added: number; removed: number }> {
    if (this.reconciling || this.closed) return { added: 0, removed: 0 };
    this.reconciling = true;
    try {
      const before = this.index.ids();
      const seen = new Set<string>();
      let added = 0;
      // Bounded even if entries keep vanishing under the walk (each restarts it from the first
      // key): the map never holds more than its capacity, so a walk that has read three times as
      // many keys is restarting. (Not the index's size: entries written behind batond's back,
      // however many, must all be taken up in one pass.)
      let budget = 3 * (Math.max(before.length, this.capacity) + RECONCILE_STEP);
      for (let prev: Buffer | null = null; budget > 0; budget -= RECONCILE_STEP) {
        const { entries, last } = this.routes.entriesAfter(prev, RECONCILE_STEP);
        for (const [flow, entry] of entries) {
          const id = connectionId(flow);
          seen.add(id);
          if (!this.index.getById(id)) {
            // Taken up as at start: a closing entry gets its removal, a frozen one its recovery.
            this.adopt(flow, entry);
            added++;
          }
        }
        if (!last) break;
        prev = last;
        await new Promise((r) => setImmediate(r));
        if (this.closed) return { added, removed: 0 };
      }
      if (budget <= 0) return { added, removed: 0 }; // the walk never ended: judge no entry missing
      let removed = 0;
      for (const id of before) {
        // Gone from the map, and not rewritten by this service since the walk began.
        const e = seen.has(id) ? undefined : this.index.getById(id);
        if (e && !this.routes.get(e.flow)) {
          this.index.deleteId(id);
          removed++;
        }
      }
      if (added || removed) this.log.info({ added, removed, entries: this.index.size }, 'routing-table index reconciled with the map');
      if (this.toRecover.size > 0 && this.prober) {
        this.recover(this.prober).catch((err: unknown) => this.log.error({ err: errorText(err) }, 'recovering frozen entries the reconciler found failed; the sweep will restore them'));
      }
      return { added, removed };
    } finally {
      this.reconciling = false;
    }
  }
}
