// The peer port's front door: a mutual-TLS link from another node's batond, its hello, and then one
// table (PEER_HANDLERS) saying which part of this node handles each message a peer may send —
// exhaustive over the messages the link accepts (Accepts.agentFromPeer), so a message type added
// to the protocol does not compile until someone handles it. docs/architecture.md shows the table
// (checked against this one by test/unit/agent/handlers.test.ts).
import type tls from 'node:tls';
import { BatonError } from '../errors.js';
import { errorText, logSparsely } from '../input.js';
import type { Logger } from '../log.js';
import { type ClusterConfig, type NodeConfig, nodeByName } from '../config/cluster.js';
import { servedFlows, tcpState } from '../../native/diag.js';
import type { TargetDirectory } from '../control/directory.js';
import { Channel } from '../transfer/channel.js';
import { Accepts, type Decoded, type Message } from '../transfer/messages.js';
import { authenticatePeer } from '../transfer/peer-tls.js';
import type { TargetRelay } from '../transfer/target-relay.js';
import { HELLO_TIMEOUT_MS } from './bounds.js';
import type { RouteService } from './route-service.js';
import type { ActiveDistributor } from '../ha/active.js';
import { answerServed, SERVING_MAX_FLOWS } from '../ha/served.js';

export type FromPeer = (typeof Accepts.agentFromPeer)[number];

/** Which part of the node handles each message from a peer (after the hello, which this file handles). */
export const PEER_HANDLERS = {
  hello: 'peer-front',
  offer: 'target-relay',
  commit: 'target-relay',
  live: 'target-relay',
  abort: 'target-relay',
  route: 'route-service',
  listeners: 'target-directory',
  probe: 'peer-front',
  served: 'served',
  replica: 'replica-sink',
  distributor: 'active-distributor',
} as const satisfies Record<FromPeer, string>;

/** One authenticated peer link. */
interface PeerSession {
  channel: Channel<FromPeer>;
  /** The node the certificate proved; the hello must name it too. */
  node: string;
  log: Logger;
  /** Set once the hello named the certificate's node: nothing else is handled before. */
  welcomed: boolean;
}

export interface PeerFrontParts {
  config: ClusterConfig;
  self: NodeConfig;
  log: Logger;
  relay: TargetRelay;
  directory: TargetDirectory;
  /** The distributor's routing table service; undefined on other nodes (and until started). */
  routeService(): RouteService | undefined;
  /** Which distributor is active: a distributor's announcement updates it. */
  active: ActiveDistributor;
  /**
   * The active distributor's replication stream, on a backup (ha/replica-sink.ts); the link is
   * closed when the stream is refused (the active one starts again with a snapshot).
   */
  replica(from: string, msg: Message<'replica'>, channel: Channel<FromPeer>): void;
  /** Counts a refused peer connection; returns how many of its kind so far (for sparse logs). */
  refused(reason: string): number;
  /** Keeps the channel to be closed at stop. */
  track(channel: Channel<FromPeer>): void;
}

type Handler<K extends FromPeer> = (s: PeerSession, d: Decoded<K>) => void;

export class PeerFront {
  private ignoredAnnouncements = 0;
  private readonly handlers: { [K in Exclude<FromPeer, 'hello'>]: Handler<K> };

  constructor(private readonly p: PeerFrontParts) {
    const relay: Handler<'offer' | 'commit' | 'live' | 'abort'> = (s, d) => p.relay.fromPeer(s.channel, d, s.node);
    this.handlers = {
      offer: relay,
      commit: relay,
      live: relay,
      abort: relay,
      route: (s, d) => this.route(s, d.msg),
      listeners: (s, d) => {
        if (d.msg.node !== s.node) s.log.error({ claimed: d.msg.node, peer: s.node }, 'listeners report for another node: ignored');
        else p.directory.setRemote(s.node, d.msg.targets);
      },
      probe: (s, d) => this.probe(s, d.msg),
      served: (s, d) => {
        // The dump itself stops at what a node may report: a node with more answers failed, holding no more than that.
        if (this.fromDistributor(s, d.msg.connId, 'served')) answerServed(d.msg, (f, a) => servedFlows(f, a, SERVING_MAX_FLOWS), (body) => s.channel.send('serving', body), s.log);
      },
      replica: (s, d) => p.replica(s.node, d.msg, s.channel),
      distributor: (s, d) => this.announced(s, d.msg),
    };
  }

  /** A TLS connection to the peer port, handshake done: authenticate it, then serve its messages. */
  accept(socket: tls.TLSSocket): void {
    const auth = authenticatePeer(this.p.config, socket);
    if ('refused' in auth) {
      this.refuse(auth.refused, socket.remoteAddress);
      socket.destroy();
      return;
    }
    const log = this.p.log.child({ remote: socket.remoteAddress, peer: auth.node.name });
    const session: PeerSession = { channel: new Channel<FromPeer>(socket, Accepts.agentFromPeer, log), node: auth.node.name, log, welcomed: false };
    this.p.track(session.channel);
    const helloTimer = setTimeout(() => session.channel.close(new BatonError('E_PROTOCOL', 'peer sent no hello', { step: 'hello' })), HELLO_TIMEOUT_MS);
    session.channel.on('close', () => {
      clearTimeout(helloTimer);
      this.p.relay.peerClosed(session.channel);
    });
    session.channel.on('message', (d) => {
      if (d.msg.type === 'hello') {
        clearTimeout(helloTimer);
        this.hello(session, d.msg);
        return;
      }
      if (!session.welcomed) {
        log.error({ type: d.msg.type }, 'message before hello: closing');
        session.channel.close();
        return;
      }
      (this.handlers[d.msg.type] as Handler<FromPeer>)(session, d);
    });
  }

  /** Counts and logs (sparsely) a peer connection refused before any message. */
  refuse(reason: string, from: string | undefined): void {
    const n = this.p.refused(reason);
    if (logSparsely(n)) this.p.log.warn({ from, reason, refused: n }, 'peer connection refused');
  }

  /** The hello must come once, as a peer, naming the node the certificate proved. */
  private hello(s: PeerSession, msg: Message<'hello'>): void {
    const claimed = msg.role === 'peer' ? nodeByName(this.p.config, msg.name) : undefined;
    if (s.welcomed || !claimed || claimed.name !== s.node) {
      s.log.error({ claimed: msg.name, role: msg.role }, 'peer hello refused');
      s.channel.close();
      return;
    }
    s.welcomed = true;
    s.channel.send('welcome', { node: this.p.self.name, handoffStepTimeoutMs: this.p.config.handoffStepTimeoutMs });
  }

  /** A node asks the distributor to change its routing table for a flow it serves, or whether a node serves one. */
  private route(s: PeerSession, msg: Message<'route'>): void {
    const { connId, op, flow } = msg;
    const service = this.p.routeService();
    try {
      if (!service) throw new BatonError('E_HANDOFF_STATE', `${this.p.self.name} is not the distributor`, { connId, step: op });
      switch (op) {
        case 'freeze':
          service.freeze(s.node, flow);
          break;
        case 'unfreeze':
          service.unfreeze(s.node, flow);
          break;
        case 'release':
          service.release(s.node, flow);
          break;
        case 'finished':
          service.finished(s.node, flow);
          break;
        case 'owner':
          // A target checking an offer from a node other than us: does that node serve the flow?
          if (!msg.target || !service.serves(msg.target, flow)) throw new BatonError('E_HANDOFF_STATE', `${msg.target ?? 'no node named'} does not serve this flow`, { connId, step: op });
          break;
        case 'forward':
          if (!msg.target) throw new BatonError('E_PROTOCOL', 'forward without a target', { connId, step: op });
          service.forward(s.node, flow, msg.target);
          break;
      }
      s.channel.send('routed', { connId, ok: true });
    } catch (err) {
      s.log.warn({ connId, op, requester: s.node, err: errorText(err) }, 'route request refused');
      s.channel.send('routed', { connId, ok: false, reason: err instanceof BatonError ? err.detail : errorText(err) });
    }
  }

  /** A distributor says whether it is the active one: only for itself, and only one of the cluster's distributors. */
  private announced(s: PeerSession, msg: Message<'distributor'>): void {
    if (msg.node !== s.node || !this.p.active.heard({ node: msg.node, since: msg.since, active: msg.active })) {
      const n = ++this.ignoredAnnouncements;
      if (logSparsely(n)) s.log.warn({ claimed: msg.node, peer: s.node, ignored: n }, 'distributor announcement ignored: not its own, or not from a distributor');
    }
  }

  /**
   * Which of the flows a restarted distributor asks about this node's kernel holds: what lets it
   * give an entry its previous life left frozen back to this node, or remove it. Only the
   * distributors may ask (the answer tells which clients are connected here).
   */
  private probe(s: PeerSession, msg: Message<'probe'>): void {
    if (!this.fromDistributor(s, msg.connId, 'probe')) return;
    const states = msg.flows.map((f) => {
      try {
        return tcpState(f);
      } catch (err) {
        s.log.warn({ connId: msg.connId, err: errorText(err) }, "cannot read a flow's TCP state for a probe");
        return 'UNKNOWN';
      }
    });
    s.channel.send('probed', { connId: msg.connId, states });
  }

  /**
   * Only the distributors may ask which connections this node serves (the answer tells which
   * clients are connected here); any distributor, for one taking over asks before this node may
   * have heard its announcement. Another asker's link is closed.
   */
  private fromDistributor(s: PeerSession, connId: string, question: string): boolean {
    if (this.p.config.distributors.includes(s.node)) return true;
    s.log.warn({ requester: s.node, connId }, `${question} from a node that is not a distributor: refused`);
    s.channel.close();
    return false;
  }
}
