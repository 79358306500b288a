// The target node's side of a handoff: batond reinstates each offered connection itself, in
// repair mode, completes it with the routing node's delta, makes it live once the route points
// here, and only then hands the socket's descriptor to the target application registered for the
// DVIPA port (fd-exchange.ts), with the state and peeked bytes it resumes from. The application
// hears of a transfer once (transferred), or twice when it decides on offers itself (decide).
// Either party vanishing is turned into a clean reject or abort.
//
// An offer is checked before any socket is touched (docs/protocol.md, "What a target checks"): the
// connection is to a DVIPA of the cluster, on the port the offer names and the chosen application
// registered; the offer names as its sender the node whose certificate the link proved; that node
// has no more than its share of offers and bytes in flight here; and an offer from a node other
// than the distributor (a transfer again) waits until the distributor confirms that node serves
// the flow (OfferPolicy.confirmOwner): one round trip more for a move, none for a first handoff,
// and nothing is built for a node that claims a connection it does not serve. Each refusal is a
// reject with its reason, counted by kind (refusals(), offerRefusals()).
import { performance } from 'node:perf_hooks';
import { BatonError, isBatonError } from '../errors.js';
import type { Logger } from '../log.js';
import { connectionId, type FlowKey, flowOf } from '../flow.js';
import { PagedMap } from '../agent/paged-map.js';
import type { TcpConnectionState } from '../../native/repair.js';
import type { Channel } from './channel.js';
import { errorText } from '../input.js';
import { type Accepts, connFromWire, type Decoded, type Message } from './messages.js';
import type { HandoffSockets } from './sockets.js';

type FromPeer = (typeof Accepts.agentFromPeer)[number];
type FromTarget = (typeof Accepts.agentFromTarget)[number];

/**
 * When live comes without the old socket's closing clock (the routing application never
 * confirmed its close), the clock is estimated as the snapshot's plus the time since the import
 * plus this much: the old socket may have gone on stamping segments for a while. Ahead costs
 * inflated first RTT samples; behind would cost PAWS drops.
 */
const TIMESTAMP_ESTIMATE_SLACK_MS = 1000;

/** Offers one peer may have in flight here unless configured (limits.offersPerPeer): what a routing node runs at once by default. */
export const DEFAULT_OFFERS_PER_PEER = 4096;
/** Bytes of queues and peeked bytes those offers may hold here unless configured (limits.offerBytesPerPeer). */
export const DEFAULT_OFFER_BYTES_PER_PEER = 256 * 1024 * 1024;

/** Why an offer was refused, as baton_offers_refused_total labels it. */
export const OFFER_REFUSALS = [
  'wrong-sender',
  'not-dvipa',
  'wrong-port',
  'not-owner',
  'peer-offers',
  'peer-bytes',
  'no-application',
  'duplicate',
  'capacity',
  'invalid-state',
  'out-of-order',
] as const;
export type OfferRefusal = (typeof OFFER_REFUSALS)[number];

// Every relay of the process adds here too, for the node's counter (one relay per batond).
const refusedTotals = new Map<OfferRefusal, number>();

/** Offers refused since the process started, by kind, every kind present: for a Prometheus counter. */
export function offerRefusals(): Record<OfferRefusal, number> {
  return Object.fromEntries(OFFER_REFUSALS.map((r) => [r, refusedTotals.get(r) ?? 0])) as Record<OfferRefusal, number>;
}

/** What a target trusts an offer with: the cluster's DVIPAs, its distributor's word, its bounds per peer. */
export interface OfferPolicy {
  /** Is this one of the cluster's virtual IPs (the config's, or one an operator added)? */
  isDvipa(address: string): boolean;
  /** The distributor: it owns the routing table, so an offer it sends needs no confirmation. */
  distributor: string;
  /**
   * Resolves once the distributor confirms that node serves flow (its routing table forwards the
   * flow there); rejects, saying why, when it does not or cannot say within the step timeout.
   */
  confirmOwner(node: string, flow: FlowKey, connId: string): Promise<void>;
  /** Offers one peer may have in flight here (offer until live, abort or reject). */
  offersPerPeer: number;
  /** Bytes (send queue, receive queue, peeked) those offers may hold here. */
  offerBytesPerPeer: number;
  /** Connections an application that names no capacity serves at once (limits.targetCapacity). */
  targetCapacity: number;
}

export interface TargetApp {
  name: string;
  /** The instance name it registered on the control socket; offers may ask for it. */
  instance?: string;
  ports: number[];
  channel: Channel<FromTarget>;
  /** Where its transferred sockets' descriptors go (its descriptor link, fd-exchange.ts). */
  descriptors: { send(fd: number, connId: string): void };
  /** It answers each offer itself (decide → decided); otherwise batond accepts up to capacity. */
  decides: boolean;
  /** Connections it serves at once beyond which offers are refused; 0: no limit; absent: the cluster's default (limits.targetCapacity). */
  capacity?: number;
}

interface Pending {
  peer: Channel<FromPeer>;
  /** The node the peer link authenticated, whose share of offers and bytes this one counts in. */
  peerName: string;
  /** Bytes of the offer's blobs, held until the transfer ends here. */
  bytes: number;
  /** The distributor confirmed the sender serves the flow (or the sender is the distributor). */
  ownerConfirmed: boolean;
  /** accept was sent: only then may commit and live come. */
  accepted: boolean;
  importUs?: number;
  app: TargetApp;
  flow: FlowKey;
  since: number;
  from: string;
  state: TcpConnectionState;
  appState: unknown;
  peeked: Buffer;
  /** The reinstated socket, once imported. */
  fd?: number;
  importedAt?: number;
}

interface Served {
  connId: string;
  app: TargetApp;
  flow: FlowKey;
  since: number;
}

/** A live connection as views show it. */
export interface ServedView {
  connId: string;
  flow: FlowKey;
  app: string;
  instance?: string;
  since: number;
}

const view = (o: Served): ServedView => ({ connId: o.connId, flow: o.flow, app: o.app.name, instance: o.app.instance, since: o.since });

export class TargetRelay {
  private readonly byPort = new Map<number, TargetApp[]>();
  private readonly pending = new Map<string, Pending>();
  /**
   * Connections live in a target application here, by connection id, released when they close;
   * listed a page at a time (an operator's view of 100,000 of them must not block a handoff), and
   * found by their 4-tuple too (byFlow).
   */
  private readonly owned = new PagedMap<Served>();
  private readonly byFlow = new Map<string, string>();
  /** How many connections each application serves or is being given: what its capacity bounds. */
  private readonly holding = new Map<TargetApp, number>();
  /** Operator moves waiting for the application's answer, by connection id. */
  private readonly moving = new Map<string, { app: TargetApp; settle: (err?: Error) => void }>();
  /**
   * Transfers whose application died while pending, by connection id. Our reject may arrive after
   * the routing node has already switched the route (the application died after we said ready):
   * its 'live' then names a flow nobody here serves, which must be released or its entry would
   * steer the client to a dead socket forever. Forgotten after staleAfterMs.
   */
  private readonly orphans = new Map<string, { flow: FlowKey; since: number }>();
  /** Offers in flight here and the bytes they hold, by the node that sent them. */
  private readonly perPeer = new Map<string, { offers: number; bytes: number }>();
  private readonly refused = new Map<OfferRefusal, number>();
  private readonly sweeper: NodeJS.Timeout;

  constructor(
    private readonly log: Logger,
    /** A handoff the routing node neither finished nor aborted within this time is dropped here. */
    private readonly staleAfterMs: number,
    private readonly sockets: HandoffSockets,
    private readonly policy: OfferPolicy,
    /** A flow routed here whose application is gone: the node releases its routing-table entry. */
    private readonly onOrphan: (flow: FlowKey, connId: string) => void = () => undefined,
    /** A connection went live here (its 4-tuple may be one an earlier connection is still closing). */
    private readonly onLive: (flow: FlowKey) => void = () => undefined,
  ) {
    this.sweeper = setInterval(() => this.sweep(), Math.max(1000, staleAfterMs / 2));
    this.sweeper.unref();
  }

  register(app: TargetApp): void {
    for (const port of app.ports) {
      const apps = (this.byPort.get(port) ?? []).filter((a) => !(app.instance && a.instance === app.instance));
      this.byPort.set(port, [...apps, app]);
    }
    this.log.info({ app: app.name, instance: app.instance, ports: app.ports, decides: app.decides, capacity: app.capacity ?? this.policy.targetCapacity }, 'target application registered');
  }

  unregister(app: TargetApp): void {
    for (const m of this.moving.values()) if (m.app === app) m.settle(new BatonError('E_PEER', `target application ${app.name} went away`, { step: 'move' }));
    for (const port of app.ports) {
      const apps = (this.byPort.get(port) ?? []).filter((a) => a !== app);
      if (apps.length) this.byPort.set(port, apps);
      else this.byPort.delete(port);
    }
    for (const [connId, p] of this.pending) {
      if (p.app !== app) continue;
      p.peer.send('reject', { connId, reason: `target application ${app.name} went away` });
      this.drop(connId, p);
      this.orphans.set(connId, { flow: p.flow, since: Date.now() });
    }
    this.holding.delete(app);
  }

  /** The instance asked for, or, when the offer names none, the first application on the port. */
  private pick(port: number, instance?: string): TargetApp | undefined {
    const apps = this.byPort.get(port) ?? [];
    return instance ? apps.find((a) => a.instance === instance) : apps[0];
  }

  /** Offers this relay refused, by kind, every kind present. */
  refusals(): Record<OfferRefusal, number> {
    return Object.fromEntries(OFFER_REFUSALS.map((r) => [r, this.refused.get(r) ?? 0])) as Record<OfferRefusal, number>;
  }

  peerClosed(peer: Channel<FromPeer>): void {
    for (const [connId, p] of this.pending) {
      if (p.peer !== peer) continue;
      this.abort(connId, p, 'link to the routing node closed');
    }
  }

  /** A message from the peer link authenticated as peerName (its certificate, then its hello). */
  fromPeer(peer: Channel<FromPeer>, d: Decoded<FromPeer>, peerName: string): void {
    const { msg, blobs } = d;
    // Routing-table requests are the distributor's business (node-agent hands them to RouteService).
    if (msg.type === 'hello' || msg.type === 'route' || msg.type === 'listeners' || msg.type === 'probe') return;
    const connId = msg.connId;
    if (msg.type === 'offer') return this.offer(peer, peerName, msg, blobs);
    const orphan = this.orphans.get(connId);
    if (orphan && msg.type !== 'live') {
      // The routing node rolled back (our reject, or its own failure): nothing was routed here.
      this.orphans.delete(connId);
      return;
    }
    if (orphan) {
      this.orphans.delete(connId);
      this.log.warn({ connId, flow: connectionId(orphan.flow) }, 'routed here after its target application died: releasing the flow (the client sees a reset)');
      this.onOrphan(orphan.flow, connId);
      return;
    }
    const p = this.pending.get(connId);
    if (!p || p.peer !== peer) {
      this.log.warn({ connId, type: msg.type }, 'message for a transfer not pending here');
      if (msg.type === 'commit') peer.send('reject', { connId, reason: 'no pending transfer with this id' });
      return;
    }
    if (!p.accepted && (msg.type === 'commit' || msg.type === 'live')) {
      // Only a peer that ignores the protocol says this before our accept: nothing goes live (and
      // no routing entry is touched) on an offer whose sender the distributor has not vouched for.
      this.withdraw(connId, p);
      this.refuse(peer, connId, 'out-of-order', `${msg.type} before the offer was accepted`);
      return;
    }
    if (msg.type === 'commit') this.commit(connId, p, blobs[0]!, msg.unsentLength, msg.window);
    else if (msg.type === 'live') this.goLive(connId, p, msg.timestamp);
    else this.abort(connId, p, msg.reason);
  }

  /** Counts and answers a refusal; the caller has touched nothing, or undoes what it did. */
  private refuse(peer: Channel<FromPeer>, connId: string, kind: OfferRefusal, reason: string): void {
    this.refused.set(kind, (this.refused.get(kind) ?? 0) + 1);
    const n = (refusedTotals.get(kind) ?? 0) + 1;
    refusedTotals.set(kind, n);
    // A peer that floods refusals must not flood the log: the first ten of a kind, then every 1000th.
    if (n <= 10 || n % 1000 === 0) this.log.warn({ connId, refusal: kind, reason, refused: n }, 'offer refused');
    peer.send('reject', { connId, reason });
  }

  /**
   * Every check that needs no one else's word, before anything is touched; the reason to refuse,
   * or the application the offer is for.
   */
  private admit(peerName: string, msg: Message<'offer'>, bytes: number): { app: TargetApp } | { kind: OfferRefusal; reason: string } {
    const { conn, target } = msg;
    if (msg.from !== peerName) return { kind: 'wrong-sender', reason: `offer says it comes from ${msg.from} but arrived on ${peerName}'s link` };
    const share = this.perPeer.get(peerName) ?? { offers: 0, bytes: 0 };
    if (share.offers >= this.policy.offersPerPeer) return { kind: 'peer-offers', reason: `${peerName} has ${share.offers} offers in flight here, the most it may` };
    if (share.bytes + bytes > this.policy.offerBytesPerPeer) {
      return { kind: 'peer-bytes', reason: `${peerName}'s offers would hold ${share.bytes + bytes} bytes here (this one ${bytes} bytes), more than ${this.policy.offerBytesPerPeer}` };
    }
    if (!this.policy.isDvipa(conn.local.address)) return { kind: 'not-dvipa', reason: `the connection is to ${conn.local.address}, which is not a DVIPA of this cluster` };
    const app = this.pick(target.port, target.instance);
    if (!app) {
      const what = target.instance ? `instance ${target.instance} on port ${target.port}` : `port ${target.port}`;
      return { kind: 'no-application', reason: `no target application serves ${what} on this node` };
    }
    // The application registered target.port (pick found it there): the connection must be to it.
    if (conn.local.port !== target.port) return { kind: 'wrong-port', reason: `the connection is to port ${conn.local.port}, the offer is for port ${target.port}` };
    return { app };
  }

  private offer(peer: Channel<FromPeer>, peerName: string, msg: Message<'offer'>, blobs: Buffer[]): void {
    const connId = msg.connId;
    const [sendQueue, recvQueue, peeked] = blobs as [Buffer, Buffer, Buffer];
    const bytes = sendQueue.length + recvQueue.length + peeked.length;
    const admitted = this.admit(peerName, msg, bytes);
    if ('kind' in admitted) return this.refuse(peer, connId, admitted.kind, admitted.reason);
    const { app } = admitted;
    if (this.pending.has(connId)) return this.refuse(peer, connId, 'duplicate', 'a transfer of this connection is already pending here');
    const held = this.holding.get(app) ?? 0;
    const capacity = app.capacity ?? this.policy.targetCapacity;
    if (capacity > 0 && held >= capacity) {
      return this.refuse(peer, connId, 'capacity', `target application ${app.instance ?? app.name} is at capacity (${capacity} connections)`);
    }
    let state: TcpConnectionState;
    try {
      state = connFromWire(msg.conn, sendQueue, recvQueue, connId);
    } catch (err) {
      return this.refuse(peer, connId, 'invalid-state', errorText(err));
    }
    const flow = flowOf(state);
    const ownerConfirmed = peerName === this.policy.distributor;
    const p: Pending = { peer, peerName, bytes, ownerConfirmed, accepted: false, app, flow, since: Date.now(), from: msg.from, state, appState: msg.appState, peeked };
    this.pending.set(connId, p);
    this.holding.set(app, held + 1);
    this.share(peerName, 1, bytes);
    const start = () => {
      if (app.decides) app.channel.send('decide', { connId, from: msg.from, client: { ...state.remote }, appState: msg.appState }, [peeked]);
      else this.reinstate(connId, p);
    };
    if (ownerConfirmed) return start();
    this.policy.confirmOwner(peerName, flow, connId).then(
      () => {
        if (this.pending.get(connId) !== p) return; // aborted or swept meanwhile
        p.ownerConfirmed = true;
        start();
      },
      (err: unknown) => this.notOwned(connId, p, err),
    );
  }

  private share(peerName: string, offers: number, bytes: number): void {
    const s = this.perPeer.get(peerName) ?? { offers: 0, bytes: 0 };
    s.offers += offers;
    s.bytes += bytes;
    if (s.offers <= 0) this.perPeer.delete(peerName);
    else this.perPeer.set(peerName, s);
  }

  /** The sender does not serve the flow (or the distributor could not say): refuse; nothing was built. */
  private notOwned(connId: string, p: Pending, err: unknown): void {
    if (this.pending.get(connId) !== p) return;
    this.drop(connId, p); // nothing built, no application asked yet: only the bookkeeping goes
    this.refuse(p.peer, connId, 'not-owner', `the distributor does not confirm ${p.peerName} serves this connection: ${errorText(err)}`);
  }

  /** An offer refused after it was taken in: a deciding application is told, the socket dropped. */
  private withdraw(connId: string, p: Pending): void {
    if (p.app.decides && p.fd === undefined) p.app.channel.send('abort', { connId, reason: 'transfer refused' });
    this.drop(connId, p);
  }

  private acceptIfReady(connId: string, p: Pending): void {
    if (!p.ownerConfirmed || p.fd === undefined || p.accepted) return;
    p.accepted = true;
    p.peer.send('accept', { connId, importUs: p.importUs ?? 0 });
  }

  /** In repair mode: the socket exists, bound to the DVIPA, but says nothing until live. */
  private reinstate(connId: string, p: Pending): void {
    try {
      const t = performance.now();
      p.fd = this.sockets.reinstate(p.state, p.peeked);
      p.importedAt = performance.now();
      p.importUs = Math.round((p.importedAt - t) * 1000);
      this.acceptIfReady(connId, p);
    } catch (err) {
      const reason = isBatonError(err) ? err.message : `import failed: ${(err as Error).message}`;
      this.log.warn({ connId, err: reason }, 'transfer refused: socket could not be reinstated');
      this.drop(connId, p);
      p.peer.send('reject', { connId, reason });
    }
  }

  /**
   * Still in repair mode: take in what changed at the routing node between the snapshot and the
   * freeze. Bytes that reached its receive queue are appended to ours; bytes of the unsent tail its
   * kernel transmitted meanwhile (an ACK opened the window) become part of our sent queue, or the
   * client would acknowledge data this socket believes it never sent. The window at the freeze
   * replaces the snapshot's, which may still say the client's window is shut.
   */
  private commit(connId: string, p: Pending, received: Buffer, unsentLength: number, window: TcpConnectionState['window']): void {
    try {
      const { state } = p;
      if (unsentLength > state.unsentLength) {
        throw new BatonError('E_PROTOCOL', `unsent tail grew from ${state.unsentLength} to ${unsentLength} bytes`, { connId, step: 'commit' });
      }
      const start = state.sendQueue.length - state.unsentLength;
      // Accepted (fromPeer checked), so reinstated.
      this.sockets.complete(p.fd!, state.sendQueue.subarray(start, start + state.unsentLength - unsentLength), received, window);
      state.unsentLength = unsentLength;
      p.peer.send('ready', { connId });
    } catch (err) {
      this.log.warn({ connId, err: (err as Error).message }, 'could not apply the commit');
      this.drop(connId, p);
      p.peer.send('reject', { connId, reason: `commit failed: ${(err as Error).message}` });
    }
  }

  /** The route points here: leave repair mode, then the socket is the application's. */
  private goLive(connId: string, p: Pending, oldClock: number | undefined): void {
    this.forget(connId, p);
    const { state, app } = p;
    // Accepted (fromPeer checked), so reinstated.
    const fd = p.fd!;
    let timestamp: number | undefined;
    if (state.options.timestamps) {
      timestamp = oldClock ?? (state.timestamp + Math.round(performance.now() - p.importedAt!) + TIMESTAMP_ESTIMATE_SLACK_MS) >>> 0;
      if (oldClock === undefined) this.log.warn({ connId }, 'no closing clock from the routing node: timestamp clock estimated');
    }
    try {
      this.sockets.goLive(fd, timestamp);
    } catch (err) {
      this.log.error({ connId, err: (err as Error).message }, 'could not leave repair mode: connection lost, releasing the flow');
      this.discard(connId, fd);
      this.hold(app, -1);
      this.onOrphan(p.flow, connId);
      return;
    }
    this.own({ connId, app, flow: p.flow, since: Date.now() });
    this.onLive(p.flow);
    try {
      // The descriptor first: the application looks for it when transferred arrives.
      app.descriptors.send(fd, connId);
      app.channel.send('transferred', { connId, from: p.from, client: { ...state.remote }, appState: p.appState }, [p.peeked, state.sendQueue.subarray(state.sendQueue.length - state.unsentLength)]);
    } catch (err) {
      // Live, with nobody to serve it: the client gets a FIN from here, and the entry goes.
      this.log.error({ connId, app: app.name, err: (err as Error).message }, 'cannot hand the live socket to its application: closing it');
      this.disown(connId);
      this.hold(app, -1);
      this.onOrphan(p.flow, connId);
    } finally {
      this.release(connId, fd);
    }
  }

  /** The routing node gave up (or its link went): drop the reinstated socket, tell a deciding application. */
  private abort(connId: string, p: Pending, reason: string): void {
    if (p.app.decides && p.fd === undefined) p.app.channel.send('abort', { connId, reason });
    this.drop(connId, p);
    this.log.info({ connId, reason }, 'transfer aborted');
  }

  /** Forgets a pending transfer; its reinstated socket, if any, goes without a word. */
  private drop(connId: string, p: Pending): void {
    this.forget(connId, p);
    this.hold(p.app, -1);
    if (p.fd !== undefined) this.discard(connId, p.fd);
  }

  /** No longer pending: its share of its peer's offers and bytes is given back. */
  private forget(connId: string, p: Pending): void {
    if (this.pending.get(connId) !== p) return;
    this.pending.delete(connId);
    this.share(p.peerName, -1, -p.bytes);
  }

  private hold(app: TargetApp, delta: number): void {
    if (!this.holding.has(app) && delta < 0) return;
    this.holding.set(app, Math.max(0, (this.holding.get(app) ?? 0) + delta));
  }

  private discard(connId: string, fd: number): void {
    try {
      this.sockets.discard(fd);
    } catch (err) {
      this.log.error({ connId, fd, err: (err as Error).message }, 'cannot drop a reinstated socket');
    }
  }

  /** Our descriptor of a socket handed to the application (it has its own now). */
  private release(connId: string, fd: number): void {
    try {
      this.sockets.release(fd);
    } catch (err) {
      this.log.error({ connId, fd, err: (err as Error).message }, 'cannot close batond\'s descriptor of a transferred socket');
    }
  }

  private own(o: Served): void {
    this.owned.set(o.connId, o);
    this.byFlow.set(connectionId(o.flow), o.connId);
  }

  private disown(connId: string): Served | undefined {
    const o = this.owned.get(connId);
    if (!o) return undefined;
    this.owned.delete(connId);
    if (this.byFlow.get(connectionId(o.flow)) === connId) this.byFlow.delete(connectionId(o.flow));
    return o;
  }

  /** The connection live here with this 4-tuple, if any. */
  served(flow: FlowKey): ServedView | undefined {
    const connId = this.byFlow.get(connectionId(flow));
    const o = connId === undefined ? undefined : this.owned.get(connId);
    return o && view(o);
  }

  /** How many connections are live in target applications here. */
  get servedCount(): number {
    return this.owned.size;
  }

  /**
   * A page of the connections live in target applications here, after the cursor `after` (a
   * page's next): O(page) however many there are. total is given unfiltered only.
   */
  page(q: { after?: number; limit: number; client?: string }): { total?: number; entries: ServedView[]; next?: string } {
    const page = this.owned.page({ after: q.after, limit: q.limit, match: q.client === undefined ? undefined : (o) => o.flow.clientAddress === q.client });
    return { ...(q.client === undefined ? { total: this.owned.size } : {}), entries: page.values.map(view), ...(page.next ? { next: page.next } : {}) };
  }

  /**
   * Asks the application serving connId to move it to node (operator request). Resolves once the
   * application reports the move done; rejects with its reason, or when it does not answer in time.
   */
  requestMove(connId: string, node: string, timeoutMs: number): Promise<void> {
    const o = this.owned.get(connId);
    if (!o) return Promise.reject(new BatonError('E_NOT_FOUND', 'no connection with this id is served on this node', { connId, step: 'move' }));
    if (this.moving.has(connId)) return Promise.reject(new BatonError('E_HANDOFF_STATE', 'a move of this connection is already in progress', { connId, step: 'move' }));
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => settle(new BatonError('E_TIMEOUT', `application ${o.app.name} did not move the connection within ${timeoutMs} ms`, { connId, step: 'move', node })), timeoutMs);
      const settle = (err?: Error) => {
        clearTimeout(timer);
        this.moving.delete(connId);
        if (err) reject(err);
        else resolve();
      };
      this.moving.set(connId, { app: o.app, settle });
      o.app.channel.send('move', { connId, node });
    });
  }

  fromApp(app: TargetApp, d: Decoded<FromTarget>): void {
    const { msg } = d;
    if (msg.type === 'hello' || msg.type === 'release') return;
    if (msg.type === 'moved') {
      const m = this.moving.get(msg.connId);
      if (!m || m.app !== app) {
        this.log.warn({ connId: msg.connId, app: app.name }, 'move answer for no move in progress');
        return;
      }
      m.settle(msg.ok ? undefined : new BatonError('E_REJECTED', msg.reason ?? 'the application did not move the connection', { connId: msg.connId, step: 'move' }));
      return;
    }
    const connId = msg.connId;
    const p = this.pending.get(connId);
    if (!p || p.app !== app || !app.decides || p.fd !== undefined) {
      this.log.warn({ connId, app: app.name }, 'decision for no offer awaiting one');
      return;
    }
    if (msg.accept) return this.reinstate(connId, p);
    this.log.info({ connId, reason: msg.reason }, 'transfer refused by the application');
    this.drop(connId, p);
    p.peer.send('reject', { connId, reason: msg.reason ?? 'refused by the target application' });
  }

  /** The application says a connection it served has closed: its flow, if it was the application's. */
  released(app: TargetApp, connId: string): FlowKey | undefined {
    const o = this.owned.get(connId);
    if (!o || o.app !== app) return undefined;
    this.disown(connId);
    this.hold(app, -1);
    return o.flow;
  }

  /** The application is gone: every connection it served is gone with it. */
  releasedAll(app: TargetApp): Array<{ connId: string; flow: FlowKey }> {
    const gone: Array<{ connId: string; flow: FlowKey }> = [];
    for (const [connId, o] of this.owned.entries()) {
      if (o.app !== app) continue;
      this.disown(connId);
      gone.push({ connId, flow: o.flow });
    }
    return gone;
  }

  /** The connection moved on from this node: it is no longer ours to release. */
  movedOn(flow: FlowKey): void {
    const connId = this.byFlow.get(connectionId(flow));
    const o = connId === undefined ? undefined : this.disown(connId);
    if (o) this.hold(o.app, -1);
  }

  close(): void {
    clearInterval(this.sweeper);
    for (const [connId, p] of this.pending) this.drop(connId, p);
  }

  private sweep(): void {
    const now = Date.now();
    for (const [connId, o] of this.orphans) if (now - o.since >= this.staleAfterMs) this.orphans.delete(connId);
    for (const [connId, p] of this.pending) {
      if (now - p.since < this.staleAfterMs) continue;
      this.log.warn({ connId }, 'transfer neither finished nor aborted in time: dropped');
      this.abort(connId, p, 'stale transfer');
    }
  }
}
