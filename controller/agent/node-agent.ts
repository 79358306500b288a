// batond: one per node, and this is where its parts are made and wired (the composition root).
// Puts the DVIPA on the node; on a distributor runs the XDP steering program, and while it is the
// active one owns the connection routing table (distributor-role.ts: active or standby, as
// keepalived says); listens for peer nodes (peer-front.ts: which part
// handles each peer message), for local applications (app-front.ts: the same for application
// messages) and their registrations (the UDP control socket), and wires them to the handoff
// machinery, which runs on every node so a connection can move on from wherever it is served.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import path from 'node:path';
import { BatonError } from '../errors.js';
import { logSparsely } from '../input.js';
import type { Logger } from '../log.js';
import { type ClusterConfig, type NodeConfig, nodeByName, stateDirOf } from '../config/cluster.js';
import type { Channel } from '../transfer/channel.js';
import { HandoffCoordinator } from '../transfer/handoff.js';
import type { Message, MessageType } from '../transfer/messages.js';
import { ActiveRoutes, LocalRoutes, RemoteRoutes, type RouteWriter } from '../transfer/routes.js';
import { PeerLinks } from '../transfer/peers.js';
import { loadPeerTls, PEER_TLS_OPTIONS, type PeerTlsMaterial } from '../transfer/peer-tls.js';
import { DEFAULT_OFFER_BYTES_PER_PEER, DEFAULT_OFFERS_PER_PEER, TargetRelay } from '../transfer/target-relay.js';
import { FlowOwnership } from '../transfer/flow-owner.js';
import { LinkMaker } from '../transfer/fd-exchange.js';
import { type HandoffSockets, handoffSockets, idleBounds } from '../transfer/sockets.js';
import { defaultGateways, ensureDvipa, releaseDvipa } from './dvipa.js';
import { DvipaPolicy } from '../config/dvipa-policy.js';
import { DvipaSet, dvipaStateFile } from './dvipa-set.js';
import { agentEndpoints, ensureFree, explainListenFailure } from './ports.js';
import type { RouteService } from './route-service.js';
import { DistributorRole } from './distributor-role.js';
import { ActiveDistributor } from '../ha/active.js';
import { keepalivedPaths } from '../ha/keepalived.js';
import { reloadKeepalived } from '../ha/keepalived-start.js';
import { servedAsker } from '../ha/served.js';
import { servedFlows, tcpState } from '../../native/diag.js';
import { abandonAfterMs, HELLO_TIMEOUT_MS } from './bounds.js';
import { PeerFront } from './peer-front.js';
import { AppFront } from './app-front.js';
import { type FlowKey, hostPort } from '../flow.js';
import { TargetDirectory } from '../control/directory.js';
import { ControlServer, ensureControlSecret, EXPIRY_MS, HEARTBEAT_MS } from '../control/server.js';
import { loadSteering, type Steering } from './xdp.js';
import { setLibbpfLogger } from '../../native/libbpf.js';
import type { FastifyInstance } from 'fastify';
import { apiBase } from '../api/forward.js';
import { createApiServer } from '../api/server.js';
import { loadOperatorTokens } from '../api/token.js';
import { AgentMetrics } from '../metrics/metrics.js';
import { AgentAdmin } from './admin.js';
import { TransferLog } from './transfer-log.js';
import { CloseWatcher } from './close-watcher.js';

/** Connections a target application serves at once when neither it nor the cluster file says (limits.targetCapacity). */
const DEFAULT_TARGET_CAPACITY = 10_000;

export class NodeAgent {
  readonly self: NodeConfig;
  /** One of the cluster's distributors (active or standby). */
  readonly isCandidate: boolean;
  /** Which distributor is active, as this node knows it (ha/active.ts). */
  readonly active: ActiveDistributor;
  private steering?: Steering;
  private role?: DistributorRole;
  /** Replication streams sent to this node, which is no distributor (a misconfigured peer). */
  private strayReplicas = 0;
  private routes?: RouteWriter;
  private coordinator?: HandoffCoordinator;
  private links?: LinkMaker;
  private peerServer?: net.Server;
  private appServer?: net.Server;
  private readonly peers: PeerLinks;
  private readonly peerTls: PeerTlsMaterial;
  private readonly relay: TargetRelay;
  private readonly sockets: HandoffSockets;
  private readonly closing: CloseWatcher;
  /** The peer port's and the application socket's front doors: which part handles each message. */
  private readonly peerFront: PeerFront;
  private readonly appFront: AppFront;
  private readonly channels = new Set<Channel<MessageType>>();
  private readonly directory = new TargetDirectory(EXPIRY_MS);
  private control?: ControlServer;
  private listenerBeat?: NodeJS.Timeout;
  private lastReported = '';
  private readonly startedAt = Date.now();
  private readonly transfers = new TransferLog();
  private readonly metrics: AgentMetrics;
  private api?: FastifyInstance;
  readonly dvipas: DvipaSet;

  constructor(
    readonly config: ClusterConfig,
    nodeName: string,
    private readonly log: Logger,
  ) {
    const self = nodeByName(config, nodeName);
    if (!self) throw new BatonError('E_CONFIG', `node ${nodeName} is not in the cluster config`, { node: nodeName });
    this.self = self;
    this.isCandidate = config.distributors.includes(self.name);
    this.active = new ActiveDistributor(config, self.name);
    this.peerTls = loadPeerTls(config, self);
    this.peers = new PeerLinks(config, self, log, config.handoffStepTimeoutMs, this.peerTls);
    // Every connection reinstated here is bounded in idleness (limits.idle): a vanished client cannot hold it for ever.
    this.sockets = handoffSockets(idleBounds(config.limits?.idle));
    // Who serves a flow is the distributor's routing table's to say (asked over the peer link, or here).
    const owners = new FlowOwnership(this.peers, () => this.active.name(), config.handoffStepTimeoutMs, () => this.routeService());
    this.relay = new TargetRelay(
      log,
      abandonAfterMs(config),
      this.sockets,
      {
        isDvipa: (address) => this.dvipas.has(address),
        distributor: () => this.active.name(),
        confirmOwner: (node, flow, connId) => owners.confirm(node, flow, connId),
        offersPerPeer: config.limits?.offersPerPeer ?? DEFAULT_OFFERS_PER_PEER,
        offerBytesPerPeer: config.limits?.offerBytesPerPeer ?? DEFAULT_OFFER_BYTES_PER_PEER,
        targetCapacity: config.limits?.targetCapacity ?? DEFAULT_TARGET_CAPACITY,
      },
      (flow, connId) => this.release(flow, connId),
      (flow) => this.closing.forget(flow),
    );
    this.closing = new CloseWatcher(
      (flow) => tcpState(flow),
      (flow, connId, how) => {
        this.log.debug({ connId, ...how }, 'TCP done with a closed connection');
        this.routes?.finished(flow, connId).catch((err: Error) => this.log.warn({ connId, err: err.message }, 'entry not finished'));
      },
      log,
      { onStillClosing: (flow, connId) => this.routes?.release(flow, connId).catch((err: Error) => this.log.warn({ connId, err: err.message }, 'entry not released')) },
    );
    this.dvipas = new DvipaSet(
      config.dvipa,
      dvipaStateFile(stateDirOf(config), config.instance, self.name),
      {
        // A lone distributor answers ARP and neighbour solicitations for its DVIPAs itself; with backups
        // keepalived puts them on the active one's interface, and every node is silent for the copy on lo.
        hold: (address) => ensureDvipa({ address, distributor: config.distributors.length === 1 && this.isCandidate, keepalived: config.distributors.length > 1, interface: self.interface }),
        release: (address) => releaseDvipa({ address, keepalived: config.distributors.length > 1, interface: self.interface }),
      },
      new DvipaPolicy(config.dvipaCidrs, config.dvipa.addresses, config.nodes.map((n) => n.address), defaultGateways),
      // A distributor's keepalived holds and announces the added DVIPAs too (keepalived-start.ts).
      async (added) => void (config.distributors.length > 1 && this.isCandidate && reloadKeepalived(config, self.name, stateDirOf(config), added.map((d) => d.address))),
    );
    this.metrics = new AgentMetrics(self.name, {
      xdp: () => this.steering?.routes.stats(),
      // Kept as the table changes (route-service.ts): a scrape never walks the map.
      routingTable: () => this.routeService()?.tableSize(),
      quotaRefused: () => Object.fromEntries(this.routeService()?.quotas.refused ?? []),
      targets: () => this.directory.all().length,
      closing: () => this.closing.size(),
      distribution: () => this.role?.distribution(),
    });
    const track = <In extends MessageType>(channel: Channel<In>) => void this.track(channel);
    this.peerFront = new PeerFront({
      config,
      self,
      log,
      relay: this.relay,
      directory: this.directory,
      routeService: () => this.routeService(),
      active: this.active,
      replica: (from, msg, channel) => {
        if (this.role) this.role.replica(from, msg, channel as unknown as Channel<MessageType>);
        else {
          if (logSparsely(++this.strayReplicas)) this.log.warn({ from, refused: this.strayReplicas }, 'replication stream refused: this node is not a distributor');
          channel.close();
        }
      },
      refused: (reason) => this.metrics.peerRefused(reason),
      track,
    });
    this.appFront = new AppFront({
      config,
      self,
      log,
      relay: this.relay,
      dvipaPorts: () => this.dvipas.ports(),
      links: () => this.links,
      coordinator: () => this.coordinator,
      release: (flow, connId) => this.release(flow, connId),
      track,
    });
  }

  async start(): Promise<void> {
    // Before touching the node: a missing, exposed or malformed token file is a config error to fix first.
    const operators = loadOperatorTokens(this.config.api.tokenFile);
    // Still before touching the node (DVIPA, sysctls, XDP): every address batond listens on must
    // be free, or the start ends here with the holder named and nothing changed (ports.ts).
    const at = agentEndpoints(this.config, this.self);
    await ensureFree([at.control, at.peer, at.agent, at.api]);
    await this.dvipas.load();
    if (this.isCandidate) await this.startDistributor();
    this.peers.onReplicaAck = (node, msg) => this.role?.acked(node, msg);
    // The table is this node's while it is the active distributor, the active one's over the peer link otherwise.
    const routes = new ActiveRoutes(() => {
      const service = this.routeService();
      return service ? new LocalRoutes(service, this.self.name) : undefined;
    }, new RemoteRoutes(this.peers, () => this.active.name(), this.config.handoffStepTimeoutMs));
    this.routes = routes;
    this.links = new LinkMaker(this.log.child({ svc: 'descriptors' }), this.self.agentSocket);
    this.coordinator = new HandoffCoordinator(this.config, this.self, routes, this.peers, this.sockets, this.log, (r) => {
      // A connection this node served and handed on is no longer its to release.
      if (r.outcome === 'done' && r.flow) this.relay.movedOn(r.flow);
      this.transfers.add(r);
      this.metrics.handoff(r.outcome, r.step, r.timings);
    }, this.config.limits?.handoffsInFlight, (address) => this.dvipas.has(address));
    this.control = new ControlServer({
      node: this.self.name,
      port: this.config.controlPort,
      secret: ensureControlSecret(this.self.controlSecretFile),
      dvipaPorts: () => this.dvipas.ports(),
      directory: this.directory,
      log: this.log.child({ svc: 'control' }),
      metrics: { datagram: (type) => this.metrics.controlDatagram(type), drop: (reason) => this.metrics.controlDrop(reason) },
      // One registry of target applications: the agent socket's hellos and the control socket's registrations.
      applications: this.relay.applications,
    });
    // Each listen below can still lose a race for its address: the error then names the holder too.
    await this.control.start().catch(async (err: unknown) => {
      throw await explainListenFailure(err, at.control);
    });
    // Claim 23: every node tells the others which target applications listen here, on change and
    // as a heartbeat; a node whose reports stop drops out of everyone's list after EXPIRY_MS.
    this.directory.on('change', () => {
      const local = JSON.stringify(this.directory.local());
      if (local !== this.lastReported) this.reportListeners();
    });
    this.listenerBeat = setInterval(() => {
      this.reportListeners();
      // The active distributor says so again (for a node that restarted since) and streams its table to backups.
      this.role?.tick();
    }, HEARTBEAT_MS);
    this.listenerBeat.unref();
    // The chain is checked in PeerFront.accept (authenticatePeer) rather than by rejectUnauthorized: with
    // TLS 1.3 Node reports a rejected client certificate only as "socket hang up", and the log
    // should say why. Until that check passes nothing is read from the socket.
    const peerServer = tls.createServer({ ...this.peerTls, ...PEER_TLS_OPTIONS, requestCert: true, rejectUnauthorized: false, handshakeTimeout: HELLO_TIMEOUT_MS }, (s) => this.peerFront.accept(s));
    // A handshake that fails (not TLS, a replayed session) never reaches accept(). Counted and logged sparsely.
    peerServer.on('tlsClientError', (err, socket) => this.peerFront.refuse(err.message, socket.remoteAddress));
    this.peerServer = await listen(peerServer, { host: this.self.address, port: this.self.peerPort }).catch(async (err: unknown) => {
      throw await explainListenFailure(err, at.peer);
    });
    fs.mkdirSync(path.dirname(this.self.agentSocket), { recursive: true });
    // Owner-only from the moment it exists: whoever connects hands batond live connections and
    // receives others', and a chmod after listen() would leave a window open.
    const umask = process.umask(0o177);
    try {
      this.appServer = await listen(net.createServer((s) => this.appFront.accept(s)), { path: this.self.agentSocket }).catch(async (err: unknown) => {
        throw await explainListenFailure(err, at.agent);
      });
    } finally {
      process.umask(umask);
    }
    const admin = new AgentAdmin({
      config: this.config,
      self: this.self,
      startedAt: this.startedAt,
      steering: this.steering,
      relay: this.relay,
      directory: this.directory,
      control: this.control,
      transfers: this.transfers,
      metrics: this.metrics,
      log: this.log,
      table: () => this.routeService(),
      active: this.active,
      role: this.role,
      dvipas: this.dvipas,
    });
    // HTTPS with the certificate the peer links use (unless api.insecurePlaintext).
    this.api = await createApiServer({ admin, metrics: this.metrics, config: this.config, operators, tls: this.peerTls, log: this.log.child({ svc: 'api' }) });
    try {
      await this.api.listen({ host: this.self.address, port: this.config.api.port });
    } catch (err) {
      throw await explainListenFailure(new BatonError('E_CONFIG', `cannot listen on ${hostPort(this.self.address, this.config.api.port)} (REST API): ${(err as Error).message}`, { step: 'listen' }), at.api);
    }
    this.log.info(
      { dvipa: this.config.dvipa, distributors: this.config.distributors, role: this.role?.phase() ?? 'node', peer: hostPort(this.self.address, this.self.peerPort), api: apiBase(this.config, this.self), agentSocket: this.self.agentSocket },
      'batond ready',
    );
  }

  async stop(): Promise<void> {
    for (const ch of this.channels) ch.close();
    this.peers.close();
    this.relay.close();
    this.links?.close();
    this.closing.close();
    this.role?.close();
    clearInterval(this.listenerBeat);
    this.control?.close();
    this.directory.close();
    await Promise.all([closeServer(this.peerServer), closeServer(this.appServer), this.api?.close()]);
    // Only a socket this batond listened on: after a start refused for a live one, it is another's.
    if (this.appServer) fs.rmSync(this.self.agentSocket, { force: true });
    if (this.steering) {
      // Stay attached: connections already handed off keep flowing while batond restarts, and the
      // next batond adopts the pinned table and replaces the program in one step.
      this.steering.close();
      this.log.info({ pinDir: this.steering.pinDir }, 'batond stopped; XDP steering left attached, routing table pinned');
    }
  }

  /** The routing table service, while this node is the active distributor. */
  private routeService(): RouteService | undefined {
    return this.role?.routeService();
  }

  /**
   * A distributor attaches its steering program whatever its role, so a backup's replica is in the
   * map the program reads from the moment it takes over. A lone distributor is active at once;
   * with backups keepalived decides, and a node already holding the DVIPA on its interface (a
   * batond restarted on the active distributor) is active from the start.
   */
  private async startDistributor(): Promise<void> {
    // libbpf's own warnings (verifier, pinning) into our structured log rather than lost.
    setLibbpfLogger((level, message) => this.log[level]({ svc: 'libbpf' }, message.trimEnd()));
    const lone = this.config.distributors.length === 1;
    this.steering = loadSteering({
      instance: `${this.config.instance}-${this.self.name}`,
      ifname: this.self.interface,
      mode: this.config.xdpMode,
      maxEntries: this.config.limits?.routingTableEntries,
      peerMacs: this.config.nodes.filter((n) => n.name !== this.self.name && this.config.distributors.includes(n.name)).map((n) => n.mac),
      log: this.log,
    });
    const steering = this.steering;
    this.role = new DistributorRole({
      config: this.config,
      self: this.self,
      log: this.log.child({ svc: 'role' }),
      steering,
      active: this.active,
      probe: (node, flows) => this.probe(node, flows),
      peers: this.peers,
      served: servedAsker(this.peers, this.self.name, () => this.dvipas.all().map((d) => d.address), servedFlows, this.config.handoffStepTimeoutMs),
    });
    if (lone) {
      this.role.activate('the only distributor');
      return;
    }
    // With backups keepalived decides, and says so in its notify FIFO (the path its config names).
    await this.role.followKeepalived(keepalivedPaths(stateDirOf(this.config), this.config.instance, this.self.name));
  }

  private track<In extends MessageType>(ch: Channel<In>): Channel<In> {
    this.channels.add(ch as unknown as Channel<MessageType>);
    ch.on('close', () => this.channels.delete(ch as unknown as Channel<MessageType>));
    return ch;
  }

  /**
   * A connection served here was closed by its application (or the application is gone). The
   * distributor hears of it when this node's kernel is done with the connection (finished: a new
   * SYN may then take the tuple), which for most closes is by the watcher's first look, 50 ms on;
   * only a close still in progress then is reported released first (close-watcher.ts). Until
   * either, the entry forwards as before: a released one steers exactly like a forwarding one.
   */
  private release(flow: FlowKey, connId: string): void {
    this.closing.watch(flow, connId);
  }

  private reportListeners(): void {
    const targets = this.directory.local();
    this.lastReported = JSON.stringify(targets);
    for (const node of this.config.nodes) {
      if (node.name === this.self.name) continue;
      this.peers.get(node.name).then(
        (link) => link.channel.send('listeners', { node: this.self.name, targets }),
        (err: Error) => this.log.debug({ peer: node.name, err: err.message }, 'listeners report not delivered'),
      );
    }
  }

  /** The distributor's question to node: which of flows does its kernel hold? Bounded by one step timeout. */
  private async probe(node: string, flows: FlowKey[]): Promise<string[]> {
    const link = await this.peers.get(node);
    const connId = `probe-${randomBytes(6).toString('hex')}`;
    const answer = link.replies.wait(connId, ['probed'], this.config.handoffStepTimeoutMs, 'probe');
    link.channel.send('probe', { connId, flows });
    const { msg } = await answer;
    const states = (msg as Message<'probed'>).states;
    if (states.length !== flows.length) throw new BatonError('E_PROTOCOL', `${node} answered ${states.length} states for ${flows.length} flows`, { node, step: 'probe' });
    return states;
  }

}

function listen(server: net.Server, opts: net.ListenOptions): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    server.once('error', (err) => reject(new BatonError('E_CONFIG', `cannot listen on ${opts.path ?? `${opts.host}:${opts.port}`}: ${err.message}`, { step: 'listen' })));
    server.listen(opts, () => resolve(server));
  });
}

function closeServer(server?: net.Server): Promise<void> {
  return new Promise((resolve) => (server ? server.close(() => resolve()) : resolve()));
}
