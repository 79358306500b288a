// The target node's side of handoffs, as one object the node wires to its links: the messages of
// the routing nodes (offer, commit, live, abort) and of the local target applications (decided,
// moved, release), and the operator's views and moves. Each job is its own part:
//
//   target/applications.ts  the node's one registry of target applications (links and listings)
//   target/admission.ts     what an offer must pass before anything is built, and its refusals
//   target/handoffs.ts      each transfer's phases (target/phases.ts) until its connection is live
//   target/capacity.ts      what each application and each routing node holds here
//   target/served.ts        the connections live here, until released or moved on
//   target/moves.ts         operator moves, asked of the application serving the connection
import { BatonError } from '../errors.js';
import type { Logger } from '../log.js';
import type { FlowKey } from '../flow.js';
import type { Channel } from './channel.js';
import type { Decoded } from './messages.js';
import type { HandoffSockets } from './sockets.js';
import { capacityOf, type OfferPolicy, type OfferRefusal, OfferRefusals } from './target/admission.js';
import { type TargetApp, TargetApplications } from './target/applications.js';
import { Holdings } from './target/capacity.js';
import { type FromPeer, TargetHandoffs } from './target/handoffs.js';
import { OperatorMoves } from './target/moves.js';
import { ServedConnections, type ServedView } from './target/served.js';

export { DEFAULT_OFFER_BYTES_PER_PEER, DEFAULT_OFFERS_PER_PEER, type OfferPolicy } from './target/admission.js';
export type { TargetApp } from './target/applications.js';
export type { ServedView } from './target/served.js';

/** What the routing nodes say about a transfer here; the rest of a peer link is the node's (peer-front.ts). */
export type TransferFromPeer = Extract<FromPeer, 'offer' | 'commit' | 'live' | 'abort'>;

export class TargetRelay {
  private readonly holdings = new Holdings();
  private readonly connections = new ServedConnections();
  private readonly moves: OperatorMoves;
  private readonly refused: OfferRefusals;
  private readonly handoffs: TargetHandoffs;
  private readonly sweeper: NodeJS.Timeout;

  constructor(
    private readonly log: Logger,
    /** A handoff the routing node neither finished nor aborted within this time is dropped here. */
    staleAfterMs: number,
    sockets: HandoffSockets,
    private readonly policy: OfferPolicy,
    /** A flow routed here whose application is gone: the node releases its routing-table entry. */
    onOrphan: (flow: FlowKey, connId: string) => void = () => undefined,
    /** A connection went live here (its 4-tuple may be one an earlier connection is still closing). */
    onLive: (flow: FlowKey) => void = () => undefined,
    /** The node's registry of target applications, which its control server publishes too. */
    readonly applications = new TargetApplications(),
  ) {
    this.moves = new OperatorMoves(log);
    this.refused = new OfferRefusals(log);
    this.handoffs = new TargetHandoffs({ log, staleAfterMs, sockets, policy, applications, holdings: this.holdings, served: this.connections, refusals: this.refused, onOrphan, onLive });
    this.sweeper = setInterval(() => this.handoffs.sweep(), Math.max(1000, staleAfterMs / 2));
    this.sweeper.unref();
  }

  /** An application's hello on the agent socket: offers on its ports may go to it. */
  register(app: TargetApp): void {
    this.applications.link(app);
    const capacity = capacityOf(this.applications, this.policy, app);
    this.log.info({ app: app.name, instance: app.instance, ports: app.ports, decides: app.decides, capacity }, 'target application registered');
  }

  /** Its link closed: its moves fail, its transfers are refused, what it held counts no more. */
  unregister(app: TargetApp): void {
    this.moves.appGone(app);
    this.applications.unlink(app);
    this.handoffs.appGone(app);
    this.holdings.forget(app);
  }

  /** Offers this relay refused, by kind, every kind present. */
  refusals(): Record<OfferRefusal, number> {
    return this.refused.view();
  }

  peerClosed(peer: Channel<FromPeer>): void {
    this.handoffs.peerClosed(peer);
  }

  /** A message about a transfer, from the peer link authenticated as peerName (its certificate, then its hello). */
  fromPeer(peer: Channel<FromPeer>, d: Decoded<TransferFromPeer>, peerName: string): void {
    const { msg, blobs } = d;
    switch (msg.type) {
      case 'offer':
        return this.handoffs.offer(peer, peerName, msg, blobs);
      case 'commit':
        return this.handoffs.commit(peer, msg, blobs[0]!);
      case 'live':
        return this.handoffs.live(peer, msg);
      case 'abort':
        return this.handoffs.abort(peer, msg);
    }
  }

  /** A target application's answer: to an offer (decided) or to an operator's move (moved). */
  fromApp(app: TargetApp, d: Decoded<'decided' | 'moved'>): void {
    const { msg } = d;
    if (msg.type === 'decided') this.handoffs.decided(app, msg);
    else if (msg.type === 'moved') this.moves.moved(app, msg);
  }

  /** The application says a connection it served has closed: its flow, if it was the application's. */
  released(app: TargetApp, connId: string): FlowKey | undefined {
    const o = this.connections.released(app, connId);
    if (o) this.holdings.hold(app, -1);
    return o?.flow;
  }

  /** The application is gone: every connection it served is gone with it. */
  releasedAll(app: TargetApp): Array<{ connId: string; flow: FlowKey }> {
    return this.connections.releasedAll(app).map(({ connId, flow }) => ({ connId, flow }));
  }

  /** The connection moved on from this node: it is no longer ours to release. */
  movedOn(flow: FlowKey): void {
    const o = this.connections.movedOn(flow);
    if (o) this.holdings.hold(o.app, -1);
  }

  /** The connection live here with this 4-tuple, if any. */
  served(flow: FlowKey): ServedView | undefined {
    return this.connections.served(flow);
  }

  /** How many connections are live in target applications here. */
  get servedCount(): number {
    return this.connections.size;
  }

  /** A page of the connections live in target applications here (ServedConnections.page). */
  page(q: { after?: number; limit: number; client?: string }): { total?: number; entries: ServedView[]; next?: string } {
    return this.connections.page(q);
  }

  /**
   * Asks the application serving connId to move it to node (operator request). Resolves once the
   * application reports the move done; rejects with its reason, or when it does not answer in time.
   */
  requestMove(connId: string, node: string, timeoutMs: number): Promise<void> {
    const o = this.connections.get(connId);
    if (!o) return Promise.reject(new BatonError('E_NOT_FOUND', 'no connection with this id is served on this node', { connId, step: 'move' }));
    return this.moves.request(o, node, timeoutMs);
  }

  close(): void {
    clearInterval(this.sweeper);
    this.handoffs.close();
  }
}
