// The distributor's authority over its connection routing table. Every handoff, whether it starts
// here (first transfer) or on the node currently serving the connection (a transfer again, claim
// 10), changes the table only through these three calls, which check that the requester owns the
// flow:
//
//   freeze(R, flow)        R serves the flow now: the distributor itself when there is no entry,
//                          or the node the entry forwards to. The entry it replaces is remembered.
//   forward(R, flow, T)    only after R's freeze; T is the new owner (no entry when T is the
//                          distributor: its own kernel serves the flow).
//   unfreeze(R, flow)      only after R's freeze: puts the remembered entry back (rollback).
//   release(R, flow)       R serves the flow and its application has closed it: the entry becomes
//                          RELEASED (still forwarding: TCP's closing handshake goes on; a new SYN
//                          on the tuple reclaims it in XDP).
//   finished(R, flow)      R's kernel is done with the flow too (no socket, or TIME_WAIT; see
//                          close-watcher.ts): the entry is removed after releaseGraceMs. A RELEASED
//                          entry whose owner never says so (it died) goes after releasedMaxMs.
//
// A freeze nobody finishes (its owner died mid-handoff) is rolled back after a bound.
import { BatonError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ClusterConfig, NodeConfig } from '../config/cluster.js';
import { describeFlow, type FlowKey, type RouteEntry, type RoutingTable } from './routing-table.js';

interface FreezeRecord {
  flow: FlowKey;
  owner: string;
  previous: RouteEntry | undefined;
  since: number;
}

export type TableOps = Pick<RoutingTable, 'get' | 'freeze' | 'forward' | 'release' | 'remove' | 'entries'>;

/** How long a RELEASED entry waits for its owner's finished before it goes anyway, unless configured. */
const DEFAULT_RELEASED_MAX_MS = 300_000;

export class RouteService {
  private readonly frozen = new Map<string, FreezeRecord>();
  private readonly releasing = new Map<string, NodeJS.Timeout>();
  /** When each flow was last pointed at a node, for the API's connection age. */
  private readonly installed = new Map<string, { flow: FlowKey; at: number }>();
  private readonly sweeper: NodeJS.Timeout;
  private readonly pruner: NodeJS.Timeout;

  constructor(
    private readonly routes: TableOps,
    private readonly config: ClusterConfig,
    private readonly log: Logger,
    private readonly freezeLimitMs: number,
  ) {
    this.sweeper = setInterval(() => this.sweep(), Math.max(250, freezeLimitMs / 2));
    this.sweeper.unref();
    // Entries also leave the table without us (XDP deletes one a new SYN reclaims): forget their
    // install times now and then rather than on every sweep, which would cost a lookup per flow.
    this.pruner = setInterval(() => this.pruneInstalled(), 60_000);
    this.pruner.unref();
    // Released entries outlive a controller restart in the pinned table, but whether their owner
    // already said finished does not: give them the longer bound again.
    for (const [flow, entry] of routes.entries()) if (entry.state === 'released') this.scheduleRemoval(flow, entry.targetNode, this.releasedMaxMs());
  }

  release(requester: string, flow: FlowKey): void {
    const owner = this.node(requester, flow);
    const current = this.routes.get(flow);
    if (current?.state !== 'forward' || current.targetNode !== owner.id) throw this.refuse(`${requester} does not serve this flow`, flow, requester);
    this.routes.release(flow, { node: owner.id, mac: owner.mac });
    this.scheduleRemoval(flow, owner.id, this.releasedMaxMs());
  }

  finished(requester: string, flow: FlowKey): void {
    const owner = this.node(requester, flow);
    const current = this.routes.get(flow);
    const owned = (current?.state === 'released' || current?.state === 'forward') && current.targetNode === owner.id;
    if (!owned) throw this.refuse(`${requester} does not serve this flow`, flow, requester);
    if (current.state === 'forward') this.routes.release(flow, { node: owner.id, mac: owner.mac });
    this.scheduleRemoval(flow, owner.id, this.config.releaseGraceMs);
  }

  private releasedMaxMs(): number {
    return this.config.releasedMaxMs ?? DEFAULT_RELEASED_MAX_MS;
  }

  private scheduleRemoval(flow: FlowKey, node: number, afterMs: number): void {
    const key = describeFlow(flow);
    clearTimeout(this.releasing.get(key));
    const timer = setTimeout(() => {
      this.releasing.delete(key);
      const entry = this.routes.get(flow);
      // Only the entry we released: the tuple may have been reclaimed by a new connection since.
      if (entry?.state === 'released' && entry.targetNode === node) {
        this.routes.remove(flow);
        this.installed.delete(key);
      }
    }, afterMs);
    timer.unref();
    this.releasing.set(key, timer);
  }

  freeze(requester: string, flow: FlowKey): void {
    const key = describeFlow(flow);
    const owner = this.node(requester, flow);
    if (this.frozen.has(key)) throw this.refuse('a handoff of this flow is already in progress', flow, requester);
    const current = this.routes.get(flow);
    const isOwner =
      owner.name === this.config.distributor ? current === undefined : current?.state === 'forward' && current.targetNode === owner.id;
    if (!isOwner) throw this.refuse(`${requester} does not serve this flow`, flow, requester);
    this.routes.freeze(flow);
    this.frozen.set(key, { flow, owner: requester, previous: current, since: Date.now() });
  }

  forward(requester: string, flow: FlowKey, targetName: string): void {
    this.takeFreeze(requester, flow);
    const target = this.node(targetName, flow);
    if (target.name === this.config.distributor) {
      this.routes.remove(flow);
      this.installed.delete(describeFlow(flow));
    } else {
      this.routes.forward(flow, { node: target.id, mac: target.mac });
      this.installed.set(describeFlow(flow), { flow, at: Date.now() });
    }
  }

  /** When the flow was last pointed at its node by this service (undefined: before a restart, or gone). */
  installedAt(flow: FlowKey): number | undefined {
    return this.installed.get(describeFlow(flow))?.at;
  }

  private pruneInstalled(): void {
    for (const [key, { flow }] of this.installed) if (!this.routes.get(flow)) this.installed.delete(key);
  }

  unfreeze(requester: string, flow: FlowKey): void {
    const record = this.takeFreeze(requester, flow);
    this.restore(flow, record);
  }

  close(): void {
    clearInterval(this.sweeper);
    clearInterval(this.pruner);
    for (const t of this.releasing.values()) clearTimeout(t);
  }

  private takeFreeze(requester: string, flow: FlowKey): FreezeRecord {
    const key = describeFlow(flow);
    const record = this.frozen.get(key);
    if (!record || record.owner !== requester) throw this.refuse(`no freeze by ${requester} for this flow`, flow, requester);
    this.frozen.delete(key);
    return record;
  }

  private restore(flow: FlowKey, record: FreezeRecord): void {
    const prev = record.previous;
    if (prev?.state === 'forward') this.routes.forward(flow, { node: prev.targetNode, mac: prev.targetMac });
    else {
      this.routes.remove(flow);
      this.installed.delete(describeFlow(flow));
    }
  }

  private node(name: string, flow: FlowKey): NodeConfig {
    const node = this.config.nodes.find((n) => n.name === name);
    if (!node) throw this.refuse(`unknown node ${name}`, flow, name);
    return node;
  }

  private refuse(why: string, flow: FlowKey, requester: string): BatonError {
    return new BatonError('E_HANDOFF_STATE', `routing table change refused: ${why}`, { step: 'route', node: requester, flow: describeFlow(flow) });
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
}
