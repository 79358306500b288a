// What an operator can see and change on a node, for the REST API: read views of the node, the
// cluster, its targets, connections and recent transfers, and the changes (weight/drain a target,
// move a connection, drain a node). Requests about another node's state are forwarded to that
// node's API (forward.ts); this class only ever acts on its own node's state.
import { BatonError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ClusterConfig, NodeConfig } from '../config/cluster.js';
import type { TargetInfo } from '../control/messages.js';
import type { TargetDirectory } from '../control/directory.js';
import type { ControlServer } from '../control/server.js';
import type { AgentMetrics } from '../metrics/metrics.js';
import type { TargetRelay } from '../transfer/target-relay.js';
import { canonicalIp, connectionId, type FlowKey, parseConnectionId } from '../flow.js';
import type { Counter, RouteState, StatName } from './table-layout.js';
import type { Steering } from './xdp.js';
import type { DvipaSet, DvipaSpec, DvipaView } from './dvipa-set.js';
import type { ActiveDistributor } from '../ha/active.js';
import type { DistributorRole, HandOver } from './distributor-role.js';
import type { RouteService } from './route-service.js';
import { type IndexedRoute, parseCursor } from './table-index.js';
import { MAX_PAGE } from './paged-map.js';
import type { TransferLog, TransferRecord } from './transfer-log.js';
import { apiBase } from '../api/forward.js';

export interface ConnectionView {
  id: string;
  client: { address: string; port: number };
  vip: { address: string; port: number };
  /** Distributor: the routing-table state. Other nodes: served (a target application here holds it). */
  state: RouteState | 'served';
  /** The node serving it (frozen: the node that froze it is still serving). */
  node: string;
  packets?: number;
  bytes?: number;
  /** Seconds since it was handed off here (distributor: since its entry was installed); absent when unknown. */
  ageSeconds?: number;
  connId?: string;
  app?: string;
  instance?: string;
}

export interface ConnectionQuery {
  state?: ConnectionView['state'];
  node?: string;
  client?: string;
  limit: number;
  /** Where the page starts: the `next` of the page before (table-index.ts); absent for the first. */
  cursor?: string;
}

export interface ConnectionPage {
  /** How many match, when a count is kept for this filter (no filter, or one of state, node, client). */
  total?: number;
  connections: ConnectionView[];
  /** The cursor of the next page; absent on the last. */
  next?: string;
}


export interface AdminParts {
  config: ClusterConfig;
  self: NodeConfig;
  startedAt: number;
  steering?: Steering;
  relay: TargetRelay;
  directory: TargetDirectory;
  control: ControlServer;
  transfers: TransferLog;
  metrics: AgentMetrics;
  log: Logger;
  dvipas: DvipaSet;
  /** The routing table as its RouteService keeps it (index, quotas), while this node is the active distributor. */
  table(): Pick<RouteService, 'index' | 'quotas' | 'tableSize'> | undefined;
  /** Which distributor is active, as this node knows it. */
  active: ActiveDistributor;
  /** This node's part as a distributor (distributor-role.ts); absent on other nodes. */
  role?: Pick<DistributorRole, 'phase' | 'replication' | 'takeovers' | 'handOver'>;
}

/**
 * How long the API waits for an application to move a connection: the SDK gives the application
 * 30 s (sdk/target.ts MOVE_TIMEOUT_MS) and answers itself when that runs out; 5 s more for the answer.
 */
export const API_MOVE_TIMEOUT_MS = 35_000;

export class AgentAdmin {
  /** Node names by the ids routing-table entries carry. */
  private readonly nodeNames: Map<number, string>;

  constructor(private readonly p: AdminParts) {
    this.nodeNames = new Map(p.config.nodes.map((n) => [n.id, n.name]));
  }

  get self(): NodeConfig {
    return this.p.self;
  }

  /** This node is the active distributor (the routing table is here). */
  get isDistributor(): boolean {
    return this.p.table() !== undefined;
  }

  /** GET /v1/status: who distributes, and how the backups keep up. */
  distribution() {
    const { active, config, role } = this.p;
    const { streams, replica } = role?.replication() ?? { streams: [], replica: undefined };
    return {
      active: active.name(),
      activeSince: active.since() || null,
      backups: config.distributors.filter((d) => d !== active.name()),
      dvipas: this.p.dvipas.all().map((d) => d.address),
      self: role ? (role.phase() === 'active' ? ('active' as const) : ('standby' as const)) : ('node' as const),
      takeovers: role?.takeovers ?? 0,
      streams: streams.map(({ backup, session, sentSeq, ackedSeq, lagEntries, snapshotting }) => ({ backup, session, sentSeq, ackedSeq, lagEntries, snapshotting })),
      replica: replica ? { from: replica.from, session: replica.session, seq: replica.seq, synced: replica.synced, lastAppliedAt: replica.lastAppliedAt ?? null } : null,
    };
  }

  /** The active distributor, as this node knows it: where requests for the routing table go. */
  get distributor(): string {
    return this.p.active.name();
  }

  /** What a node is now: the active distributor, a backup one (standing by), or a node. */
  private roleOf(name: string): 'distributor' | 'backup' | 'node' {
    if (name === this.p.active.name()) return 'distributor';
    return this.p.config.distributors.includes(name) ? 'backup' : 'node';
  }

  node() {
    const { self, config, steering, startedAt } = this.p;
    return {
      name: self.name,
      id: self.id,
      address: self.address,
      role: this.roleOf(self.name),
      instance: config.instance,
      uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
      xdp: steering ? { mode: steering.mode, programId: steering.programId, interface: steering.ifname, pinDir: steering.pinDir } : null,
    };
  }

  nodes() {
    const targets = this.p.directory.all();
    return this.p.config.nodes.map((n) => {
      const isSelf = n.name === this.p.self.name;
      const age = isSelf ? 0 : this.p.directory.reportAge(n.name);
      return {
        name: n.name,
        id: n.id,
        address: n.address,
        role: this.roleOf(n.name),
        self: isSelf,
        // A node's batond reports its listeners every second; silence past the expiry means unreachable.
        reachable: age !== undefined,
        lastReportMs: age ?? null,
        targets: targets.filter((t) => t.node === n.name).length,
        api: apiBase(this.p.config, n),
      };
    });
  }

  dvipas(): Array<DvipaView & { distributor: string }> {
    return this.p.dvipas.all().map((d) => ({ ...d, distributor: this.p.active.name() }));
  }

  /** Holds a new DVIPA on this node (the API fans the request out to every node). */
  async addDvipa(spec: DvipaSpec): Promise<DvipaView> {
    const view = await this.p.dvipas.add(spec);
    this.p.log.info({ dvipa: view }, 'DVIPA added by the operator');
    return view;
  }

  /**
   * Lets a DVIPA go on this node. The distributor refuses while its table still steers flows to
   * the address, unless forced: those connections would lose their address on the targets.
   */
  async removeDvipa(given: string, force: boolean): Promise<void> {
    const address = canonicalIp(given);
    if (this.isDistributor && !force) {
      const live = this.p.table()?.index.count({ vip: address }) ?? 0;
      if (live > 0) throw new BatonError('E_HANDOFF_STATE', `${live} transferred connections still use DVIPA ${address}: drain them first, or force`, { step: 'dvipa', address });
    }
    await this.p.dvipas.remove(address);
    this.p.log.info({ address, force }, 'DVIPA removed by the operator');
  }

  /**
   * Gives the DVIPA to another distributor with no connection lost (distributor-role.ts
   * handOver): the active distributor only. keepalived holds every DVIPA on the active
   * distributor's interface, those added through the API too (ha/keepalived-start.ts): they move
   * together, named by the cluster file's.
   */
  async moveDvipa(given: string, to: string): Promise<HandOver & { address: string }> {
    const address = canonicalIp(given);
    const step = { step: 'dvipa-move', address };
    if (!this.p.dvipas.has(address)) throw new BatonError('E_NOT_FOUND', `no DVIPA ${address}`, step);
    // keepalived holds every DVIPA together: moving one moves them all, the cluster file's names them.
    if (!this.p.config.dvipa.addresses.includes(address)) throw new BatonError('E_HANDOFF_STATE', `move the cluster file's DVIPA (${this.p.config.dvipa.addresses.join(', ')}): keepalived moves the ones added through the API with it`, step);
    if (!this.p.role) throw new BatonError('E_HANDOFF_STATE', `${this.p.self.name} is not a distributor`, step);
    const moved = await this.p.role.handOver(to);
    this.p.log.warn({ ...moved, address }, 'DVIPA moved by the operator');
    return { address, ...moved };
  }

  targets(): TargetInfo[] {
    return this.p.directory.all();
  }

  setTarget(instance: string, change: { weight?: number; draining?: boolean }): TargetInfo[] {
    return this.p.control.setOperatorState(instance, change);
  }

  /**
   * One page of connections: the routing table's (distributor) or those served here. Each page
   * costs O(page) whatever the table's size (table-index.ts), so listings never hold up a handoff.
   */
  connections(q: ConnectionQuery): ConnectionPage {
    const limit = Math.min(q.limit, MAX_PAGE);
    let after: number | undefined;
    if (q.cursor !== undefined) {
      after = parseCursor(q.cursor);
      if (after === undefined) throw new BatonError('E_CONFIG', 'cursor is not one this API gave (use the next of the page before)', { step: 'connections' });
    }
    if (!this.isDistributor) return this.servedConnections(q, limit, after);
    const index = this.p.table()!.index;
    const byName = new Map(this.p.config.nodes.map((n) => [n.name, n.id]));
    const node = q.node === undefined ? undefined : byName.get(q.node);
    if (q.node !== undefined && node === undefined) return { total: 0, connections: [] };
    if (q.state === 'served') return { total: 0, connections: [] };
    const filter = { state: q.state, node, client: q.client };
    const page = index.page({ after, limit, filter });
    const total = index.count(filter);
    return { ...(total !== undefined ? { total } : {}), connections: page.values.map((e) => this.tableView(e)), ...(page.next ? { next: page.next } : {}) };
  }

  transfers(limit: number): TransferRecord[] {
    return this.p.transfers.recent(limit);
  }

  stats() {
    const table = this.routingTable();
    const xdp = this.xdp();
    const recent = this.p.transfers.recent();
    return {
      xdp: xdp ? Object.fromEntries(Object.entries(xdp).map(([k, c]) => [k, { packets: Number(c.packets), bytes: Number(c.bytes) }])) : null,
      routingTable: table ?? null,
      transfers: { recent: recent.length, done: recent.filter((r) => r.outcome === 'done').length, failed: recent.filter((r) => r.outcome === 'failed').length },
      control: this.p.control.counts(),
      targets: this.p.directory.all().length,
    };
  }

  xdp(): Record<StatName, Counter> | undefined {
    return this.p.steering?.routes.stats();
  }

  /** The routing table's size (kept as it changes: no walk), capacity, quotas and how often they refused. */
  routingTable(): { entries: number; capacity: number; quota: { handedOffEntries: number; entriesPerSource: number }; quotaRefused: { total: number; perSource: number } } | undefined {
    const table = this.p.table();
    if (!table) return undefined;
    return {
      ...table.tableSize(),
      quota: { ...table.quotas.limits },
      quotaRefused: { total: table.quotas.refused.get('total') ?? 0, perSource: table.quotas.refused.get('per-source') ?? 0 },
    };
  }

  /**
   * Where the connection named by id is served, as this node knows it: 'here' (a target
   * application on this node), the serving node's name (distributor: from the table), or undefined.
   */
  locate(id: string): { flow: FlowKey; servedBy: string | undefined; connId?: string } {
    const flow = parseConnectionId(id);
    const local = this.p.relay.served(flow);
    if (local) return { flow, servedBy: this.p.self.name, connId: local.connId };
    if (!this.isDistributor) return { flow, servedBy: undefined };
    const entry = this.p.steering!.routes.get(flow);
    if (!entry) return { flow, servedBy: undefined };
    if (entry.state !== 'forward') throw new BatonError('E_HANDOFF_STATE', `connection ${id} is ${entry.state}, not movable now`, { step: 'move' });
    const node = this.p.config.nodes.find((n) => n.id === entry.targetNode);
    return { flow, servedBy: node?.name };
  }

  /** Moves a connection served on this node to another node, through the application serving it. */
  async moveHere(id: string, toNode: string): Promise<{ id: string; from: string; to: string; connId: string }> {
    const { connId } = this.locate(id);
    if (!connId) throw new BatonError('E_NOT_FOUND', `connection ${id} is not served on ${this.p.self.name}`, { node: this.p.self.name, step: 'move' });
    this.checkDestination(toNode);
    if (toNode === this.p.self.name) throw new BatonError('E_HANDOFF_STATE', `connection ${id} is already served on ${toNode}`, { connId, step: 'move' });
    try {
      await this.p.relay.requestMove(connId, toNode, API_MOVE_TIMEOUT_MS);
      this.p.metrics.operatorMove('done');
      this.p.log.info({ connId, id, to: toNode }, 'connection moved by the operator');
      return { id, from: this.p.self.name, to: toNode, connId };
    } catch (err) {
      this.p.metrics.operatorMove('failed');
      throw err;
    }
  }

  checkDestination(node: string): void {
    if (!this.p.config.nodes.some((n) => n.name === node)) throw new BatonError('E_NOT_FOUND', `node ${node} is not in the cluster`, { step: 'move' });
    if (node === this.p.active.name()) {
      throw new BatonError('E_HANDOFF_STATE', `the distributor ${node} takes connections back only from its own routing applications`, { step: 'move' });
    }
  }

  /** Where a drained node's connections go: the least loaded other node with a usable target on the port. */
  destinationFor(port: number, avoid: string): string | undefined {
    const usable = this.p.directory
      .all()
      .filter((t) => t.port === port && t.node !== avoid && t.node !== this.p.active.name() && !t.draining && t.weight > 0);
    const loadOf = (node: string) => usable.filter((t) => t.node === node).reduce((sum, t) => sum + t.load, 0);
    const nodes = [...new Set(usable.map((t) => t.node))].sort((a, b) => loadOf(a) - loadOf(b) || a.localeCompare(b));
    return nodes[0];
  }

  /** An entry of the index as the API shows it; its counters read from the map (one lookup). */
  private tableView(e: IndexedRoute): ConnectionView {
    const name = this.nodeNames.get(e.node);
    const counters = this.p.steering!.routes.get(e.flow);
    return {
      id: e.id,
      client: { address: e.flow.clientAddress, port: e.flow.clientPort },
      vip: { address: e.flow.vipAddress, port: e.flow.vipPort },
      state: e.state,
      // Frozen: the node serving it until the handoff completes (the distributor itself when none is named).
      node: e.state === 'frozen' ? `(frozen) ${name ?? this.p.active.name()}` : (name ?? `#${e.node}`),
      ...(counters ? { packets: Number(counters.packets), bytes: Number(counters.bytes) } : {}),
      ...(e.since !== undefined ? { ageSeconds: Math.round((Date.now() - e.since) / 1000) } : {}),
    };
  }

  private servedConnections(q: ConnectionQuery, limit: number, after: number | undefined): ConnectionPage {
    if (q.state !== undefined && q.state !== 'served') return { total: 0, connections: [] };
    if (q.node !== undefined && q.node !== this.p.self.name) return { total: 0, connections: [] };
    const page = this.p.relay.page({ after, limit, client: q.client });
    const now = Date.now();
    return {
      ...(page.total !== undefined ? { total: page.total } : {}),
      connections: page.entries.map((c) => ({
        id: connectionId(c.flow),
        client: { address: c.flow.clientAddress, port: c.flow.clientPort },
        vip: { address: c.flow.vipAddress, port: c.flow.vipPort },
        state: 'served' as const,
        node: this.p.self.name,
        ageSeconds: Math.round((now - c.since) / 1000),
        connId: c.connId,
        app: c.app,
        ...(c.instance ? { instance: c.instance } : {}),
      })),
      ...(page.next ? { next: page.next } : {}),
    };
  }
}
