// batond: one per node. Puts the DVIPA on the node; on the distributor runs the XDP steering
// program and owns the connection routing table (RouteService); listens for peer nodes (transfer
// messages over TCP), for local applications' transfers (a Unix socket) and registrations (the UDP
// control socket), and wires them to the handoff machinery, which runs on every node so a
// connection can move on from wherever it is served.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import path from 'node:path';
import { BatonError } from '../errors.js';
import { errorText } from '../input.js';
import type { Logger } from '../log.js';
import { type ClusterConfig, type NodeConfig, nodeByName } from '../config/cluster.js';
import { Channel, PendingReplies } from '../transfer/channel.js';
import { HandoffCoordinator, type RouterConnection } from '../transfer/handoff.js';
import { Accepts, type Message, type MessageType } from '../transfer/messages.js';
import { LocalRoutes, RemoteRoutes, type RouteWriter } from '../transfer/routes.js';
import { PeerLinks } from '../transfer/peers.js';
import { authenticatePeer, loadPeerTls, PEER_TLS_OPTIONS, type PeerTlsMaterial } from '../transfer/peer-tls.js';
import { DEFAULT_OFFER_BYTES_PER_PEER, DEFAULT_OFFERS_PER_PEER, type TargetApp, TargetRelay } from '../transfer/target-relay.js';
import { FlowOwnership } from '../transfer/flow-owner.js';
import { type DescriptorLink, LinkMaker } from '../transfer/fd-exchange.js';
import { type HandoffSockets, handoffSockets, idleBounds } from '../transfer/sockets.js';
import { defaultGateways, ensureDvipa, releaseDvipa } from './dvipa.js';
import { DvipaPolicy } from '../config/dvipa-policy.js';
import { DvipaSet } from './dvipa-set.js';
import { agentEndpoints, ensureFree, explainListenFailure } from './ports.js';
import { RouteService } from './route-service.js';
import { ROUTES_MAX_ENTRIES_DEFAULT } from './routing-table.js';
import type { FlowKey } from '../flow.js';
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
import { tcpState } from '../../native/diag.js';

const LOCAL_APP_MESSAGES = [...new Set([...Accepts.agentFromRouter, ...Accepts.agentFromTarget])] as MessageType[];
type LocalAppMessage = (typeof Accepts.agentFromRouter)[number] | (typeof Accepts.agentFromTarget)[number];
type FromPeer = (typeof Accepts.agentFromPeer)[number];

/** Connections a target application serves at once when neither it nor the cluster file says (limits.targetCapacity). */
const DEFAULT_TARGET_CAPACITY = 10_000;

/** How long a connecting application or peer may take to say who it is. */
const HELLO_TIMEOUT_MS = 5000;

export class NodeAgent {
  readonly self: NodeConfig;
  readonly isDistributor: boolean;
  private steering?: Steering;
  private routeService?: RouteService;
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
    this.isDistributor = config.distributor === self.name;
    this.peerTls = loadPeerTls(config, self);
    this.peers = new PeerLinks(config, self, log, config.handoffStepTimeoutMs, this.peerTls);
    // Every connection reinstated here is bounded in idleness (limits.idle): a vanished client cannot hold it for ever.
    this.sockets = handoffSockets(idleBounds(config.limits?.idle));
    // Who serves a flow is the distributor's routing table's to say (asked over the peer link, or here).
    const owners = new FlowOwnership(this.peers, config.distributor, config.handoffStepTimeoutMs, this.isDistributor ? { serves: (node, flow) => this.routeService?.serves(node, flow) ?? false } : undefined);
    this.relay = new TargetRelay(
      log,
      config.handoffStepTimeoutMs * 8,
      this.sockets,
      {
        isDvipa: (address) => this.dvipas.has(address),
        distributor: config.distributor,
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
    );
    this.dvipas = new DvipaSet(
      config.dvipa,
      path.join(config.stateDir ?? '/var/lib/baton', `${config.instance}-${self.name}.dvipas.json`),
      {
        hold: (address) => ensureDvipa({ address, distributor: this.isDistributor, interface: self.interface }),
        release: (address) => releaseDvipa(address),
      },
      new DvipaPolicy(config.dvipaCidrs, config.dvipa.address, config.nodes.map((n) => n.address), defaultGateways),
    );
    this.metrics = new AgentMetrics(self.name, {
      xdp: () => this.steering?.routes.stats(),
      // Kept as the table changes (route-service.ts): a scrape never walks the map.
      routingTable: () => (this.steering && this.routeService ? { entries: this.routeService.index.size, capacity: this.steering.routes.capacity() ?? 0 } : undefined),
      quotaRefused: () => Object.fromEntries(this.routeService?.quotaRefused ?? []),
      targets: () => this.directory.all().length,
      closing: () => this.closing.size(),
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
    if (this.isDistributor) {
      // libbpf's own warnings (verifier, pinning) into our structured log rather than lost.
      setLibbpfLogger((level, message) => this.log[level]({ svc: 'libbpf' }, message.trimEnd()));
      this.steering = loadSteering({
        instance: `${this.config.instance}-${this.self.name}`,
        ifname: this.self.interface,
        mode: this.config.xdpMode,
        maxEntries: this.config.limits?.routingTableEntries,
        log: this.log,
      });
      this.routeService = new RouteService(this.steering.routes, this.config, this.log, this.config.handoffStepTimeoutMs * 8, this.steering.routes.capacity() ?? ROUTES_MAX_ENTRIES_DEFAULT);
      this.routes = new LocalRoutes(this.routeService, this.self.name);
      // Entries a previous batond left frozen for another node: that node says whether it still serves them.
      this.routeService.recover((node, flows) => this.probe(node, flows)).catch((err: unknown) => {
        // An entry that could not be rewritten stays frozen until the sweep restores it (8 step timeouts).
        this.log.error({ err: errorText(err) }, 'recovering entries left frozen failed; the sweep will restore them');
      });
    } else {
      // Connections this node serves can move on (claim 10); the distributor changes the table.
      this.routes = new RemoteRoutes(this.peers, this.config.distributor, this.config.handoffStepTimeoutMs);
    }
    this.links = new LinkMaker(this.log.child({ svc: 'descriptors' }), this.self.agentSocket);
    this.coordinator = new HandoffCoordinator(this.config, this.self, this.routes, this.peers, this.sockets, this.log, (r) => {
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
    this.listenerBeat = setInterval(() => this.reportListeners(), HEARTBEAT_MS);
    this.listenerBeat.unref();
    // The chain is checked in onPeer (authenticatePeer) rather than by rejectUnauthorized: with
    // TLS 1.3 Node reports a rejected client certificate only as "socket hang up", and the log
    // should say why. Until that check passes nothing is read from the socket.
    const peerServer = tls.createServer({ ...this.peerTls, ...PEER_TLS_OPTIONS, requestCert: true, rejectUnauthorized: false, handshakeTimeout: HELLO_TIMEOUT_MS }, (s) => this.onPeer(s));
    // A handshake that fails (not TLS, a replayed session) never reaches onPeer. Counted and logged sparsely.
    peerServer.on('tlsClientError', (err, socket) => this.refusePeer(err.message, socket.remoteAddress));
    this.peerServer = await listen(peerServer, { host: this.self.address, port: this.self.peerPort }).catch(async (err: unknown) => {
      throw await explainListenFailure(err, at.peer);
    });
    fs.mkdirSync(path.dirname(this.self.agentSocket), { recursive: true });
    // Owner-only from the moment it exists: whoever connects hands batond live connections and
    // receives others', and a chmod after listen() would leave a window open.
    const umask = process.umask(0o177);
    try {
      this.appServer = await listen(net.createServer((s) => this.onApp(s)), { path: this.self.agentSocket }).catch(async (err: unknown) => {
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
      table: this.routeService,
      dvipas: this.dvipas,
    });
    // HTTPS with the certificate the peer links use (unless api.insecurePlaintext).
    this.api = await createApiServer({ admin, metrics: this.metrics, config: this.config, operators, tls: this.peerTls, log: this.log.child({ svc: 'api' }) });
    try {
      await this.api.listen({ host: this.self.address, port: this.config.api.port });
    } catch (err) {
      throw await explainListenFailure(new BatonError('E_CONFIG', `cannot listen on ${this.self.address}:${this.config.api.port} (REST API): ${(err as Error).message}`, { step: 'listen' }), at.api);
    }
    this.log.info(
      { dvipa: this.config.dvipa, distributor: this.isDistributor, peer: `${this.self.address}:${this.self.peerPort}`, api: apiBase(this.config, this.self), agentSocket: this.self.agentSocket },
      'batond ready',
    );
  }

  async stop(): Promise<void> {
    for (const ch of this.channels) ch.close();
    this.peers.close();
    this.relay.close();
    this.links?.close();
    this.closing.close();
    this.routeService?.close();
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

  private track<In extends MessageType>(ch: Channel<In>): Channel<In> {
    this.channels.add(ch as unknown as Channel<MessageType>);
    ch.on('close', () => this.channels.delete(ch as unknown as Channel<MessageType>));
    return ch;
  }

  private refusePeer(reason: string, from: string | undefined): void {
    const n = this.metrics.peerRefused(reason);
    if (n <= 10 || n % 1000 === 0) this.log.warn({ from, reason, refused: n }, 'peer connection refused');
  }

  private onPeer(socket: tls.TLSSocket): void {
    const auth = authenticatePeer(this.config, socket);
    if ('refused' in auth) {
      this.refusePeer(auth.refused, socket.remoteAddress);
      socket.destroy();
      return;
    }
    const log = this.log.child({ remote: socket.remoteAddress, peer: auth.node.name });
    const channel = this.track(new Channel<FromPeer>(socket, Accepts.agentFromPeer, log));
    let peerName: string | undefined;
    const helloTimer = setTimeout(() => channel.close(new BatonError('E_PROTOCOL', 'peer sent no hello', { step: 'hello' })), HELLO_TIMEOUT_MS);
    channel.on('close', () => {
      clearTimeout(helloTimer);
      this.relay.peerClosed(channel);
    });
    channel.on('message', (d) => {
      if (d.msg.type === 'hello') {
        const claimed = d.msg.role === 'peer' ? nodeByName(this.config, d.msg.name) : undefined;
        // The hello must name the node the certificate proved.
        if (peerName || !claimed || claimed.name !== auth.node.name) {
          log.error({ claimed: d.msg.name, role: d.msg.role }, 'peer hello refused');
          channel.close();
          return;
        }
        peerName = claimed.name;
        clearTimeout(helloTimer);
        channel.send('welcome', { node: this.self.name, handoffStepTimeoutMs: this.config.handoffStepTimeoutMs });
        return;
      }
      if (!peerName) {
        log.error({ type: d.msg.type }, 'message before hello: closing');
        channel.close();
        return;
      }
      if (d.msg.type === 'route') {
        this.onRouteRequest(channel, peerName, d.msg);
        return;
      }
      if (d.msg.type === 'listeners') {
        if (d.msg.node !== peerName) log.error({ claimed: d.msg.node, peer: peerName }, 'listeners report for another node: ignored');
        else this.directory.setRemote(peerName, d.msg.targets);
        return;
      }
      if (d.msg.type === 'probe') {
        this.onProbe(channel, peerName, d.msg);
        return;
      }
      this.relay.fromPeer(channel, d, peerName);
    });
  }

  /**
   * A connection served here was closed by its application (or the application is gone): the
   * distributor marks its entry released now, and removes it once this node's kernel is done with
   * the connection too (close-watcher.ts).
   */
  private release(flow: FlowKey, connId: string): void {
    this.routes?.release(flow, connId).catch((err: Error) => this.log.warn({ connId, err: err.message }, 'entry not released'));
    // Watched even if that failed: finished also releases an entry still forwarding.
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

  /**
   * Which of the flows a restarted distributor asks about this node's kernel holds: what lets it
   * give an entry its previous life left frozen back to this node, or remove it. Only the
   * distributor may ask (the answer tells which clients are connected here).
   */
  private onProbe(channel: Channel<FromPeer>, requester: string, msg: Message<'probe'>): void {
    if (requester !== this.config.distributor) {
      this.log.warn({ requester, connId: msg.connId }, 'probe from a node that is not the distributor: refused');
      channel.close();
      return;
    }
    const states = msg.flows.map((f) => {
      try {
        return tcpState(f);
      } catch (err) {
        this.log.warn({ connId: msg.connId, err: (err as Error).message }, 'cannot read a flow\'s TCP state for a probe');
        return 'UNKNOWN';
      }
    });
    channel.send('probed', { connId: msg.connId, states });
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

  /** A node that serves a connection asks the distributor to freeze, repoint or restore its entry. */
  private onRouteRequest(channel: Channel<FromPeer>, requester: string, msg: Message<'route'>): void {
    const { connId, op, flow } = msg;
    try {
      if (!this.routeService) throw new BatonError('E_HANDOFF_STATE', `${this.self.name} is not the distributor`, { connId, step: op });
      if (op === 'freeze') this.routeService.freeze(requester, flow);
      else if (op === 'unfreeze') this.routeService.unfreeze(requester, flow);
      else if (op === 'release') this.routeService.release(requester, flow);
      else if (op === 'finished') this.routeService.finished(requester, flow);
      // A target checking an offer from a node other than us: does that node serve the flow?
      else if (op === 'owner') {
        if (!msg.target || !this.routeService.serves(msg.target, flow)) throw new BatonError('E_HANDOFF_STATE', `${msg.target ?? 'no node named'} does not serve this flow`, { connId, step: op });
      }
      else if (msg.target) this.routeService.forward(requester, flow, msg.target);
      else throw new BatonError('E_PROTOCOL', 'forward without a target', { connId, step: op });
      channel.send('routed', { connId, ok: true });
    } catch (err) {
      this.log.warn({ connId, op, requester, err: (err as Error).message }, 'route request refused');
      channel.send('routed', { connId, ok: false, reason: (err as Error).message });
    }
  }

  private onApp(socket: net.Socket): void {
    const log = this.log.child({ app: 'unregistered' });
    const channel = this.track(new Channel<LocalAppMessage>(socket, LOCAL_APP_MESSAGES as LocalAppMessage[], log, 'app'));
    let role: 'router' | 'target' | undefined;
    let router: RouterConnection | undefined;
    let target: TargetApp | undefined;
    let descriptors: DescriptorLink | undefined;
    const helloTimer = setTimeout(() => channel.close(new BatonError('E_PROTOCOL', 'application sent no hello', { step: 'hello' })), HELLO_TIMEOUT_MS);
    channel.on('close', () => {
      clearTimeout(helloTimer);
      descriptors?.close();
      router?.replies.failAll(new BatonError('E_PEER', 'routing application disconnected'));
      if (target) {
        for (const { connId, flow } of this.relay.releasedAll(target)) this.release(flow, connId);
        this.relay.unregister(target);
      }
    });
    channel.on('message', (d) => {
      const { msg } = d;
      if (msg.type === 'hello') {
        const why = role
          ? 'a second hello'
          : msg.role === 'peer'
            ? 'a peer on the application socket'
            : msg.role === 'target' && !msg.ports
              ? 'a target without ports'
              : !msg.fdAddress
                ? 'no descriptor inbox (fdAddress): an SDK older than the descriptor link'
                : !this.links
                  ? 'batond is still starting'
                  : undefined;
        if (why || !this.links || !msg.fdAddress || msg.role === 'peer') {
          log.error({ role: msg.role, name: msg.name, why }, 'application hello refused');
          channel.close();
          return;
        }
        try {
          descriptors = this.links.make(msg.fdAddress);
        } catch (err) {
          log.error({ name: msg.name, inbox: msg.fdAddress, err: (err as Error).message }, 'application hello refused: cannot send it the descriptor link');
          channel.close();
          return;
        }
        clearTimeout(helloTimer);
        role = msg.role;
        if (role === 'router') {
          router = { channel: channel as unknown as RouterConnection['channel'], replies: new PendingReplies(), name: msg.name };
        } else {
          const served = this.dvipas.ports();
          const ports = msg.ports!.filter((p) => served.includes(p));
          if (ports.length !== msg.ports!.length) {
            log.error({ ports: msg.ports, dvipaPorts: served }, 'target registered for a port no DVIPA serves');
            channel.close();
            return;
          }
          target = {
            name: msg.name,
            instance: msg.instance,
            ports,
            channel: channel as unknown as TargetApp['channel'],
            descriptors,
            decides: msg.decides ?? false,
            // Absent: the cluster's default (the relay's policy): no target takes connections without bound unless it says 0.
            capacity: msg.capacity,
          };
          this.relay.register(target);
        }
        channel.send('welcome', { node: this.self.name, handoffStepTimeoutMs: this.config.handoffStepTimeoutMs });
        return;
      }
      if (msg.type === 'handoff' && router && descriptors && this.coordinator) {
        const fd = descriptors.take(msg.connId);
        if (fd === undefined) {
          log.warn({ connId: msg.connId }, 'handoff without the socket descriptor');
          router.channel.send('failed', { connId: msg.connId, step: 'export', code: 'E_HANDOFF_STATE', reason: 'the socket descriptor did not arrive with the handoff request' });
          return;
        }
        void this.coordinator.run(router, d as never, fd);
        return;
      }
      if (msg.type === 'closed' && router) {
        if (!router.replies.deliver(d as never)) log.warn({ connId: msg.connId, type: msg.type }, 'message for no handoff in progress');
        return;
      }
      if (msg.type === 'release' && target) {
        const flow = this.relay.released(target, msg.connId);
        if (flow) this.release(flow, msg.connId);
        else log.warn({ connId: msg.connId }, 'release of a connection this application does not serve');
        return;
      }
      if ((msg.type === 'decided' || msg.type === 'moved') && target) {
        this.relay.fromApp(target, d as never);
        return;
      }
      log.error({ type: msg.type, role }, 'message not allowed for this application role');
    });
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
