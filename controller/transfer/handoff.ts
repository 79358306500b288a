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
import { performance } from 'node:perf_hooks';
import { BatonError, isBatonError } from '../errors.js';
import { errorText } from '../input.js';
import type { Logger } from '../log.js';
import type { ClusterConfig, NodeConfig } from '../config/cluster.js';
import { endpointText, type FlowKey, flowOf, socketFlow } from '../flow.js';
import type { RouteWriter } from './routes.js';
import type { Channel, PendingReplies } from './channel.js';
import { type Accepts, connToWire, type Decoded, type DistributorTimings, type Message } from './messages.js';
import type { PeerLink, PeerLinks } from './peers.js';
import type { HandoffSockets } from './sockets.js';
import { TCP_STATES } from '../../native/diag.js';
import { type ExportDelta, SOCKET_CONSTANTS as K, type SocketInfo, type TcpConnectionState } from '../../native/repair.js';

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
  step?: string;
  reason?: string;
  /** The step timings, the routing application's close, and the whole handoff as seen here. */
  timings?: DistributorTimings & { closeUs?: number; totalUs: number };
}

const micros = (from: number) => Math.round((performance.now() - from) * 1000);

export class HandoffCoordinator {
  /** Handoffs in flight, bounded so a flood of offers cannot pin unbounded socket state in memory. */
  private readonly inFlight = new Set<string>();

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
    private readonly isDvipa: (address: string) => boolean = (address) => address === config.dvipa.address,
  ) {}

  /**
   * Hands the connection off. fd is batond's duplicate of the application's socket: closed here
   * whatever happens (the application keeps its own).
   */
  async run(router: RouterConnection, request: Decoded<'handoff'>, fd: number): Promise<void> {
    const { msg, blobs } = request;
    const connId = msg.connId;
    const log = this.log.child({ connId, target: msg.target.node });
    const t0 = performance.now();
    let step = 'export';
    let exported: TcpConnectionState | undefined;
    let flow: FlowKey | undefined;
    let client: string | undefined;
    let frozen = false;
    let peer: PeerLink | undefined;
    let admitted = false;
    try {
      if (this.inFlight.has(connId)) throw new BatonError('E_HANDOFF_STATE', 'a handoff of this connection is already in flight', { connId, step });
      if (this.inFlight.size >= this.maxInFlight) throw new BatonError('E_HANDOFF_STATE', `${this.maxInFlight} handoffs already in flight`, { connId, step });
      this.inFlight.add(connId);
      admitted = true;
      const targetNode = this.config.nodes.find((n) => n.name === msg.target.node);
      if (!targetNode) throw new BatonError('E_NO_TARGET', `unknown target node ${msg.target.node}`, { connId, step });
      if (targetNode.name === this.self.name) throw new BatonError('E_NO_TARGET', 'the target is the routing node itself', { connId, step });
      const timeout = this.config.handoffStepTimeoutMs;

      step = 'check';
      const checked = this.check(fd);
      if ('unfit' in checked) throw new BatonError('E_HANDOFF_STATE', `the descriptor is not an established TCP connection to a DVIPA: ${checked.unfit}`, { connId, step });
      // A connection the routing table has no room for (a quota) is refused before anything is
      // exported or offered: the target builds nothing for it.
      step = 'admit';
      await this.routes.admit(checked.flow, connId);

      step = 'export';
      const tExport = performance.now();
      const state = this.sockets.snapshot(fd);
      exported = state;
      const exportUs = micros(tExport);
      flow = flowOf(state);
      client = endpointText(state.family, state.remote.address, state.remote.port);
      log.debug({ client }, 'handoff requested');

      step = 'offer';
      peer = await this.peers.get(targetNode.name);
      const tOffer = performance.now();
      const { conn, queues } = connToWire(state);
      peer.channel.send('offer', { connId, from: this.self.name, target: msg.target, conn, appState: msg.appState }, [...queues, blobs[0]!]);
      const answer = await peer.replies.wait(connId, ['accept', 'reject'], timeout, step);
      if (answer.msg.type === 'reject') throw new BatonError('E_REJECTED', answer.msg.reason, { connId, step, node: targetNode.name });
      const offerRttUs = micros(tOffer);
      const importUs = (answer.msg as Message<'accept'>).importUs;

      step = 'freeze';
      const tFreeze = performance.now();
      await this.routes.freeze(flow, connId);
      frozen = true;
      const freezeUs = micros(tFreeze);

      step = 'delta';
      const tDelta = performance.now();
      const delta = this.sockets.delta(fd, state);
      const deltaUs = micros(tDelta);

      // Nothing changed since the snapshot (the usual case: a client waiting for an answer sends
      // nothing): the target's socket already is the frozen one, and the commit round trip would
      // carry nothing. Skipped, the flow is frozen only for the delta read and the route install.
      step = 'commit';
      let commitRttUs = 0;
      const committed = !unchangedSince(state, delta);
      if (committed) {
        const tCommit = performance.now();
        peer.channel.send('commit', { connId, unsentLength: delta.unsentLength, window: delta.window }, [delta.received]);
        const ready = await peer.replies.wait(connId, ['ready', 'reject'], timeout, step);
        if (ready.msg.type === 'reject') throw new BatonError('E_REJECTED', ready.msg.reason, { connId, step, node: targetNode.name });
        commitRttUs = micros(tCommit);
      }

      step = 'route';
      const tRoute = performance.now();
      await this.routes.forward(flow, targetNode.name, connId);
      frozen = false;
      const routeUs = micros(tRoute);

      // Past the point of no return: from here on nothing rolls back.
      step = 'close';
      const timings: DistributorTimings = { exportUs, offerRttUs, importUs, freezeUs, deltaUs, commitRttUs, routeUs };
      const tClose = performance.now();
      // No client packet reaches the old socket any more. If it can send nothing by itself either,
      // its clock now is its clock at the close: the target goes live at once. Otherwise the
      // application reads the clock right before its close and says it (closed).
      const finalClock = this.quietClock(fd, (state.recvSeq + state.recvQueue.length + delta.received.length) >>> 0, log);
      router.channel.send('done', { connId, timings, clockNeeded: finalClock === undefined });
      if (finalClock !== undefined) peer.channel.send('live', { connId, timestamp: finalClock });
      this.releaseDescriptor(fd, log);
      if (finalClock === undefined) {
        const timestamp = await this.oldSocketClosed(router, connId, timeout, log);
        peer.channel.send('live', timestamp === undefined ? { connId } : { connId, timestamp });
      }
      const closeUs = micros(tClose);
      const sizes = { send: state.sendQueue.length, recv: state.recvQueue.length + delta.received.length, peeked: blobs[0]!.length, sentSinceSnapshot: state.unsentLength - delta.unsentLength };
      log.info({ event: 'handoff', outcome: 'done', client, timings: { ...timings, closeUs }, queues: sizes, committed, clock: finalClock === undefined ? 'at the close' : 'quiet socket' }, 'handoff complete');
      this.onRecord({ connId, flow, from: router.name, target: targetNode.name, client: client!, outcome: 'done', timings: { ...timings, closeUs, totalUs: micros(t0) } });
    } catch (err) {
      const e = isBatonError(err) ? err : new BatonError('E_PEER', (err as Error).message, { connId, step });
      if (step === 'close') {
        // The route already points at the target and the descriptor is closed: nothing to undo.
        log.error({ err: e.message }, 'error after the route switched; the handoff stands');
        return;
      }
      if (frozen) await this.unfreeze(flow!, connId, log);
      // The target may hold a reinstated socket in repair mode: tell it to drop it silently.
      // Only a target that said no has certainly kept nothing.
      if (peer && !(step === 'offer' && e.code === 'E_REJECTED')) peer.channel.send('abort', { connId, reason: e.message });
      // The application resumes reading once told: its socket must be out of repair mode by then.
      if (exported) this.resume(fd, log);
      this.releaseDescriptor(fd, log);
      router.channel.send('failed', { connId, step, code: e.code, reason: e.detail });
      log.warn({ event: 'handoff', outcome: 'failed', step, code: e.code, client, err: e.message }, 'handoff failed; routing node keeps the connection');
      this.onRecord({ connId, flow, from: router.name, target: msg.target.node, client: client ?? 'unknown', outcome: 'failed', step, reason: e.message });
    } finally {
      if (admitted) this.inFlight.delete(connId);
    }
  }

  /** Why the descriptor may not be handed off, or undefined when it may. */
  /** What the descriptor is: an established TCP connection to a DVIPA and its flow, or why not. */
  private check(fd: number): { flow: FlowKey } | { unfit: string } {
    let info: SocketInfo;
    try {
      info = this.sockets.inspect(fd);
    } catch (err) {
      return { unfit: `cannot inspect it: ${errorText(err)}` };
    }
    const unfit = unfitDescriptor(info, this.isDvipa);
    const flow = socketFlow(info);
    if (unfit || !flow) return { unfit: unfit ?? 'it has no peer' };
    return { flow };
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
   * The old socket's clock when the routing application closed it. Never throws: the target must
   * go live whatever happens here (the route already points at it); without a reading it
   * estimates the clock itself.
   */
  private async oldSocketClosed(router: RouterConnection, connId: string, timeout: number, log: Logger): Promise<number | undefined> {
    try {
      const closed = await router.replies.wait(connId, ['closed'], timeout, 'close');
      return (closed.msg as Message<'closed'>).timestamp;
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'routing application did not confirm the close; the target estimates the timestamp clock');
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

/** Why a descriptor is not an established TCP connection to a DVIPA (isDvipa), or undefined. */
export function unfitDescriptor(info: SocketInfo, isDvipa: (address: string) => boolean): string | undefined {
  if (info.domain !== K.AF_INET && info.domain !== K.AF_INET6) return info.domain === K.AF_UNIX ? 'a Unix socket' : `a socket of address family ${info.domain}`;
  if (info.type !== K.SOCK_STREAM || info.protocol !== K.IPPROTO_TCP) return info.type === K.SOCK_DGRAM ? 'a datagram (UDP) socket' : `socket type ${info.type}, protocol ${info.protocol}`;
  if (info.tcpState !== K.TCP_ESTABLISHED) return `TCP state ${TCP_STATES[info.tcpState as keyof typeof TCP_STATES] ?? info.tcpState}`;
  if (!info.local || !isDvipa(info.local.address)) return `its local address ${info.local?.address} is not a DVIPA`;
  return undefined;
}

/** Did the socket stay as the snapshot saw it: nothing received, nothing transmitted, the same window? */
function unchangedSince(snapshot: TcpConnectionState, delta: ExportDelta): boolean {
  const a = snapshot.window;
  const b = delta.window;
  return (
    delta.received.length === 0 &&
    delta.unsentLength === snapshot.unsentLength &&
    a.sndWl1 === b.sndWl1 &&
    a.sndWnd === b.sndWnd &&
    a.maxWindow === b.maxWindow &&
    a.rcvWnd === b.rcvWnd &&
    a.rcvWup === b.rcvWup
  );
}
