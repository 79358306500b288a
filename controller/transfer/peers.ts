// Node↔node links. Each batond keeps one open mutual-TLS connection per peer it sends transfers
// to (a handshake per handoff would cost round trips), and answers on whatever link an offer
// arrived. Who may be a peer: peer-tls.ts.
import net from 'node:net';
import tls from 'node:tls';
import { BatonError } from '../errors.js';
import { logSparsely } from '../input.js';
import type { Logger } from '../log.js';
import type { ClusterConfig, NodeConfig } from '../config/cluster.js';
import { Channel, PendingReplies } from './channel.js';
import { Accepts, type Message } from './messages.js';
import { expectNode, PEER_TLS_OPTIONS, type PeerTlsMaterial } from './peer-tls.js';
import { hostPort } from '../flow.js';

type PeerReply = (typeof Accepts.peerReplies)[number];

export interface PeerLink {
  node: NodeConfig;
  channel: Channel<PeerReply>;
  replies: PendingReplies<PeerReply>;
}

export class PeerLinks {
  private readonly links = new Map<string, Promise<PeerLink>>();
  /** A backup distributor's acknowledgement of the replication stream sent on our link to it (ha/replication-source.ts). */
  onReplicaAck: (node: string, msg: Message<'replica-ack'>) => void = () => undefined;

  constructor(
    private readonly config: ClusterConfig,
    private readonly self: NodeConfig,
    private readonly log: Logger,
    private readonly connectTimeoutMs: number,
    private readonly tlsMaterial: PeerTlsMaterial,
  ) {}

  /** The open link to `name`, connecting (and saying hello) on first use or after a break. */
  get(name: string): Promise<PeerLink> {
    const existing = this.links.get(name);
    if (existing) return existing;
    const node = this.config.nodes.find((n) => n.name === name);
    if (!node) return Promise.reject(new BatonError('E_PEER', `unknown node ${name}`, { node: name, step: 'connect' }));
    const link = this.connect(node);
    this.links.set(name, link);
    link.catch(() => this.links.delete(name));
    return link;
  }

  close(): void {
    for (const link of this.links.values()) link.then((l) => l.channel.close(), () => undefined);
    this.links.clear();
  }

  private connect(node: NodeConfig): Promise<PeerLink> {
    const log = this.log.child({ peer: node.name });
    return new Promise((resolve, reject) => {
      // From our management address: the peer checks the connection comes from the node our certificate names.
      const tcp = net.connect({ host: node.address, port: node.peerPort, localAddress: this.self.address });
      const socket = tls.connect({
        socket: tcp,
        ...this.tlsMaterial,
        ...PEER_TLS_OPTIONS,
        servername: node.name,
        checkServerIdentity: expectNode(node),
      });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new BatonError('E_PEER', `no welcome from ${node.name} within ${this.connectTimeoutMs} ms`, { node: node.name, step: 'connect' }));
      }, this.connectTimeoutMs);
      const channel = new Channel(socket, Accepts.peerReplies, log);
      const replies = new PendingReplies<PeerReply>((d, n) => {
        if (logSparsely(n)) log.warn({ type: d.msg.type, connId: (d.msg as { connId?: string }).connId, unsolicited: n }, 'reply nobody waits for (late or duplicate)');
      });
      let welcomed = false;
      channel.on('message', (d) => {
        if (d.msg.type === 'welcome') {
          if (d.msg.node !== node.name) {
            channel.close(new BatonError('E_PEER', `peer at ${node.address} says it is ${d.msg.node}, expected ${node.name}`, { node: node.name }));
            return;
          }
          welcomed = true;
          clearTimeout(timer);
          resolve({ node, channel, replies });
          return;
        }
        // Not the answer to a request: the backup's progress on the stream this node sends it.
        if (d.msg.type === 'replica-ack') this.onReplicaAck(node.name, d.msg);
        else replies.deliver(d);
      });
      channel.on('close', (err) => {
        clearTimeout(timer);
        this.links.delete(node.name);
        replies.failAll(err ?? new BatonError('E_PEER', `link to ${node.name} closed`, { node: node.name }));
        if (!welcomed) reject(new BatonError('E_PEER', `cannot reach ${node.name} at ${hostPort(node.address, node.peerPort)}${err ? `: ${err.message}` : ''}`, { node: node.name, step: 'connect' }));
      });
      socket.once('secureConnect', () => channel.send('hello', { role: 'peer', name: this.self.name }));
    });
  }
}
