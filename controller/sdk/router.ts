// Routing-application SDK. The application accepts connections on the DVIPA itself (an ordinary
// net.Server), talks with the client for as long as it needs, then calls handoff(): the live
// connection moves to the chosen target node and the client notices nothing.
//
//   const router = await RouterClient.connect({ socketPath, name: 'my-router' });
//   const result = await router.handoff(socket, { node: 'n2', port: 7000 }, { appState, peeked });
//   // or several targets, tried in order, with an error reply to the client if none takes it:
//   await router.handoffOrReply(socket, [t1, t2], { appState, peeked, errorReply: (e) => `ERR ${e.code}\n` });
//
// Once handoff() is called the socket belongs to Baton: do not write to it. The SDK stops reading
// it and hands batond a duplicate of its descriptor; batond does every TCP_REPAIR step (the
// application needs no privilege for that). On success the socket has been closed silently here
// (the 'close' event fires; the client saw nothing) and the target application serves the
// connection. On failure handoff() rejects with a BatonError saying which step failed, and the
// socket is exactly as before: still connected, reading resumed, any bytes that arrived meanwhile
// delivered. The application may retry elsewhere or answer the client.
import { EventEmitter } from 'node:events';
import type net from 'node:net';
import type tls from 'node:tls';
import { performance } from 'node:perf_hooks';
import { monotonicUs } from '../clock.js';
import { BatonError, isBatonError, isRetryable } from '../errors.js';
import type { Logger } from '../log.js';
import { kernelTls } from '../../native/kernel-tls.js';
import { leaveRepair, loadNative, socketTimestamp } from '../../native/repair.js';
import { type TakenOver, takeOverReads, takeOverTls, type TakenOverTls, untilFlushed } from './socket-takeover.js';
import { tlsSessionOf } from './tls-session.js';
import { drainKtls, handedOffState, KtlsSocket, quietKtls } from './ktls-socket.js';
import { type Channel, PendingReplies } from '../transfer/channel.js';
import { logSparsely } from '../input.js';
import type { LinkInbox } from '../transfer/fd-exchange.js';
import { Accepts, appStateRefusal, type DistributorTimings, type HopClock, MAX_PEEKED_BYTES, type Message } from '../transfer/messages.js';
import { type AgentLink, AgentLinkKeeper, type AgentLinkOptions, openApplication } from './agent-link.js';
import type { ControlLink } from './control-link.js';
import { holdForHandoff } from './routing-guard.js';
import { handedOff, handoffIdOf } from './handed-off.js';
import type { TargetInfo } from '../control/messages.js';

type FromAgent = (typeof Accepts.router)[number];

/**
 * Bytes the target replays before anything new from the client; they go into its kernel receive
 * queue. batond refuses more (messages.ts), as it refuses appState over MAX_APP_STATE_BYTES or
 * nested deeper than MAX_JSON_DEPTH: handoff() checks all three before it sends anything.
 */
export { MAX_PEEKED_BYTES };
/**
 * How long handoff() waits for batond's verdict: longer than batond can take, or the application
 * would resume reading a socket whose route batond may still move. batond waits at most one step
 * timeout for each of the peer link, the offer, the freeze, the commit and the route before it
 * says done or failed; a second more for the messages. 10 s when batond did not say its timeout.
 */
export function verdictTimeoutMs(handoffStepTimeoutMs?: number): number {
  return handoffStepTimeoutMs === undefined ? 10_000 : 5 * handoffStepTimeoutMs + 1000;
}

export interface HandoffTarget {
  node: string;
  port: number;
  /** A target application instance on that node (from targets()); any instance on the port if absent. */
  instance?: string;
}

export interface HandoffOptions {
  /** JSON-serialisable state the target application resumes from (who the client is, where the conversation stands). */
  appState?: unknown;
  /** Bytes the application read from the socket but did not consume: the target sees them first, in order. */
  peeked?: Buffer;
}

/** batond's step timings, and its trace (clock) with this application's send of handoff and receipt of done added. */
export interface HandoffTimings extends Omit<DistributorTimings, 'clock'> {
  clock?: HopClock & { handoffTx: number; doneRx: number };
  /** From the handoff() call until batond said the route points at the target. */
  totalUs: number;
}

export interface HandoffAttempt {
  target: HandoffTarget;
  outcome: 'done' | 'failed';
  code?: string;
  reason?: string;
}

export interface HandoffResult {
  connId: string;
  target: HandoffTarget;
  timings: HandoffTimings;
  /** Every target tried, in order; the last one took the connection. */
  attempts: HandoffAttempt[];
}

const micros = (from: number) => Math.round((performance.now() - from) * 1000);

export interface RouterOptions extends AgentLinkOptions {
  /** DVIPA ports this routing application serves; required with `control`. */
  ports?: number[];
}

export class RouterClient extends EventEmitter<{ targets: [TargetInfo[]] }> {
  private readonly replies = new PendingReplies<FromAgent>((d, n) => {
    if (logSparsely(n)) this.log.warn({ type: d.msg.type, unsolicited: n }, 'agent message for no handoff in progress');
  });
  private readonly active = new Set<net.Socket>();

  private link!: AgentLink<FromAgent>;
  private readonly keeper: AgentLinkKeeper<FromAgent>;

  private constructor(
    link: AgentLink<FromAgent>,
    private readonly inbox: LinkInbox,
    private readonly log: Logger,
    opts: RouterOptions,
    private readonly control?: ControlLink,
  ) {
    super();
    control?.on('targets', (list) => this.emit('targets', list));
    this.keeper = new AgentLinkKeeper(opts, Accepts.router, { role: 'router' }, inbox, log, (l) => this.attach(l));
    this.attach(link);
    this.keeper.watch(link.channel);
  }

  /** The node this application runs on (its batond's name). */
  get node(): string {
    return this.link.node;
  }

  private get channel(): Channel<FromAgent> {
    return this.link.channel;
  }

  /** Handoffs in flight on a link that drops fail (and roll back); new ones wait for the next link. */
  private attach(link: AgentLink<FromAgent>): void {
    this.link = link;
    const { channel } = link;
    link.listen((d) => this.replies.deliver(d));
    channel.on('close', (err) => this.replies.failAll(err ?? new BatonError('E_PEER', 'link to batond closed', { node: this.node })));
  }

  static async connect(opts: RouterOptions): Promise<RouterClient> {
    // Pay for loading the native library now, not inside the first handoff.
    loadNative();
    if (opts.control && !opts.ports?.length) throw new BatonError('E_CONFIG', 'a routing application registering on the control socket must name its DVIPA ports', { step: 'register' });
    const { link, inbox, control } = await openApplication(opts, Accepts.router, { role: 'router' }, { role: 'router', app: opts.name, ports: opts.ports ?? [] });
    return new RouterClient(link, inbox, link.log, opts, control);
  }

  /**
   * The target applications listening on the DVIPA across the cluster (claims 21, 22), as batond
   * last pushed them; a 'targets' event fires on every change. Empty without a control socket.
   */
  targets(): TargetInfo[] {
    return this.control?.targets() ?? [];
  }

  close(): void {
    this.keeper.stop();
    this.control?.close();
    this.channel.close();
    this.inbox.close();
  }

  /**
   * Hands the connection to the first target that takes it (claim 16: a refusal, an unreachable
   * node or a timeout moves on to the next). Rejects with the last failure, listing every attempt
   * in its context, when none did; the socket is then still the application's.
   */
  async handoff(socket: net.Socket, targets: HandoffTarget | readonly HandoffTarget[], opts: HandoffOptions = {}): Promise<HandoffResult> {
    const list = Array.isArray(targets) ? targets : [targets as HandoffTarget];
    if (list.length === 0) throw new BatonError('E_NO_TARGET', 'no target to hand the connection to', { step: 'prepare' });
    // A TLS connection goes with its session (tls-session.ts), which only a node with kernel TLS
    // can take over, and only if it was accepted with acceptTls(): otherwise the session lives in
    // OpenSSL where nothing can read its sequence numbers. Refused before anything changes.
    if ((socket as Partial<tls.TLSSocket>).encrypted === true) {
      const session = tlsSessionOf(socket);
      const why = !session
        ? 'it was not accepted with acceptTls(), so its record sequence numbers are unknown'
        : !kernelTls().available
          ? kernelTls().how
          : session.whyNot();
      if (why) throw new BatonError('E_HANDOFF_STATE', `a TLS connection cannot be handed off: ${why}`, { step: 'prepare' });
    }
    const attempts: HandoffAttempt[] = [];
    // The socket is Baton's from here: routing-phase limits (routing-guard.ts) must not close it
    // under a handoff, and come back only if every target failed and it is the application's again.
    const hold = holdForHandoff(socket);
    let moved = false;
    try {
      for (const target of list) {
        try {
          const result = await this.handoffOnce(socket, target, opts);
          moved = true;
          return { ...result, attempts: [...attempts, { target, outcome: 'done' }] };
        } catch (err) {
          if (!isBatonError(err) || !isRetryable(err.code)) throw err;
          attempts.push({ target, outcome: 'failed', code: err.code, reason: err.message });
          if (attempts.length === list.length) {
            throw new BatonError(err.code, list.length > 1 ? `all ${list.length} targets failed; last: ${err.message}` : err.message, { ...err.context, attempts }, { cause: err });
          }
        }
      }
      throw new Error('unreachable');
    } finally {
      if (moved) hold.handedOff();
      else hold.returned();
    }
  }

  /**
   * handoff(), and when every target failed, answers the client on the socket the routing node
   * still owns and closes it gracefully (claim 17). Resolves to the result, or undefined after
   * the error reply.
   */
  async handoffOrReply(
    socket: net.Socket,
    targets: HandoffTarget | readonly HandoffTarget[],
    opts: HandoffOptions & { errorReply: (err: BatonError) => string | Buffer },
  ): Promise<HandoffResult | undefined> {
    try {
      return await this.handoff(socket, targets, opts);
    } catch (err) {
      if (!isBatonError(err) || socket.destroyed) throw err;
      socket.end(opts.errorReply(err));
      return undefined;
    }
  }

  private async handoffOnce(socket: net.Socket, target: HandoffTarget, opts: HandoffOptions): Promise<Omit<HandoffResult, 'attempts'>> {
    const t0 = performance.now();
    const session = tlsSessionOf(socket);
    // The TCP connection: the socket itself, or under TLS the one the session runs over.
    const tcp = session?.raw ?? socket;
    const connId = handoffIdOf(tcp, this.node);
    const log = this.log.child({ connId, target: target.node });
    if (this.active.has(socket)) throw new BatonError('E_HANDOFF_STATE', 'a handoff of this socket is already in progress', { connId, step: 'prepare' });
    const peeked = opts.peeked ?? Buffer.alloc(0);
    if (this.channel.isClosed) throw new BatonError('E_PEER', 'link to batond is closed', { connId, node: this.node, step: 'prepare' });
    // The limits batond's decoder enforces, checked here first so the application hears why.
    let refusal: string | undefined;
    try {
      refusal = appStateRefusal(opts.appState ?? null);
    } catch (err) {
      throw new BatonError('E_HANDOFF_STATE', `appState is not JSON-serialisable: ${(err as Error).message}`, { connId, step: 'prepare' });
    }
    if (refusal) throw new BatonError('E_HANDOFF_STATE', refusal, { connId, step: 'prepare' });
    if ([socket, tcp].some((s) => s.readableEnded || s.writableEnded || s.destroyed)) {
      throw new BatonError('E_HANDOFF_STATE', 'socket is closing: only established connections can be handed off', { connId, step: 'prepare' });
    }
    // Stop reading before anything else, synchronously: the application has just removed its
    // 'data' listener, and a flowing socket with no listener would discard what Node reads next.
    this.active.add(socket);
    // A TLS connection transferred here (KtlsSocket): its session is in this kernel.
    const kernelSession = socket instanceof KtlsSocket;
    let taken: TakenOver;
    try {
      taken = session ? takeOverTls(session, connId) : takeOverReads(socket, connId, kernelSession ? (fd) => drainKtls(fd, connId) : undefined);
    } catch (err) {
      this.active.delete(socket);
      throw err;
    }
    let keys: Buffer | undefined;
    let sent = false;
    let answered = false;
    try {
      await untilFlushed(session ? [socket, ...session.writers] : [socket], connId);
      const kernelState = kernelSession ? await quietKtls(taken, connId) : undefined;
      const plain = Buffer.concat([peeked, taken.buffered]);
      // Under TLS the peeked plaintext goes as records sealed with the client's keys, then the
      // client's bytes held before TLS; the session's keys travel in their own blob.
      const tlsState = session ? session.offer(plain, (taken as TakenOverTls).held, connId) : kernelState ? handedOffState(kernelState, plain, connId) : undefined;
      keys = tlsState?.keys;
      const replay = tlsState?.replay ?? plain;
      if (replay.length > MAX_PEEKED_BYTES) throw new BatonError('E_HANDOFF_STATE', `peeked bytes (${replay.length}) exceed ${MAX_PEEKED_BYTES}`, { connId, step: 'prepare' });
      if (this.channel.isClosed) throw new BatonError('E_PEER', 'link to batond is closed', { connId, node: this.node, step: 'prepare' });
      // The descriptor goes first: batond looks for it when it reads the request.
      try {
        this.link.descriptors.send(taken.fd, connId);
      } catch (err) {
        throw new BatonError('E_PEER', `cannot hand the socket to batond: ${(err as Error).message}`, { connId, node: this.node, step: 'prepare' }, { cause: err });
      }
      sent = true;
      const finished = this.replies.wait(connId, ['done', 'failed'], verdictTimeoutMs(this.link.handoffStepTimeoutMs), 'handoff');
      const handoffTx = monotonicUs();
      this.channel.send('handoff', { connId, target, appState: opts.appState ?? null, ...(tlsState ? { tls: tlsState.tls } : {}) }, [replay, keys ?? Buffer.alloc(0)]);
      const outcome = await finished;
      const doneRx = monotonicUs();
      answered = true;
      if (outcome.msg.type === 'failed') throw failure(outcome.msg, connId);

      // The route points at the target; batond left the socket in repair mode, so this close is
      // silent. Unless batond read the socket's final clock itself, the target continues from the
      // reading taken just before the close.
      const done = outcome.msg as { clockNeeded?: boolean };
      const timestamp = done.clockNeeded === false ? undefined : readTimestamp(taken.fd, log);
      handedOff.add(tcp);
      handedOff.add(socket);
      session?.detach();
      tcp.destroy();
      socket.destroy();
      if (done.clockNeeded !== false) this.channel.send('closed', timestamp === undefined ? { connId } : { connId, timestamp });
      const { clock, ...steps } = (outcome.msg as { timings: DistributorTimings }).timings;
      const timings: HandoffTimings = { ...steps, ...(clock ? { clock: { ...clock, handoffTx, doneRx } } : {}), totalUs: micros(t0) };
      log.debug({ event: 'handoff', outcome: 'done', timings, peeked: replay.length, ...(tlsState ? { tls: tlsState.tls } : {}) }, 'connection handed off');
      return { connId, target, timings };
    } catch (err) {
      // Roll back: batond takes the socket out of repair mode before it says failed. If it never
      // answered (it died, or the link dropped) the socket may still be in repair mode: leave it
      // here, which needs CAP_NET_ADMIN; without it the connection is stuck and goes. A TLS
      // session carries on here: nothing of it changed.
      try {
        if (sent && !answered) leaveRepair(taken.fd);
        taken.restore();
      } catch (rollbackErr) {
        log.error({ err: (rollbackErr as Error).message }, 'rollback failed: destroying the socket');
        socket.destroy(rollbackErr as Error);
      }
      const e = isBatonError(err) ? err : new BatonError('E_PEER', (err as Error).message, { connId, step: sent ? 'handoff' : 'prepare' }, { cause: err });
      log.warn({ event: 'handoff', outcome: 'failed', code: e.code, step: e.context.step, err: e.message }, 'handoff failed; socket kept');
      throw e;
    } finally {
      // The keys were written to batond long before its answer (or the link is gone).
      keys?.fill(0);
      this.active.delete(socket);
    }
  }
}

function readTimestamp(fd: number, log: Logger): number | undefined {
  try {
    return socketTimestamp(fd);
  } catch (err) {
    log.error({ err: (err as Error).message }, 'cannot read the timestamp clock; the target estimates it');
    return undefined;
  }
}

/** batond's failed message as the application's error: its code is one of the table's (the schema says so). */
function failure(msg: Message<'failed'>, connId: string): BatonError {
  return new BatonError(msg.code, msg.reason, { connId, step: msg.step });
}
