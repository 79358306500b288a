// The target node's side of a handoff: batond reinstates each offered connection itself, in
// repair mode, completes it with the routing node's delta, makes it live once the route points
// here, and only then hands the socket's descriptor to the target application registered for the
// DVIPA port (fd-exchange.ts), with the state and peeked bytes it resumes from. The application
// hears of a transfer once (transferred), or twice when it decides on offers itself (decide).
// Either party vanishing is turned into a clean reject or abort.
import { performance } from 'node:perf_hooks';
import { BatonError, isBatonError } from '../errors.js';
import type { Logger } from '../log.js';
import { describeFlow, type FlowKey } from '../agent/routing-table.js';
import type { TcpConnectionState } from '../../native/repair.js';
import type { Channel } from './channel.js';
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
  /** Connections it serves at once beyond which offers are refused; 0: no limit. */
  capacity: number;
}

interface Pending {
  peer: Channel<FromPeer>;
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

export class TargetRelay {
  private readonly byPort = new Map<number, TargetApp[]>();
  private readonly pending = new Map<string, Pending>();
  /** Connections live in a target application here, by connection id: released when they close. */
  private readonly owned = new Map<string, { app: TargetApp; flow: FlowKey; since: number }>();
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
  private readonly sweeper: NodeJS.Timeout;

  constructor(
    private readonly log: Logger,
    /** A handoff the routing node neither finished nor aborted within this time is dropped here. */
    private readonly staleAfterMs: number,
    private readonly sockets: HandoffSockets,
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
    this.log.info({ app: app.name, instance: app.instance, ports: app.ports, decides: app.decides, capacity: app.capacity }, 'target application registered');
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

  peerClosed(peer: Channel<FromPeer>): void {
    for (const [connId, p] of this.pending) {
      if (p.peer !== peer) continue;
      this.abort(connId, p, 'link to the routing node closed');
    }
  }

  fromPeer(peer: Channel<FromPeer>, d: Decoded<FromPeer>): void {
    const { msg, blobs } = d;
    // Routing-table requests are the distributor's business (node-agent hands them to RouteService).
    if (msg.type === 'hello' || msg.type === 'route' || msg.type === 'listeners') return;
    const connId = msg.connId;
    if (msg.type === 'offer') return this.offer(peer, msg, blobs);
    const orphan = this.orphans.get(connId);
    if (orphan && msg.type !== 'live') {
      // The routing node rolled back (our reject, or its own failure): nothing was routed here.
      this.orphans.delete(connId);
      return;
    }
    if (orphan) {
      this.orphans.delete(connId);
      this.log.warn({ connId, flow: describeFlow(orphan.flow) }, 'routed here after its target application died: releasing the flow (the client sees a reset)');
      this.onOrphan(orphan.flow, connId);
      return;
    }
    const p = this.pending.get(connId);
    if (!p || p.peer !== peer) {
      this.log.warn({ connId, type: msg.type }, 'message for a transfer not pending here');
      if (msg.type === 'commit') peer.send('reject', { connId, reason: 'no pending transfer with this id' });
      return;
    }
    if (msg.type === 'commit') this.commit(connId, p, blobs[0]!, msg.unsentLength, msg.window);
    else if (msg.type === 'live') this.goLive(connId, p, msg.timestamp);
    else this.abort(connId, p, msg.reason);
  }

  private offer(peer: Channel<FromPeer>, msg: Message<'offer'>, blobs: Buffer[]): void {
    const connId = msg.connId;
    const app = this.pick(msg.target.port, msg.target.instance);
    if (!app) {
      const what = msg.target.instance ? `instance ${msg.target.instance} on port ${msg.target.port}` : `port ${msg.target.port}`;
      peer.send('reject', { connId, reason: `no target application serves ${what} on this node` });
      return;
    }
    if (this.pending.has(connId)) {
      peer.send('reject', { connId, reason: 'a transfer of this connection is already pending here' });
      return;
    }
    const held = this.holding.get(app) ?? 0;
    if (app.capacity > 0 && held >= app.capacity) {
      peer.send('reject', { connId, reason: `target application ${app.instance ?? app.name} is at capacity (${app.capacity} connections)` });
      return;
    }
    const [sendQueue, recvQueue, peeked] = blobs as [Buffer, Buffer, Buffer];
    let state: TcpConnectionState;
    try {
      state = connFromWire(msg.conn, sendQueue, recvQueue, connId);
    } catch (err) {
      peer.send('reject', { connId, reason: (err as Error).message });
      return;
    }
    const flow: FlowKey = { family: state.family, clientAddress: state.remote.address, clientPort: state.remote.port, vipAddress: state.local.address, vipPort: state.local.port };
    const p: Pending = { peer, app, flow, since: Date.now(), from: msg.from, state, appState: msg.appState, peeked };
    this.pending.set(connId, p);
    this.holding.set(app, held + 1);
    if (app.decides) app.channel.send('decide', { connId, from: msg.from, client: { ...state.remote }, appState: msg.appState }, [peeked]);
    else this.reinstate(connId, p);
  }

  /** In repair mode: the socket exists, bound to the DVIPA, but says nothing until live. */
  private reinstate(connId: string, p: Pending): void {
    try {
      const t = performance.now();
      p.fd = this.sockets.reinstate(p.state, p.peeked);
      p.importedAt = performance.now();
      p.peer.send('accept', { connId, importUs: Math.round((p.importedAt - t) * 1000) });
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
      if (p.fd === undefined) throw new BatonError('E_PROTOCOL', 'commit before the connection was accepted', { connId, step: 'commit' });
      const { state } = p;
      if (unsentLength > state.unsentLength) {
        throw new BatonError('E_PROTOCOL', `unsent tail grew from ${state.unsentLength} to ${unsentLength} bytes`, { connId, step: 'commit' });
      }
      const start = state.sendQueue.length - state.unsentLength;
      this.sockets.complete(p.fd, state.sendQueue.subarray(start, start + state.unsentLength - unsentLength), received, window);
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
    this.pending.delete(connId);
    const { state, app } = p;
    const fd = p.fd;
    if (fd === undefined) {
      this.log.error({ connId }, 'live for a connection never accepted here: releasing the flow');
      this.hold(app, -1);
      this.onOrphan(p.flow, connId);
      return;
    }
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
    this.owned.set(connId, { app, flow: p.flow, since: Date.now() });
    this.onLive(p.flow);
    try {
      // The descriptor first: the application looks for it when transferred arrives.
      app.descriptors.send(fd, connId);
      app.channel.send('transferred', { connId, from: p.from, client: { ...state.remote }, appState: p.appState }, [p.peeked, state.sendQueue.subarray(state.sendQueue.length - state.unsentLength)]);
    } catch (err) {
      // Live, with nobody to serve it: the client gets a FIN from here, and the entry goes.
      this.log.error({ connId, app: app.name, err: (err as Error).message }, 'cannot hand the live socket to its application: closing it');
      this.owned.delete(connId);
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
    this.pending.delete(connId);
    this.hold(p.app, -1);
    if (p.fd !== undefined) this.discard(connId, p.fd);
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

  /** Connections live in target applications on this node. */
  connections(): Array<{ connId: string; flow: FlowKey; app: string; instance?: string; since: number }> {
    return [...this.owned].map(([connId, o]) => ({ connId, flow: o.flow, app: o.app.name, instance: o.app.instance, since: o.since }));
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
    this.owned.delete(connId);
    this.hold(app, -1);
    return o.flow;
  }

  /** The application is gone: every connection it served is gone with it. */
  releasedAll(app: TargetApp): Array<{ connId: string; flow: FlowKey }> {
    const gone: Array<{ connId: string; flow: FlowKey }> = [];
    for (const [connId, o] of this.owned) {
      if (o.app !== app) continue;
      this.owned.delete(connId);
      gone.push({ connId, flow: o.flow });
    }
    return gone;
  }

  /** The connection moved on from this node: it is no longer ours to release. */
  movedOn(flow: FlowKey): void {
    const key = describeFlow(flow);
    for (const [connId, o] of this.owned) {
      if (describeFlow(o.flow) !== key) continue;
      this.owned.delete(connId);
      this.hold(o.app, -1);
    }
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
