// The target node's side of each handoff, as the phase machine of phases.ts: batond reinstates an
// offered connection itself, in repair mode, completes it with the routing node's delta, makes it
// live once the route points here, and only then hands the socket's descriptor to the target
// application (fd-exchange.ts), with the state and peeked bytes it resumes from. The application
// hears of a transfer once (transferred), or twice when it decides on offers itself (decide).
//
// One function per event (offer, owner, decided, commit, live, abort); each takes the transfer
// only in a phase whose row in TARGET_TRANSITIONS has the event (inPhaseFor), and moves it only
// to an outcome that row gives (enter; checked by the compiler against the table). Anything else
// is refused as out of phase and changes nothing. Either party vanishing is turned into a clean
// reject or abort.
import { performance } from 'node:perf_hooks';
import { monotonicUs } from '../../clock.js';
import { BatonError, isBatonError } from '../../errors.js';
import { errorText, logSparsely } from '../../input.js';
import type { Logger } from '../../log.js';
import { connectionId, type FlowKey, flowOf } from '../../flow.js';
import type { TcpConnectionState } from '../../../native/repair.js';
import { type Channel, countRefusedMessage } from '../channel.js';
import type { Accepts, Message } from '../messages.js';
import type { HandoffSockets } from '../sockets.js';
import { keysOf, type TlsInfo, wipeKeys } from '../tls-wire.js';
import type { KtlsState } from '../../../native/ktls.js';
import { admit, type AdmissionView, type OfferPolicy, type OfferRefusals, type Refused } from './admission.js';
import type { TargetApp, TargetApplications } from './applications.js';
import type { Holdings } from './capacity.js';
import { ANSWERED_OUT_OF_PHASE, type NextPhase, outcomes, type PhasesTaking, type TargetEvent, type TargetPhase } from './phases.js';
import type { ServedConnections } from './served.js';

export type FromPeer = (typeof Accepts.agentFromPeer)[number];

/**
 * When live comes without the old socket's closing clock (the routing application never
 * confirmed its close), the clock is estimated as the snapshot's plus the time since the import
 * plus this much: the old socket may have gone on stamping segments for a while. Ahead costs
 * inflated first RTT samples; behind would cost PAWS drops.
 */
const TIMESTAMP_ESTIMATE_SLACK_MS = 1000;

/** The socket reinstated for a transfer, from the import on. */
interface Reinstated {
  fd: number;
  importedAt: number;
}

interface Common {
  connId: string;
  peer: Channel<FromPeer>;
  /** The node the peer link authenticated, whose share of offers and bytes this one counts in. */
  peerName: string;
  /** Bytes of the offer's blobs, held until the transfer ends here. */
  bytes: number;
  app: TargetApp;
  flow: FlowKey;
  since: number;
  /** The monotonic clock when the offer arrived: returned in accept, for the handoff's trace. */
  offerRx: number;
  from: string;
  state: TcpConnectionState;
  appState: unknown;
  peeked: Buffer;
  /** A TLS connection: its suite, and its keys as they came (tls-wire.ts), wiped when the transfer ends. */
  tls?: TlsInfo;
  keys: Buffer;
}

/** A transfer here: nothing built before the import, a reinstated socket from then on. */
type Transfer = Common & ({ phase: 'offered' | 'deciding'; socket?: undefined } | { phase: 'imported' | 'committed' | 'live'; socket: Reinstated });

/** What the machine works with: the node's parts it reads and changes. */
export interface HandoffParts {
  log: Logger;
  /** A handoff the routing node neither finished nor aborted within this time is dropped here. */
  staleAfterMs: number;
  sockets: HandoffSockets;
  policy: OfferPolicy;
  applications: TargetApplications;
  holdings: Holdings;
  served: ServedConnections;
  refusals: OfferRefusals;
  /** A flow routed here whose application is gone: the node releases its routing-table entry. */
  onOrphan(flow: FlowKey, connId: string): void;
  /** A connection went live here (its 4-tuple may be one an earlier connection is still closing). */
  onLive(flow: FlowKey): void;
}

export class TargetHandoffs {
  private readonly transfers = new Map<string, Transfer>();
  /**
   * Accepted transfers whose application died while they were here, by handoff id, with the link
   * they came on. Our reject may arrive after the routing node has already switched the route (the
   * application died after we said ready): its 'live' then names a flow nobody here serves, which
   * must be released or its entry would steer the client to a dead socket forever. Forgotten after
   * staleAfterMs, or at the transfer's next message.
   */
  private readonly orphans = new Map<string, { flow: FlowKey; peer: Channel<FromPeer>; since: number }>();
  private readonly admission: AdmissionView;

  constructor(private readonly p: HandoffParts) {
    this.admission = { policy: p.policy, applications: p.applications, holdings: p.holdings, isHere: (connId) => this.transfers.has(connId) };
  }

  // ---- the events ------------------------------------------------------------------------------

  /** An offer from the peer link authenticated as peerName: checked, then held in `offered`. */
  offer(peer: Channel<FromPeer>, peerName: string, msg: Message<'offer'>, blobs: Buffer[]): void {
    const { connId } = msg;
    const admitted = admit(this.admission, peerName, msg, blobs);
    if ('kind' in admitted) return this.refuse(peer, connId, admitted);
    const { app, state, bytes } = admitted;
    const t: Transfer = { phase: 'offered', connId, peer, peerName, bytes, app, flow: flowOf(state), since: Date.now(), offerRx: monotonicUs(), from: msg.from, state, appState: msg.appState, peeked: blobs[2]!, ...(msg.tls ? { tls: msg.tls } : {}), keys: blobs[3]! };
    this.transfers.set(connId, t);
    this.p.holdings.hold(app, 1);
    this.p.holdings.addShare(peerName, 1, bytes);
    if (peerName === this.p.policy.distributor()) return this.owner(t);
    this.p.policy.confirmOwner(peerName, t.flow, connId).then(
      () => this.owner(t),
      (err: unknown) => this.notOwner(t, err),
    );
  }

  /** The sender serves the flow (the distributor said so, or is the sender): ask the application, or build. */
  private owner(t: Transfer): void {
    if (!this.isHere(t) || !this.inPhaseFor(t, 'owner')) return;
    if (!t.app.decides) return this.reinstate(t, 'owner');
    this.enter(t, 'owner', 'deciding');
    t.app.channel.send('decide', { connId: t.connId, from: t.from, client: { ...t.state.remote }, appState: t.appState }, [this.visiblePeeked(t)]);
  }

  /** The distributor does not confirm the sender serves the flow (or could not say): refused; nothing was built. */
  private notOwner(t: Transfer, err: unknown): void {
    if (!this.isHere(t) || !this.inPhaseFor(t, 'owner')) return;
    this.end(t);
    this.refuse(t.peer, t.connId, { kind: 'not-owner', reason: `the distributor does not confirm ${t.peerName} serves this connection: ${errorText(err)}` });
  }

  /** A deciding application's answer. */
  decided(app: TargetApp, msg: Message<'decided'>): void {
    const t = this.transfers.get(msg.connId);
    if (!t || t.app !== app) return this.unsolicited(msg.connId, 'decided');
    if (!this.inPhaseFor(t, 'decided')) return;
    if (msg.accept) return this.reinstate(t, 'decided');
    this.log.info({ connId: t.connId, reason: msg.reason }, 'transfer refused by the application');
    this.end(t);
    t.peer.send('reject', { connId: t.connId, reason: msg.reason ?? 'refused by the target application' });
  }

  /**
   * Still in repair mode: take in what changed at the routing node between the snapshot and the
   * freeze. Bytes that reached its receive queue are appended to ours; bytes of the unsent tail its
   * kernel transmitted meanwhile (an ACK opened the window) become part of our sent queue, or the
   * client would acknowledge data this socket believes it never sent. The window at the freeze
   * replaces the snapshot's, which may still say the client's window is shut.
   */
  commit(peer: Channel<FromPeer>, msg: Message<'commit'>, received: Buffer): void {
    const t = this.forPeer(peer, msg);
    if (!t || !this.inPhaseFor(t, 'commit', peer)) return;
    const { connId, state } = t;
    try {
      if (msg.unsentLength > state.unsentLength) {
        throw new BatonError('E_PROTOCOL', `unsent tail grew from ${state.unsentLength} to ${msg.unsentLength} bytes`, { connId, step: 'commit' });
      }
      const start = state.sendQueue.length - state.unsentLength;
      this.p.sockets.complete(t.socket.fd, state.sendQueue.subarray(start, start + state.unsentLength - msg.unsentLength), received, msg.window);
      state.unsentLength = msg.unsentLength;
      this.enter(t, 'commit', 'committed');
      peer.send('ready', { connId });
    } catch (err) {
      this.log.warn({ connId, err: errorText(err) }, 'could not apply the commit');
      this.end(t);
      peer.send('reject', { connId, reason: `commit failed: ${errorText(err)}` });
    }
  }

  /** The route points here: leave repair mode, then the socket is the application's. */
  live(peer: Channel<FromPeer>, msg: Message<'live'>): void {
    const liveRx = monotonicUs();
    const t = this.forPeer(peer, msg);
    if (!t || !this.inPhaseFor(t, 'live')) return;
    this.finish(t);
    const { connId, state, app, socket } = t;
    let timestamp: number | undefined;
    if (state.options.timestamps) {
      timestamp = msg.timestamp ?? (state.timestamp + Math.round(performance.now() - socket.importedAt) + TIMESTAMP_ESTIMATE_SLACK_MS) >>> 0;
      if (msg.timestamp === undefined) this.log.warn({ connId }, 'no closing clock from the routing node: timestamp clock estimated');
    }
    let unsent = state.sendQueue.subarray(state.sendQueue.length - state.unsentLength);
    let session: KtlsState | undefined;
    try {
      this.p.sockets.goLive(socket.fd, timestamp);
      // A TLS connection: the kernel takes its session before the application sees the socket.
      if (t.tls) {
        session = keysOf(t.tls, t.keys, connId)!;
        this.p.sockets.takeSession(socket.fd, unsent, session);
        unsent = Buffer.alloc(0);
      }
    } catch (err) {
      this.log.error({ connId, err: errorText(err) }, t.tls ? 'could not leave repair mode or install kernel TLS: connection lost, releasing the flow' : 'could not leave repair mode: connection lost, releasing the flow');
      this.discard(connId, socket.fd);
      this.p.holdings.hold(app, -1);
      this.p.onOrphan(t.flow, connId);
      return;
    } finally {
      wipeKeys(session, t.keys);
    }
    this.enter(t, 'live', 'live');
    this.p.served.add({ connId, app, flow: t.flow, since: Date.now() });
    this.p.onLive(t.flow);
    try {
      // The descriptor first: the application looks for it when transferred arrives.
      app.descriptors.send(socket.fd, connId);
      const clock = { liveRx, tx: monotonicUs() };
      app.channel.send('transferred', { connId, from: t.from, client: { ...state.remote }, appState: t.appState, ...(t.tls ? { tls: t.tls } : {}), clock }, [this.visiblePeeked(t), unsent]);
      // The client waits for the application: it should not wait for the rest of this tick too.
      app.channel.flush();
    } catch (err) {
      // Live, with nobody to serve it: the client gets a FIN from here, and the entry goes.
      this.log.error({ connId, app: app.name, err: errorText(err) }, 'cannot hand the live socket to its application: closing it');
      this.p.served.remove(connId);
      this.p.holdings.hold(app, -1);
      this.p.onOrphan(t.flow, connId);
    } finally {
      this.release(connId, socket.fd);
    }
  }

  /** The routing node gave up: drop what was built, tell a deciding application. */
  abort(peer: Channel<FromPeer>, msg: Message<'abort'>): void {
    const t = this.forPeer(peer, msg);
    if (t && this.inPhaseFor(t, 'abort')) this.abandon(t, msg.reason);
  }

  // ---- what ends transfers in every phase ------------------------------------------------------

  /**
   * The application is gone: each transfer for it is refused. One we accepted may have been routed
   * here meanwhile: it is kept as an orphan, so that a live that still comes releases its flow.
   * (Before the accept, the routing node awaits the answer to its offer: the reject is that answer,
   * and nothing more comes.)
   */
  appGone(app: TargetApp): void {
    for (const t of this.transfers.values()) {
      if (t.app !== app) continue;
      t.peer.send('reject', { connId: t.connId, reason: `target application ${app.name} went away` });
      this.end(t);
      if (t.phase === 'imported' || t.phase === 'committed') this.orphans.set(t.connId, { flow: t.flow, peer: t.peer, since: Date.now() });
    }
  }

  /** The link to a routing node closed: its transfers are aborted. */
  peerClosed(peer: Channel<FromPeer>): void {
    for (const t of this.transfers.values()) if (t.peer === peer) this.abandon(t, 'link to the routing node closed');
  }

  sweep(): void {
    const now = Date.now();
    for (const [connId, o] of this.orphans) if (now - o.since >= this.p.staleAfterMs) this.orphans.delete(connId);
    for (const t of this.transfers.values()) {
      if (now - t.since < this.p.staleAfterMs) continue;
      this.log.warn({ connId: t.connId }, 'transfer neither finished nor aborted in time: dropped');
      this.abandon(t, 'stale transfer');
    }
  }

  close(): void {
    for (const t of this.transfers.values()) this.end(t);
  }

  // ---- phases ----------------------------------------------------------------------------------

  /** The peeked bytes shown to the application; a TLS connection's are sealed records, read decrypted from the socket. */
  private visiblePeeked(t: Transfer): Buffer {
    return t.tls ? Buffer.alloc(0) : t.peeked;
  }

  private get log(): Logger {
    return this.p.log;
  }

  private isHere(t: Transfer): boolean {
    return this.transfers.get(t.connId) === t;
  }

  /**
   * Is event taken in the transfer's phase? If not it is refused: counted, logged sparsely,
   * answered with a reject when its sender waits for an answer, and nothing else happens.
   */
  private inPhaseFor<E extends TargetEvent>(t: Transfer, event: E, answer?: Channel<FromPeer>): t is Transfer & { phase: PhasesTaking<E> } {
    if (outcomes(t.phase, event)) return true;
    const n = countRefusedMessage('out-of-phase');
    if (logSparsely(n)) this.log.warn({ connId: t.connId, event, phase: t.phase, refused: n }, 'message out of phase: refused, nothing changed');
    if (answer && ANSWERED_OUT_OF_PHASE.has(event)) answer.send('reject', { connId: t.connId, reason: `${event} refused: the transfer is ${t.phase}` });
    return false;
  }

  /** The transfer moves on; the compiler holds the move to TARGET_TRANSITIONS. */
  private enter<P extends TargetPhase, E extends TargetEvent>(t: Transfer & { phase: P }, event: E, next: Exclude<NextPhase<P, E>, 'ended'>, socket?: Reinstated): void {
    Object.assign(t, socket ? { phase: next, socket } : { phase: next });
    this.log.debug({ connId: t.connId, event, phase: next }, 'transfer phase');
  }

  /** In repair mode: the socket exists, bound to the DVIPA, but says nothing until live. */
  private reinstate(t: Transfer & { phase: 'offered' | 'deciding' }, event: 'owner' | 'decided'): void {
    const { connId } = t;
    try {
      const start = performance.now();
      const fd = this.p.sockets.reinstate(t.state, t.peeked);
      const importedAt = performance.now();
      this.enter(t, event, 'imported', { fd, importedAt });
      t.peer.send('accept', { connId, importUs: Math.round((importedAt - start) * 1000), clock: { rx: t.offerRx, tx: monotonicUs() } });
    } catch (err) {
      const reason = isBatonError(err) ? err.message : `import failed: ${errorText(err)}`;
      this.log.warn({ connId, err: reason }, 'transfer refused: socket could not be reinstated');
      this.end(t);
      t.peer.send('reject', { connId, reason });
    }
  }

  /** Ended before live: a deciding application is told, whatever was built dropped. */
  private abandon(t: Transfer, reason: string): void {
    if (t.phase === 'deciding') t.app.channel.send('abort', { connId: t.connId, reason });
    this.end(t);
    this.log.info({ connId: t.connId, reason }, 'transfer aborted');
  }

  /** Ended before live: forgotten, the application's room given back, its reinstated socket (if any) dropped without a word. */
  private end(t: Transfer): void {
    this.finish(t);
    t.keys.fill(0);
    this.p.holdings.hold(t.app, -1);
    if (t.socket) this.discard(t.connId, t.socket.fd);
  }

  /** No longer here: its share of its peer's offers and bytes is given back. */
  private finish(t: Transfer): void {
    if (!this.isHere(t)) return;
    this.transfers.delete(t.connId);
    this.p.holdings.addShare(t.peerName, -1, -t.bytes);
  }

  // ---- messages for no transfer here -----------------------------------------------------------

  /**
   * The transfer a routing node's message is for; undefined (dealt with here) when there is none
   * for that link: an orphan's (its application died here), or unsolicited. Either way a message
   * whose sender waits for an answer gets a reject, or the routing node would wait out its step
   * timeout (a commit: with the client's flow frozen all that time).
   */
  private forPeer(peer: Channel<FromPeer>, msg: Message<'commit' | 'live' | 'abort'>): Transfer | undefined {
    const { connId, type } = msg;
    const t = this.transfers.get(connId);
    if (t && t.peer === peer) return t;
    const orphan = this.orphans.get(connId);
    let reason = 'no pending transfer with this id';
    if (orphan?.peer === peer) {
      this.orphans.delete(connId);
      reason = `${type} refused: the target application went away`;
      // Anything but live: the routing node rolls back (our reject, or its own failure), nothing was routed here.
      if (type === 'live') {
        this.log.warn({ connId, flow: connectionId(orphan.flow) }, 'routed here after its target application died: releasing the flow (the client sees a reset)');
        this.p.onOrphan(orphan.flow, connId);
      }
    } else this.unsolicited(connId, type);
    if (ANSWERED_OUT_OF_PHASE.has(type)) peer.send('reject', { connId, reason });
    return undefined;
  }

  /**
   * A message for no transfer here (late, after it ended here; or never this link's or this
   * application's): counted as unsolicited, logged sparsely, nothing else.
   */
  private unsolicited(connId: string, type: TargetEvent): void {
    const n = countRefusedMessage('unsolicited');
    if (logSparsely(n)) this.log.warn({ connId, type, unsolicited: n }, 'message for a transfer not pending here');
  }

  /** Counts and answers a refused offer; the caller has built nothing, or undid what it built. */
  private refuse(peer: Channel<FromPeer>, connId: string, refused: Refused): void {
    this.p.refusals.count(connId, refused);
    peer.send('reject', { connId, reason: refused.reason });
  }

  private discard(connId: string, fd: number): void {
    try {
      this.p.sockets.discard(fd);
    } catch (err) {
      this.log.error({ connId, fd, err: errorText(err) }, 'cannot drop a reinstated socket');
    }
  }

  /** Our descriptor of a socket handed to the application (it has its own now). */
  private release(connId: string, fd: number): void {
    try {
      this.p.sockets.release(fd);
    } catch (err) {
      this.log.error({ connId, fd, err: errorText(err) }, "cannot close batond's descriptor of a transferred socket");
    }
  }
}
