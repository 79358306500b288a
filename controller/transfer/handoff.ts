// The routing node's side of one handoff: the state machine that turns a routing application's
// request into a connection served by a target node. The application has stopped reading its
// socket and sent batond a duplicate of its descriptor (fd-exchange.ts); batond does every socket
// step itself, so the application hears from it only once more (done, or failed). Steps, and why
// this order (docs/native.md, "Why the handoff runs in this order"):
//
//   0. check   the descriptor the application passed is an ESTABLISHED TCP socket whose local
//              address is a DVIPA (read without touching it): anything else (a UDP or Unix socket,
//              a listener, the application's own connection to a database) is refused before
//              repair mode could change it. Then admit: the distributor's quotas (route-service.ts)
//              must leave the flow room in the routing table, or it is refused (E_QUOTA) before
//              anything is exported or offered.
//   1. export  repair mode on the socket, its state read: it sends nothing new, still queues what
//              arrives.
//   2. offer   relay the state to the target node, which reinstates it in repair mode and accepts,
//              or rejects.
//   3. freeze  set the flow's routing-table entry to FROZEN: XDP drops the client's packets, so the
//              old socket's queues stop changing. (On the distributor itself, or through it when
//              this node serves a connection that moves on again: see routes.ts.)
//   4. delta   read what reached the receive queue since the snapshot, and how much of the unsent
//              tail the socket transmitted meanwhile.
//   5. commit  the target appends the delta, still in repair mode, marks the newly transmitted
//              bytes as sent, and says ready. When the delta is empty and the window unchanged
//              (nothing arrived, nothing left: a client waiting for an answer) there is nothing to
//              commit, and the route follows the delta read at once.
//   6. route   the entry now forwards to the target. Earlier, the target kernel would answer the
//              client with a reset; later, the client's packets would meet a closed socket here.
//   7. close   the routing application closes its socket silently (repair mode is still on) and
//              says what its TCP timestamp clock read then: repair mode does not stop the kernel
//              sending (timers), so until this close the old socket may stamp segments later than
//              the snapshot. Read in the application, right before its close, the reading is exact.
//   8. live    the target sets its clock to that reading and leaves repair mode (its window probe
//              acknowledges everything, the delta included). Continuing the old clock exactly
//              keeps its stamps at or above the last the client saw (PAWS) and its first RTT
//              samples honest (a clock set ahead inflates each by as much).
// The client's packets that arrive between 6 and 8 wait in the target's receive queue.
//
// Any failure before step 6 puts the entry back as it was (none, or forwarding to this node),
// takes the socket out of repair mode and tells the routing application, which resumes reading:
// the connection carries on at the routing node, nothing lost.
// Each step is a method below, starting from one phase (handoff-phases.ts, enforced by
// handoff-machine.ts); the phase alone decides what a reply may do and what a failure undoes.
import { performance } from 'node:perf_hooks';
import { monotonicUs } from '../clock.js';
import { BatonError, isBatonError } from '../errors.js';
import { errorText } from '../input.js';
import type { Logger } from '../log.js';
import type { ClusterConfig, NodeConfig } from '../config/cluster.js';
import { endpointText, type FlowKey, socketFlow } from '../flow.js';
import type { RouteWriter } from './routes.js';
import type { Channel, PendingReplies } from './channel.js';
import { HandoffMachine } from './handoff-machine.js';
import { type HandoffStep, ROLLBACK, type Undo } from './handoff-phases.js';
import { type Accepts, connToWire, type Decoded, type DistributorTimings, type HopClock } from './messages.js';
import type { PeerLink, PeerLinks } from './peers.js';
import { type HandoffSockets, unchangedSince, unfitDescriptor } from './sockets.js';
import type { ExportDelta, SocketInfo, TcpConnectionState } from '../../native/repair.js';

type RouterMessage = (typeof Accepts.agentFromRouter)[number];

export interface RouterConnection {
  channel: Channel<RouterMessage>;
  replies: PendingReplies<RouterMessage>;
  name: string;
}

export interface HandoffRecord {
  connId: string;
  /** Absent when the handoff failed before the socket's state was read. */
  flow?: FlowKey;
  from: string;
  target: string;
  client: string;
  outcome: 'done' | 'failed';
  step?: HandoffStep;
  reason?: string;
  /** The step timings, the routing application's close, and the whole handoff as seen here. */
  timings?: DistributorTimings & { closeUs?: number; totalUs: number };
}

/** One handoff on its way: its phase machine, and what the steps learnt that a rollback or the record needs. */
interface Handoff {
  readonly connId: string;
  readonly machine: HandoffMachine;
  readonly router: RouterConnection;
  readonly request: Decoded<'handoff'>;
  /** batond's duplicate of the application's socket. */
  readonly fd: number;
  readonly log: Logger;
  readonly t0: number;
  /** The monotonic clock when the application's request arrived (the trace's first reading here). */
  readonly handoffRx: number;
  /** From the export on. */
  flow?: FlowKey;
  client?: string;
  /** From the offer on: the link to the target, where an abort goes. */
  peer?: PeerLink;
}

const micros = (from: number) => Math.round((performance.now() - from) * 1000);

export class HandoffCoordinator {
  /** Handoffs in flight by id, bounded so a flood of offers cannot pin unbounded socket state in memory. */
  private readonly inFlight = new Map<string, Handoff>();

  constructor(
    private readonly config: ClusterConfig,
    private readonly self: NodeConfig,
    private readonly routes: RouteWriter,
    private readonly peers: PeerLinks,
    private readonly sockets: HandoffSockets,
    private readonly log: Logger,
    private readonly onRecord: (r: HandoffRecord) => void,
    private readonly maxInFlight = 4096,
    /** Is this one of the cluster's virtual IPs (the config's, or one an operator added)? */
    private readonly isDvipa: (address: string) => boolean = (address) => config.dvipa.addresses.includes(address),
  ) {}

  /**
   * Hands the connection off. fd is batond's duplicate of the application's socket: closed here
   * whatever happens (the application keeps its own).
   */
  async run(router: RouterConnection, request: Decoded<'handoff'>, fd: number): Promise<void> {
    const connId = request.msg.connId;
    const log = this.log.child({ connId, target: request.msg.target.node });
    const h: Handoff = { connId, machine: new HandoffMachine(connId, log), router, request, fd, log, t0: performance.now(), handoffRx: monotonicUs() };
    try {
      this.register(h);
      const target = this.targetOf(h);
      const flow = this.check(h);
      await this.admit(h, flow);
      const { state, exportUs } = this.export(h, flow);
      const { peer, offerRttUs, importUs, hops } = await this.offer(h, target, state);
      const freezeUs = await this.freeze(h, flow);
      const { delta, deltaUs } = this.readDelta(h, state);
      const { committed, commitRttUs } = await this.commit(h, peer, state, delta);
      const routeUs = await this.route(h, flow, target);
      // Past the point of no return: from here on nothing rolls back.
      const timings = { exportUs, offerRttUs, importUs, freezeUs, deltaUs, commitRttUs, routeUs };
      await this.close(h, peer, { state, delta, timings, hops, committed });
    } catch (err) {
      await this.fail(h, err);
    } finally {
      this.forget(h);
      // A TLS session's keys: sent and answered for by now (or the handoff failed), not kept.
      h.request.blobs[1]?.fill(0);
    }
  }

  /** requested: one handoff per id, a bounded number in flight; the application's messages for it reach its phase from now on. */
  private register(h: Handoff): void {
    const { connId, machine } = h;
    if (this.inFlight.has(connId)) throw new BatonError('E_HANDOFF_STATE', 'a handoff of this connection is already in flight', { connId, step: machine.step });
    if (this.inFlight.size >= this.maxInFlight) throw new BatonError('E_HANDOFF_STATE', `${this.maxInFlight} handoffs already in flight`, { connId, step: machine.step });
    this.inFlight.set(connId, h);
    machine.claim(h.router.replies, 'router');
  }

  private forget(h: Handoff): void {
    if (this.inFlight.get(h.connId) === h) this.inFlight.delete(h.connId);
    h.machine.release();
  }

  /** requested: the node the application names, a peer of this one. */
  private targetOf(h: Handoff): NodeConfig {
    const { connId, machine } = h;
    const name = h.request.msg.target.node;
    const targetNode = this.config.nodes.find((n) => n.name === name);
    if (!targetNode) throw new BatonError('E_NO_TARGET', `unknown target node ${name}`, { connId, step: machine.step });
    if (targetNode.name === this.self.name) throw new BatonError('E_NO_TARGET', 'the target is the routing node itself', { connId, step: machine.step });
    return targetNode;
  }

  /** check (requested): the descriptor is an established TCP connection to a DVIPA; its flow. */
  private check(h: Handoff): FlowKey {
    h.machine.begin('check');
    const unfit = (why: string) => new BatonError('E_HANDOFF_STATE', `the descriptor is not an established TCP connection to a DVIPA: ${why}`, { connId: h.connId, step: 'check' });
    let info: SocketInfo;
    try {
      info = this.sockets.inspect(h.fd);
    } catch (err) {
      throw unfit(`cannot inspect it: ${errorText(err)}`);
    }
    const why = unfitDescriptor(info, this.isDvipa);
    const flow = socketFlow(info);
    if (why || !flow) throw unfit(why ?? 'it has no peer');
    return flow;
  }

  /**
   * admit (requested): a connection the routing table has no room for (a quota) is refused
   * before anything is exported or offered: the target builds nothing for it.
   */
  private async admit(h: Handoff, flow: FlowKey): Promise<void> {
    h.machine.begin('admit');
    await this.routes.admit(flow, h.connId);
  }

  /** export (requested → exported): repair mode on, the socket's state read; the handoff's record names its flow from here on. */
  private export(h: Handoff, flow: FlowKey): { state: TcpConnectionState; exportUs: number } {
    h.machine.begin('export');
    const tExport = performance.now();
    const state = this.sockets.snapshot(h.fd);
    h.machine.advance('exported');
    const exportUs = micros(tExport);
    h.flow = flow;
    h.client = endpointText(state.family, state.remote.address, state.remote.port);
    h.log.debug({ client: h.client }, 'handoff requested');
    return { state, exportUs };
  }

  /** offer (exported → offered → accepted): the state to the target, which reinstates it, or refuses (back to exported). */
  private async offer(h: Handoff, targetNode: NodeConfig, state: TcpConnectionState): Promise<{ peer: PeerLink; offerRttUs: number; importUs: number; hops: Omit<HopClock, 'doneTx'> }> {
    const { connId, machine } = h;
    const { msg, blobs } = h.request;
    machine.begin('offer');
    const peer = await this.peers.get(targetNode.name);
    h.peer = peer;
    machine.claim(peer.replies, 'target');
    const tOffer = performance.now();
    const { conn, queues } = connToWire(state);
    machine.advance('offered');
    const offerTx = monotonicUs();
    // A TLS session's keys go on as they came, in their own blob (tls-wire.ts).
    peer.channel.send('offer', { connId, from: this.self.name, target: msg.target, conn, appState: msg.appState, ...(msg.tls ? { tls: msg.tls } : {}) }, [...queues, blobs[0]!, blobs[1]!]);
    const answer = await machine.answer('offered', this.config.handoffStepTimeoutMs);
    const acceptRx = monotonicUs();
    if (answer.msg.type === 'reject') throw new BatonError('E_REJECTED', answer.msg.reason, { connId, step: 'offer', node: targetNode.name });
    const at = answer.msg.clock;
    return { peer, offerRttUs: micros(tOffer), importUs: answer.msg.importUs, hops: { handoffRx: h.handoffRx, offerTx, ...(at ? { offerRx: at.rx, acceptTx: at.tx } : {}), acceptRx } };
  }

  /** freeze (accepted → frozen): XDP drops the client's packets, so the old socket's queues stop changing. */
  private async freeze(h: Handoff, flow: FlowKey): Promise<number> {
    h.machine.begin('freeze');
    const tFreeze = performance.now();
    await this.routes.freeze(flow, h.connId);
    h.machine.advance('frozen');
    return micros(tFreeze);
  }

  /** delta (frozen): what reached the socket, and what it transmitted, since the snapshot. */
  private readDelta(h: Handoff, state: TcpConnectionState): { delta: ExportDelta; deltaUs: number } {
    h.machine.begin('delta');
    const tDelta = performance.now();
    const delta = this.sockets.delta(h.fd, state);
    return { delta, deltaUs: micros(tDelta) };
  }

  /**
   * commit (frozen → committed → ready): the target appends the delta and says ready, or refuses
   * (back to frozen). Nothing changed since the snapshot (the usual case: a client waiting for
   * an answer sends nothing): the target's socket already is the frozen one, and the commit
   * round trip would carry nothing. Skipped (frozen → ready), the flow is frozen only for the
   * delta read and the route install.
   */
  private async commit(h: Handoff, peer: PeerLink, state: TcpConnectionState, delta: ExportDelta): Promise<{ committed: boolean; commitRttUs: number }> {
    const { connId, machine } = h;
    machine.begin('commit');
    const committed = !unchangedSince(state, delta);
    if (!committed) {
      machine.advance('ready');
      return { committed, commitRttUs: 0 };
    }
    const tCommit = performance.now();
    machine.advance('committed');
    peer.channel.send('commit', { connId, unsentLength: delta.unsentLength, window: delta.window }, [delta.received]);
    const ready = await machine.answer('committed', this.config.handoffStepTimeoutMs);
    if (ready.msg.type === 'reject') throw new BatonError('E_REJECTED', ready.msg.reason, { connId, step: 'commit', node: peer.node.name });
    return { committed, commitRttUs: micros(tCommit) };
  }

  /** route (ready → routed): the entry forwards to the target. */
  private async route(h: Handoff, flow: FlowKey, targetNode: NodeConfig): Promise<number> {
    h.machine.begin('route');
    const tRoute = performance.now();
    await this.routes.forward(flow, targetNode.name, h.connId);
    h.machine.advance('routed');
    return micros(tRoute);
  }

  /** close (routed → closed): done to the application, live to the target with the old socket's final clock. */
  private async close(
    h: Handoff,
    peer: PeerLink,
    { state, delta, timings: steps, hops, committed }: { state: TcpConnectionState; delta: ExportDelta; timings: Omit<DistributorTimings, 'clock'>; hops: Omit<HopClock, 'doneTx'>; committed: boolean },
  ): Promise<void> {
    const { connId, machine, fd, log, router } = h;
    machine.begin('close');
    const tClose = performance.now();
    // No client packet reaches the old socket any more. If it can send nothing by itself either,
    // its clock now is its clock at the close: the target goes live at once. Otherwise the
    // application reads the clock right before its close and says it (closed).
    const finalClock = this.quietClock(fd, (state.recvSeq + state.recvQueue.length + delta.received.length) >>> 0, log);
    // live before done, each sent at once rather than at the end of this tick: the client waits for
    // the target, so its wake-up comes first; then the application's.
    let liveTx: number | undefined;
    if (finalClock !== undefined) {
      machine.advance('closed');
      liveTx = monotonicUs();
      peer.channel.send('live', { connId, timestamp: finalClock });
      peer.channel.flush();
    }
    const timings: DistributorTimings = { ...steps, clock: { ...hops, ...(liveTx === undefined ? {} : { liveTx }), doneTx: monotonicUs() } };
    router.channel.send('done', { connId, timings, clockNeeded: finalClock === undefined });
    router.channel.flush();
    this.releaseDescriptor(fd, log);
    if (finalClock === undefined) {
      const timestamp = await this.oldSocketClosed(h);
      peer.channel.send('live', timestamp === undefined ? { connId } : { connId, timestamp });
    }
    const closeUs = micros(tClose);
    const blobs = h.request.blobs;
    const sizes = { send: state.sendQueue.length, recv: state.recvQueue.length + delta.received.length, peeked: blobs[0]!.length, sentSinceSnapshot: state.unsentLength - delta.unsentLength };
    log.debug({ event: 'handoff', outcome: 'done', client: h.client, timings: { ...timings, closeUs }, queues: sizes, committed, clock: finalClock === undefined ? 'at the close' : 'quiet socket' }, 'handoff complete');
    this.onRecord({ connId, flow: h.flow, from: router.name, target: peer.node.name, client: h.client!, outcome: 'done', timings: { ...timings, closeUs, totalUs: micros(h.t0) } });
  }

  /** Rollback, decided by the phase the handoff failed in (ROLLBACK); the application hears last. */
  private async fail(h: Handoff, err: unknown): Promise<void> {
    const { connId, fd, log, router } = h;
    const { phase, step } = h.machine.fail();
    const e = isBatonError(err) ? err : new BatonError('E_PEER', (err as Error).message, { connId, step });
    const undo: readonly Undo[] | 'stands' = ROLLBACK[phase];
    if (undo === 'stands') {
      // The route already points at the target and the descriptor is closed: nothing to undo.
      log.error({ err: e.message }, 'error after the route switched; the handoff stands');
      return;
    }
    // Frozen or later, so exported: the flow is known.
    if (undo.includes('unfreeze')) await this.unfreeze(h.flow!, connId, log);
    // The target may hold a reinstated socket in repair mode: tell it to drop it silently. Only a
    // target that said no has certainly kept nothing (its reject sent the handoff back to exported).
    if (undo.includes('abort')) h.peer?.channel.send('abort', { connId, reason: e.message });
    // The application resumes reading once told: its socket must be out of repair mode by then.
    if (undo.includes('resume')) this.resume(fd, log);
    this.releaseDescriptor(fd, log);
    router.channel.send('failed', { connId, step, code: e.code, reason: e.detail });
    log.warn({ event: 'handoff', outcome: 'failed', step, code: e.code, client: h.client, err: e.message }, 'handoff failed; routing node keeps the connection');
    this.onRecord({ connId, flow: h.flow, from: router.name, target: h.request.msg.target.node, client: h.client ?? 'unknown', outcome: 'failed', step, reason: e.message });
  }

  /** Rollback: repair mode off. If even that fails the application's socket is stuck silent: say so loudly. */
  private resume(fd: number, log: Logger): void {
    try {
      this.sockets.resume(fd);
    } catch (err) {
      log.error({ err: (err as Error).message }, 'cannot take the socket out of repair mode: the connection is stuck at the routing node');
    }
  }

  /** The old socket's final clock if it is quiet; undefined (the application reads it at its close) otherwise or on failure. */
  private quietClock(fd: number, rcvNxt: number, log: Logger): number | undefined {
    try {
      return this.sockets.quietClock(fd, rcvNxt);
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'cannot tell whether the old socket is quiet: its clock is read at its close');
      return undefined;
    }
  }

  private releaseDescriptor(fd: number, log: Logger): void {
    try {
      this.sockets.release(fd);
    } catch (err) {
      log.error({ fd, err: (err as Error).message }, 'cannot close batond\'s duplicate of the socket');
    }
  }

  /**
   * The old socket's clock when the routing application closed it: its closed moves the handoff
   * to closed. Never throws: the target must go live whatever happens here (the route already
   * points at it); without a reading (no closed in time, or the application gone) the handoff is
   * closed all the same and the target estimates the clock itself.
   */
  private async oldSocketClosed(h: Handoff): Promise<number | undefined> {
    try {
      const closed = await h.machine.answer('routed', this.config.handoffStepTimeoutMs);
      return closed.msg.timestamp;
    } catch (err) {
      h.log.warn({ err: (err as Error).message }, 'routing application did not confirm the close; the target estimates the timestamp clock');
      h.machine.advance('closed');
      return undefined;
    }
  }

  private async unfreeze(flow: FlowKey, connId: string, log: Logger): Promise<void> {
    try {
      await this.routes.unfreeze(flow, connId);
    } catch (err) {
      // The distributor rolls back a freeze nobody finishes on its own; say so and carry on.
      log.error({ err: (err as Error).message }, 'could not unfreeze; the distributor will restore the entry when the freeze expires');
    }
  }
}
