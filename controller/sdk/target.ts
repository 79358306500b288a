// Target-application SDK. The application registers with its node's batond for the DVIPA ports it
// serves; each connection transferred to it arrives as an ordinary, connected net.Socket together
// with the routing application's state and the bytes it peeked.
//
//   await TargetClient.connect({ socketPath, name: 'line-target', ports: [7000] }, (conn) => {
//     conn.socket.write(`OK ${conn.appState.user}\n`);   // resume where the router left off
//   });
//
// The peeked bytes are already at the head of the socket's byte stream (they were put back into the
// kernel receive queue), so a stock consumer such as http.Server reads them like any request; they
// are also given as `peeked` for applications that want to look without reading.
import http from 'node:http';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { BatonError, isBatonError } from '../errors.js';
import type { Logger } from '../log.js';
import { appendReceived, appendSent, closeSilently, goLive, importConnection, loadNative, setWindow, type TcpConnectionState } from '../../native/repair.js';
import type { Channel } from '../transfer/channel.js';
import { Accepts, connFromWire, type Decoded, type Message } from '../transfer/messages.js';
import { AgentLinkKeeper, type AgentLinkOptions, openAgentLink } from './agent-link.js';
import { ControlLink } from './control-link.js';
import { connectionIds, handedOff } from './handed-off.js';

type FromAgent = (typeof Accepts.target)[number];

/** A reinstated socket neither committed nor aborted within this time is dropped silently. */
const PENDING_TIMEOUT_MS = 30_000;
/**
 * When live comes without the old socket's closing clock (the routing application never
 * confirmed its close), the clock is estimated as the snapshot's plus the time since the import
 * plus this much: the old socket may have gone on stamping segments for a while. Ahead costs
 * inflated first RTT samples; behind would cost PAWS drops.
 */
const TIMESTAMP_ESTIMATE_SLACK_MS = 1000;

export interface TransferredConnection {
  connId: string;
  /** The routing node the connection came from. */
  from: string;
  socket: net.Socket;
  appState: unknown;
  peeked: Buffer;
  client: { address: string; port: number };
  /**
   * Lets an operator move this connection (REST API, `batonctl move`, a node drain). The handler
   * moves it with RouterClient.handoff() at the application's next safe point, carrying its own
   * state; it resolves once moved and rejects when it could not. Without a handler such requests
   * are refused: only the application knows when its conversation can be resumed elsewhere.
   */
  onMoveRequest(handler: (node: string) => Promise<void>): void;
}

/** How long an application may take to move a connection an operator asked it to move. */
export const MOVE_TIMEOUT_MS = 30_000;

/** What the application is told about a connection offered to it, before it exists here. */
export interface TransferOffer {
  connId: string;
  from: string;
  client: { address: string; port: number };
  appState: unknown;
  peeked: Buffer;
}

export type OfferDecision = { accept: true } | { accept: false; reason: string };

/** How long the application may take to accept or refuse an offer; the routing node waits meanwhile. */
export const DECISION_TIMEOUT_MS = 1000;

export interface TargetOptions extends AgentLinkOptions {
  /** DVIPA ports this application serves. */
  ports: number[];
  /** Accept or refuse each offered connection (default: accept all). Bounded by DECISION_TIMEOUT_MS. */
  onOffer?: (offer: TransferOffer) => OfferDecision | Promise<OfferDecision>;
  /** Instance name, unique on this node (default: the application name). */
  instance?: string;
  /** Connections this instance means to serve at once, advertised to routing applications. */
  capacity?: number;
}

type TargetHello = { role: 'target'; ports: number[]; instance: string };

interface Pending {
  fd: number;
  state: TcpConnectionState;
  offer: Message<'offer'>;
  peeked: Buffer;
  timer: NodeJS.Timeout;
  importedAt: number;
}

export class TargetClient {
  private readonly pending = new Map<string, Pending>();
  private readonly deciding = new Map<string, { aborted: boolean }>();
  private readonly movers = new Map<string, (node: string) => Promise<void>>();
  private live = 0;

  private channel!: Channel<FromAgent>;
  private readonly keeper: AgentLinkKeeper<FromAgent>;
  private readonly offerPolicy?: TargetOptions['onOffer'];

  private constructor(
    channel: Channel<FromAgent>,
    readonly node: string,
    private readonly log: Logger,
    opts: TargetOptions,
    hello: TargetHello,
    private readonly onConnection: (conn: TransferredConnection) => void,
    private readonly control?: ControlLink,
  ) {
    this.offerPolicy = opts.onOffer;
    this.keeper = new AgentLinkKeeper(opts, Accepts.target, hello, log, (ch) => this.attach(ch));
    this.attach(channel);
    this.keeper.watch(channel);
  }

  /** Offers pending on a link that drops are dropped silently; the routing node rolls back. */
  private attach(channel: Channel<FromAgent>): void {
    this.channel = channel;
    channel.on('message', (d) => this.onMessage(d));
    channel.on('close', () => {
      for (const connId of [...this.pending.keys()]) this.drop(connId, 'link to batond closed');
    });
  }

  static async connect(opts: TargetOptions, onConnection: (conn: TransferredConnection) => void): Promise<TargetClient> {
    // Pay for loading the native library now, not inside the first handoff.
    loadNative();
    const instance = opts.instance ?? opts.name;
    const hello: TargetHello = { role: 'target', ports: opts.ports, instance };
    const { channel, node, log } = await openAgentLink(opts, Accepts.target, hello);
    let control: ControlLink | undefined;
    if (opts.control) {
      try {
        control = await ControlLink.open(opts.control, { role: 'target', app: opts.name, instance, ports: opts.ports, capacity: opts.capacity ?? 0, load: 0 }, log);
      } catch (err) {
        channel.close();
        throw err;
      }
    }
    return new TargetClient(channel, node, log, opts, hello, onConnection, control);
  }

  /** Connections this instance serves now: its load, as routing applications see it. */
  get load(): number {
    return this.live;
  }

  close(): void {
    this.keeper.stop();
    this.control?.close();
    this.channel.close();
  }

  private onMessage(d: Decoded<FromAgent>): void {
    const { msg, blobs } = d;
    switch (msg.type) {
      case 'welcome':
        return;
      case 'offer':
        void this.onOffer(msg, blobs);
        return;
      case 'commit':
        return this.onCommit(msg.connId, blobs[0]!, msg.unsentLength, msg.window);
      case 'live':
        return this.onLive(msg.connId, msg.timestamp);
      case 'abort':
        return this.drop(msg.connId, msg.reason);
      case 'move':
        void this.onMove(msg.connId, msg.node);
        return;
    }
  }

  private async onMove(connId: string, node: string): Promise<void> {
    const mover = this.movers.get(connId);
    if (!mover) {
      this.channel.send('moved', { connId, ok: false, reason: 'the application does not move this connection (no move handler, or it has ended)' });
      return;
    }
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        mover(node),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`not moved within ${MOVE_TIMEOUT_MS} ms`)), MOVE_TIMEOUT_MS);
        }),
      ]);
      this.log.info({ connId, node }, 'connection moved on request');
      this.channel.send('moved', { connId, ok: true });
    } catch (err) {
      this.log.warn({ connId, node, err: (err as Error).message }, 'requested move failed; still serving here');
      this.channel.send('moved', { connId, ok: false, reason: (err as Error).message.slice(0, 500) });
    } finally {
      clearTimeout(timer);
    }
  }

  /** Reinstate the socket in repair mode: it exists, bound to the DVIPA, but says nothing yet. */
  /**
   * Ask the application (claims 4, 14), then reinstate the socket in repair mode: it exists, bound
   * to the DVIPA, but says nothing yet. A refusal or a failed reinstatement goes back as a reject
   * with the reason; the routing node then still owns the connection.
   */
  private async onOffer(offer: Message<'offer'>, blobs: Buffer[]): Promise<void> {
    const connId = offer.connId;
    const [sendQueue, recvQueue, peeked] = blobs as [Buffer, Buffer, Buffer];
    if (this.pending.has(connId) || this.deciding.has(connId)) {
      this.channel.send('reject', { connId, reason: 'connection already pending here' });
      return;
    }
    const deciding = { aborted: false };
    this.deciding.set(connId, deciding);
    try {
      const state = connFromWire(offer.conn, sendQueue, recvQueue, connId);
      const decision = await this.decide({ connId, from: offer.from, client: { ...state.remote }, appState: offer.appState, peeked });
      if (!decision.accept) {
        this.log.info({ connId, reason: decision.reason }, 'transfer refused by the application');
        this.channel.send('reject', { connId, reason: decision.reason });
        return;
      }
      if (deciding.aborted) return;
      const t = performance.now();
      const fd = importConnection(state, { prepend: peeked });
      const importUs = Math.round((performance.now() - t) * 1000);
      const timer = setTimeout(() => this.drop(connId, `neither live nor abort within ${PENDING_TIMEOUT_MS} ms`), PENDING_TIMEOUT_MS);
      timer.unref();
      this.pending.set(connId, { fd, state, offer, peeked, timer, importedAt: performance.now() });
      this.channel.send('accept', { connId, importUs });
    } catch (err) {
      const reason = isBatonError(err) ? err.message : `import failed: ${(err as Error).message}`;
      this.log.warn({ connId, err: reason }, 'transfer refused: socket could not be reinstated');
      this.channel.send('reject', { connId, reason });
    } finally {
      this.deciding.delete(connId);
    }
  }

  /** The application's verdict, bounded in time: no answer is a refusal. */
  private decide(offer: TransferOffer): Promise<OfferDecision> {
    if (!this.offerPolicy) return Promise.resolve({ accept: true });
    const ask = this.offerPolicy;
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ accept: false, reason: `target application did not decide within ${DECISION_TIMEOUT_MS} ms` }), DECISION_TIMEOUT_MS);
      Promise.resolve()
        .then(() => ask(offer))
        .then(
          (d) => resolve(d),
          (err: unknown) => resolve({ accept: false, reason: `target application failed to decide: ${(err as Error).message}` }),
        )
        .finally(() => clearTimeout(timer));
    });
  }

  /**
   * Still in repair mode: take in what changed at the routing node between the snapshot and the
   * freeze. Bytes that reached its receive queue are appended to ours; bytes of the unsent tail its
   * kernel transmitted meanwhile (an ACK opened the window) become part of our sent queue, or the
   * client would acknowledge data this socket believes it never sent. The window at the freeze
   * replaces the snapshot's, which may still say the client's window is shut.
   */
  private onCommit(connId: string, delta: Buffer, unsentLength: number, window: TcpConnectionState['window']): void {
    const p = this.pending.get(connId);
    if (!p) {
      this.channel.send('reject', { connId, reason: 'commit for a connection not pending here' });
      return;
    }
    try {
      const { state } = p;
      if (unsentLength > state.unsentLength) {
        throw new BatonError('E_PROTOCOL', `unsent tail grew from ${state.unsentLength} to ${unsentLength} bytes`, { connId, step: 'commit' });
      }
      if (unsentLength < state.unsentLength) {
        const start = state.sendQueue.length - state.unsentLength;
        appendSent(p.fd, state.sendQueue.subarray(start, start + state.unsentLength - unsentLength));
        state.unsentLength = unsentLength;
      }
      if (delta.length > 0) appendReceived(p.fd, delta);
      setWindow(p.fd, window);
      this.channel.send('ready', { connId });
    } catch (err) {
      this.log.warn({ connId, err: (err as Error).message }, 'could not apply the commit');
      this.drop(connId, 'commit failed');
      this.channel.send('reject', { connId, reason: `commit failed: ${(err as Error).message}` });
    }
  }

  private onLive(connId: string, oldClock: number | undefined): void {
    const p = this.pending.get(connId);
    if (!p) {
      this.log.error({ connId }, 'live for a connection not pending here');
      return;
    }
    clearTimeout(p.timer);
    this.pending.delete(connId);
    let socket: net.Socket;
    let timestamp: number | undefined;
    if (p.state.options.timestamps) {
      timestamp = oldClock ?? (p.state.timestamp + Math.round(performance.now() - p.importedAt) + TIMESTAMP_ESTIMATE_SLACK_MS) >>> 0;
      if (oldClock === undefined) this.log.warn({ connId }, 'no closing clock from the routing node: timestamp clock estimated');
    }
    try {
      goLive(p.fd, timestamp);
      socket = new net.Socket({ fd: p.fd, readable: true, writable: true });
    } catch (err) {
      this.log.error({ connId, err: (err as Error).message }, 'could not leave repair mode: connection lost');
      closeSilently(p.fd);
      return;
    }
    // Bytes the routing node's kernel never transmitted: they follow everything already sent.
    if (p.state.unsentLength > 0) socket.write(p.state.sendQueue.subarray(p.state.sendQueue.length - p.state.unsentLength));
    // TCP_NODELAY is not part of the exported state. Node's http.Server turns Nagle off for the
    // sockets it accepts; a transferred one must not make its last small reply wait for the
    // client's delayed ACK (measured: up to 40 ms).
    socket.setNoDelay(true);
    connectionIds.set(socket, connId);
    this.log.info({ connId, from: p.offer.from, client: `${p.state.remote.address}:${p.state.remote.port}` }, 'transferred connection is live');
    this.live++;
    this.control?.update({ load: this.live });
    socket.once('close', () => {
      this.movers.delete(connId);
      this.live--;
      this.control?.update({ load: this.live });
      // The connection ended here (not moved on): the distributor may let its entry go.
      if (!handedOff.has(socket)) this.channel.send('release', { connId });
    });
    this.onConnection({
      connId,
      from: p.offer.from,
      socket,
      appState: p.offer.appState,
      peeked: p.peeked,
      client: { ...p.state.remote },
      onMoveRequest: (handler) => {
        if (!socket.destroyed) this.movers.set(connId, handler);
      },
    });
  }

  private drop(connId: string, reason: string): void {
    const deciding = this.deciding.get(connId);
    if (deciding) deciding.aborted = true;
    const p = this.pending.get(connId);
    if (!p) return;
    clearTimeout(p.timer);
    this.pending.delete(connId);
    closeSilently(p.fd);
    this.log.info({ connId, reason }, 'reinstated socket dropped silently');
  }
}

/**
 * Gives a transferred connection to a stock http.Server (and so to fastify or express through
 * their `.server`) as if the server had just accepted it. The peeked request is already at the
 * head of the socket's stream, so the server parses and answers it like any other.
 */
export function serveHttp(server: http.Server, conn: TransferredConnection): void {
  server.emit('connection', conn.socket);
}
