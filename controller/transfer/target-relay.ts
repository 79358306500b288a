// The target node's side of a handoff: offers from the routing node go to the target application
// registered for the DVIPA port, and its answers go back on the link the offer came from. The
// application does the reinstatement itself (the socket must end up in its process); this node
// keeps the bookkeeping so either party vanishing is turned into a clean reject or abort.
import { BatonError } from '../errors.js';
import type { Logger } from '../log.js';
import { describeFlow, type FlowKey } from '../agent/routing-table.js';
import type { Channel } from './channel.js';
import type { Accepts, Decoded } from './messages.js';

type FromPeer = (typeof Accepts.agentFromPeer)[number];
type FromTarget = (typeof Accepts.agentFromTarget)[number];

export interface TargetApp {
  name: string;
  /** The instance name it registered on the control socket; offers may ask for it. */
  instance?: string;
  ports: number[];
  channel: Channel<FromTarget>;
}

interface Pending {
  peer: Channel<FromPeer>;
  app: TargetApp;
  flow: FlowKey;
  since: number;
}

export class TargetRelay {
  private readonly byPort = new Map<number, TargetApp[]>();
  private readonly pending = new Map<string, Pending>();
  /** Connections live in a target application here, by connection id: released when they close. */
  private readonly owned = new Map<string, { app: TargetApp; flow: FlowKey; since: number }>();
  /** Operator moves waiting for the application's answer, by connection id. */
  private readonly moving = new Map<string, { app: TargetApp; settle: (err?: Error) => void }>();
  /**
   * Transfers whose application died while pending, by connection id. Our reject may arrive after
   * the routing node has already switched the route (the application said ready, then died): its
   * 'live' then names a flow nobody here serves, which must be released or its entry would steer
   * the client to a dead socket forever. Forgotten after staleAfterMs.
   */
  private readonly orphans = new Map<string, { flow: FlowKey; since: number }>();
  private readonly sweeper: NodeJS.Timeout;

  constructor(
    private readonly log: Logger,
    /** A handoff the routing node neither finished nor aborted within this time is dropped here. */
    private readonly staleAfterMs: number,
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
    this.log.info({ app: app.name, instance: app.instance, ports: app.ports }, 'target application registered');
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
      this.pending.delete(connId);
      this.orphans.set(connId, { flow: p.flow, since: Date.now() });
    }
  }

  /** The instance asked for, or, when the offer names none, the first application on the port. */
  private pick(port: number, instance?: string): TargetApp | undefined {
    const apps = this.byPort.get(port) ?? [];
    return instance ? apps.find((a) => a.instance === instance) : apps[0];
  }

  peerClosed(peer: Channel<FromPeer>): void {
    for (const [connId, p] of this.pending) {
      if (p.peer !== peer) continue;
      p.app.channel.send('abort', { connId, reason: 'link to the routing node closed' });
      this.pending.delete(connId);
    }
  }

  fromPeer(peer: Channel<FromPeer>, d: Decoded<FromPeer>): void {
    const { msg, blobs } = d;
    // Routing-table requests are the distributor's business (node-agent hands them to RouteService).
    if (msg.type === 'hello' || msg.type === 'route' || msg.type === 'listeners') return;
    const connId = msg.connId;
    if (msg.type === 'offer') {
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
      const flow: FlowKey = { family: msg.conn.family, clientAddress: msg.conn.remote.address, clientPort: msg.conn.remote.port, vipAddress: msg.conn.local.address, vipPort: msg.conn.local.port };
      this.pending.set(connId, { peer, app, flow, since: Date.now() });
      const { v: _v, type: _t, blobs: _b, ...body } = msg;
      app.channel.send('offer', body, blobs);
      return;
    }
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
    if (msg.type === 'commit') p.app.channel.send('commit', { connId, unsentLength: msg.unsentLength, window: msg.window }, blobs);
    else if (msg.type === 'live') {
      p.app.channel.send('live', msg.timestamp === undefined ? { connId } : { connId, timestamp: msg.timestamp });
      this.pending.delete(connId);
      this.owned.set(connId, { app: p.app, flow: p.flow, since: Date.now() });
      this.onLive(p.flow);
    } else {
      p.app.channel.send('abort', { connId, reason: msg.reason });
      this.pending.delete(connId);
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
    if (msg.type === 'hello') return;
    if (msg.type === 'moved') {
      const m = this.moving.get(msg.connId);
      if (!m || m.app !== app) {
        this.log.warn({ connId: msg.connId, app: app.name }, 'move answer for no move in progress');
        return;
      }
      m.settle(msg.ok ? undefined : new BatonError('E_REJECTED', msg.reason ?? 'the application did not move the connection', { connId: msg.connId, step: 'move' }));
      return;
    }
    const p = this.pending.get(msg.connId);
    if (!p || p.app !== app) {
      this.log.warn({ connId: msg.connId, type: msg.type, app: app.name }, 'answer for a transfer not pending here');
      return;
    }
    const { v: _v, type: _t, blobs: _b, ...body } = msg;
    p.peer.send(msg.type, body as never);
    if (msg.type === 'reject') this.pending.delete(msg.connId);
  }

  /** The application says a connection it served has closed: its flow, if it was the application's. */
  released(app: TargetApp, connId: string): FlowKey | undefined {
    const o = this.owned.get(connId);
    if (!o || o.app !== app) return undefined;
    this.owned.delete(connId);
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
    for (const [connId, o] of this.owned) if (describeFlow(o.flow) === key) this.owned.delete(connId);
  }

  close(): void {
    clearInterval(this.sweeper);
  }

  private sweep(): void {
    const now = Date.now();
    for (const [connId, o] of this.orphans) if (now - o.since >= this.staleAfterMs) this.orphans.delete(connId);
    for (const [connId, p] of this.pending) {
      if (now - p.since < this.staleAfterMs) continue;
      this.log.warn({ connId }, 'transfer neither finished nor aborted in time: aborting at the target');
      p.app.channel.send('abort', { connId, reason: 'stale transfer' });
      this.pending.delete(connId);
    }
  }
}
