// Target-application SDK. The application registers with its node's batond for the DVIPA ports it
// serves; each connection transferred to it arrives as an ordinary, connected net.Socket together
// with the routing application's state and the bytes it peeked. batond reinstates the connection
// and makes it live; the application receives the live socket's descriptor (fd-exchange.ts) and
// needs no privilege. With onOffer it decides on each offer first; otherwise batond accepts up to
// the capacity it registered.
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
import type { Logger } from '../log.js';
import { closeFd } from '../../native/fdpass.js';
import { loadNative } from '../../native/repair.js';
import type { Channel } from '../transfer/channel.js';
import type { LinkInbox } from '../transfer/fd-exchange.js';
import { Accepts, type Decoded, type Message } from '../transfer/messages.js';
import { type AgentLink, AgentLinkKeeper, type AgentLinkOptions, type AppHello, openApplication } from './agent-link.js';
import type { ControlLink } from './control-link.js';
import { monotonicUs } from '../clock.js';
import { handedOff, keepHandoffId } from './handed-off.js';
import { hostPort } from '../flow.js';
import { KtlsSocket } from './ktls-socket.js';

type FromAgent = (typeof Accepts.target)[number];

export interface TransferredConnection {
  connId: string;
  /** The routing node the connection came from. */
  from: string;
  socket: net.Socket;
  appState: unknown;
  /** The peeked bytes, for a look (empty for a TLS connection: they are records, read decrypted from the socket). */
  peeked: Buffer;
  client: { address: string; port: number };
  /** A TLS connection: its version and cipher. The socket reads and writes plaintext (kernel TLS). */
  tls?: { version: '1.2' | '1.3'; cipher: string };
  /**
   * The end of the handoff's trace (the monotonic clock, controller/clock.ts, µs): when the target
   * node's batond received live and sent transferred, and when this process received it.
   */
  clock?: { liveRx: number; transferredTx: number; transferredRx: number };
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
  /**
   * Accept or refuse each offered connection. Bounded by DECISION_TIMEOUT_MS. Without it batond
   * accepts every offer up to capacity on its own, and the handoff saves a round trip to here.
   */
  onOffer?: (offer: TransferOffer) => OfferDecision | Promise<OfferDecision>;
  /** Instance name, unique on this node (default: the application name). */
  instance?: string;
  /**
   * Connections this instance serves at once: advertised to routing applications, and batond
   * refuses offers beyond it (0, the default: no limit).
   */
  capacity?: number;
}

export class TargetClient {
  private readonly movers = new Map<string, (node: string) => Promise<void>>();
  private live = 0;

  private link!: AgentLink<FromAgent>;
  private readonly keeper: AgentLinkKeeper<FromAgent>;
  private readonly offerPolicy?: TargetOptions['onOffer'];

  private constructor(
    link: AgentLink<FromAgent>,
    private readonly inbox: LinkInbox,
    private readonly log: Logger,
    opts: TargetOptions,
    hello: AppHello,
    private readonly onConnection: (conn: TransferredConnection) => void,
    private readonly control?: ControlLink,
  ) {
    this.offerPolicy = opts.onOffer;
    this.keeper = new AgentLinkKeeper(opts, Accepts.target, hello, inbox, log, (l) => this.attach(l));
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

  private attach(link: AgentLink<FromAgent>): void {
    this.link = link;
    link.listen((d) => this.onMessage(d));
  }

  static async connect(opts: TargetOptions, onConnection: (conn: TransferredConnection) => void): Promise<TargetClient> {
    // Pay for loading the native library now, not inside the first transfer.
    loadNative();
    const instance = opts.instance ?? opts.name;
    const capacity = opts.capacity ?? 0;
    const hello: AppHello = { role: 'target', ports: opts.ports, instance, decides: opts.onOffer !== undefined, capacity };
    const { link, inbox, control } = await openApplication(opts, Accepts.target, hello, { role: 'target', app: opts.name, instance, ports: opts.ports, capacity, load: 0 });
    return new TargetClient(link, inbox, link.log, opts, hello, onConnection, control);
  }

  /** Connections this instance serves now: its load, as routing applications see it. */
  get load(): number {
    return this.live;
  }

  close(): void {
    this.keeper.stop();
    this.control?.close();
    this.channel.close();
    this.inbox.close();
  }

  private onMessage(d: Decoded<FromAgent>): void {
    const { msg, blobs } = d;
    switch (msg.type) {
      case 'welcome':
      case 'abort':
        // An offer this application was deciding on was withdrawn: its answer will be ignored.
        return;
      case 'decide':
        void this.onDecide(msg, blobs[0]!);
        return;
      case 'transferred':
        return this.onTransferred(msg, blobs[0]!, blobs[1]!);
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

  /** Asks the application (claims 4, 14); batond reinstates the connection only if it says yes. */
  private async onDecide(offer: Message<'decide'>, peeked: Buffer): Promise<void> {
    const { connId } = offer;
    const decision = await this.decide({ connId, from: offer.from, client: { ...offer.client }, appState: offer.appState, peeked });
    if (!decision.accept) this.log.info({ connId, reason: decision.reason }, 'transfer refused by the application');
    this.channel.send('decided', decision.accept ? { connId, accept: true } : { connId, accept: false, reason: decision.reason.slice(0, 500) });
  }

  /** The application's verdict, bounded in time: no answer is a refusal. */
  private decide(offer: TransferOffer): Promise<OfferDecision> {
    const ask = this.offerPolicy;
    if (!ask) return Promise.resolve({ accept: true });
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

  /** A live connection: its descriptor is already queued on our descriptor socket. */
  private onTransferred(msg: Message<'transferred'>, peeked: Buffer, unsent: Buffer): void {
    const transferredRx = monotonicUs();
    const { connId } = msg;
    const fd = this.link.descriptors.take(connId);
    if (fd === undefined) {
      // batond has closed its copy: the connection is gone. Say so, so its entry goes too.
      this.log.error({ connId }, 'transferred connection arrived without its descriptor: lost');
      this.channel.send('release', { connId });
      return;
    }
    let socket: net.Socket;
    try {
      // A TLS connection's kernel already holds its session (batond installed kernel TLS).
      socket = msg.tls ? new KtlsSocket({ fd, readable: true, writable: true }, connId, this.log) : new net.Socket({ fd, readable: true, writable: true });
    } catch (err) {
      this.log.error({ connId, err: (err as Error).message }, 'cannot open the transferred socket: lost');
      closeFd(fd);
      this.channel.send('release', { connId });
      return;
    }
    // Bytes the routing node's kernel never transmitted: they follow everything already sent.
    if (unsent.length > 0) socket.write(unsent);
    // TCP_NODELAY is not part of the exported state. Node's http.Server turns Nagle off for the
    // sockets it accepts; a transferred one must not make its last small reply wait for the
    // client's delayed ACK (measured: up to 40 ms).
    socket.setNoDelay(true);
    keepHandoffId(socket, connId);
    this.log.debug({ connId, from: msg.from, client: hostPort(msg.client.address, msg.client.port) }, 'transferred connection is live');
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
      from: msg.from,
      ...(msg.clock ? { clock: { liveRx: msg.clock.liveRx, transferredTx: msg.clock.tx, transferredRx } } : {}),
      socket,
      appState: msg.appState,
      peeked,
      ...(msg.tls ? { tls: { ...msg.tls } } : {}),
      client: { ...msg.client },
      onMoveRequest: (handler) => {
        if (!socket.destroyed) this.movers.set(connId, handler);
      },
    });
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
