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
import { connectionId, parseConnectionId } from './connection-id.js';
import type { Counter, FlowKey, RouteState, StatName } from './routing-table.js';
import type { Steering } from './xdp.js';
import type { DvipaSet, DvipaSpec, DvipaView } from './dvipa-set.js';
import type { TransferLog, TransferRecord } from './transfer-log.js';
import { describeFlow } from './routing-table.js';

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
  offset: number;
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
  /** When each flow's entry was installed by this distributor (absent: installed before a restart). */
  installedAt(flow: FlowKey): number | undefined;
}

/**
 * How long the API waits for an application to move a connection: the SDK gives the application
 * 30 s (sdk/target.ts MOVE_TIMEOUT_MS) and answers itself when that runs out; 5 s more for the answer.
 */
export const API_MOVE_TIMEOUT_MS = 35_000;

export class AgentAdmin {
  constructor(private readonly p: AdminParts) {}

  get self(): NodeConfig {
    return this.p.self;
  }

  get isDistributor(): boolean {
    return this.p.config.distributor === this.p.self.name;
  }

  node() {
    const { self, config, steering, startedAt } = this.p;
    return {
      name: self.name,
      id: self.id,
      address: self.address,
      role: this.isDistributor ? ('distributor' as const) : ('node' as const),
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
        role: n.name === this.p.config.distributor ? ('distributor' as const) : ('node' as const),
        self: isSelf,
        // A node's batond reports its listeners every second; silence past the expiry means unreachable.
        reachable: age !== undefined,
        lastReportMs: age ?? null,
        targets: targets.filter((t) => t.node === n.name).length,
        api: `http://${n.address}:${this.p.config.api.port}`,
      };
    });
  }

  dvipas(): Array<DvipaView & { distributor: string }> {
    return this.p.dvipas.all().map((d) => ({ ...d, distributor: this.p.config.distributor }));
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
  async removeDvipa(address: string, force: boolean): Promise<void> {
    if (this.isDistributor && !force) {
      const live = [...this.p.steering!.routes.entries()].filter(([flow]) => flow.vipAddress === address).length;
      if (live > 0) throw new BatonError('E_HANDOFF_STATE', `${live} transferred connections still use DVIPA ${address}: drain them first, or force`, { step: 'dvipa', address });
    }
    await this.p.dvipas.remove(address);
    this.p.log.info({ address, force }, 'DVIPA removed by the operator');
  }

  targets(): TargetInfo[] {
    return this.p.directory.all();
  }

  setTarget(instance: string, change: { weight?: number; draining?: boolean }): TargetInfo[] {
    return this.p.control.setOperatorState(instance, change);
  }

  connections(q: ConnectionQuery): { total: number; connections: ConnectionView[] } {
    let all = this.isDistributor ? this.tableConnections() : this.servedConnections();
    if (q.state) all = all.filter((c) => c.state === q.state);
    if (q.node) all = all.filter((c) => c.node === q.node);
    if (q.client) all = all.filter((c) => c.client.address === q.client);
    all.sort((a, b) => a.id.localeCompare(b.id));
    return { total: all.length, connections: all.slice(q.offset, q.offset + q.limit) };
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

  routingTable(): { entries: number; capacity: number } | undefined {
    const routes = this.p.steering?.routes;
    if (!routes) return undefined;
    return { entries: routes.size(), capacity: routes.capacity() ?? 0 };
  }

  /**
   * Where the connection named by id is served, as this node knows it: 'here' (a target
   * application on this node), the serving node's name (distributor: from the table), or undefined.
   */
  locate(id: string): { flow: FlowKey; servedBy: string | undefined; connId?: string } {
    const flow = parseConnectionId(id);
    const key = describeFlow(flow);
    const local = this.p.relay.connections().find((c) => describeFlow(c.flow) === key);
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
    if (node === this.p.config.distributor) {
      throw new BatonError('E_HANDOFF_STATE', `the distributor ${node} takes connections back only from its own routing applications`, { step: 'move' });
    }
  }

  /** Where a drained node's connections go: the least loaded other node with a usable target on the port. */
  destinationFor(port: number, avoid: string): string | undefined {
    const usable = this.p.directory
      .all()
      .filter((t) => t.port === port && t.node !== avoid && t.node !== this.p.config.distributor && !t.draining && t.weight > 0);
    const loadOf = (node: string) => usable.filter((t) => t.node === node).reduce((sum, t) => sum + t.load, 0);
    const nodes = [...new Set(usable.map((t) => t.node))].sort((a, b) => loadOf(a) - loadOf(b) || a.localeCompare(b));
    return nodes[0];
  }

  private tableConnections(): ConnectionView[] {
    const byId = new Map(this.p.config.nodes.map((n) => [n.id, n.name]));
    const now = Date.now();
    return [...this.p.steering!.routes.entries()].map(([flow, e]) => {
      const installed = this.p.installedAt(flow);
      return {
        id: connectionId(flow),
        client: { address: flow.clientAddress, port: flow.clientPort },
        vip: { address: flow.vipAddress, port: flow.vipPort },
        state: e.state,
        node: e.state === 'frozen' ? '(frozen)' : (byId.get(e.targetNode) ?? `#${e.targetNode}`),
        packets: Number(e.packets),
        bytes: Number(e.bytes),
        ...(installed !== undefined ? { ageSeconds: Math.round((now - installed) / 1000) } : {}),
      };
    });
  }

  private servedConnections(): ConnectionView[] {
    const now = Date.now();
    return this.p.relay.connections().map((c) => ({
      id: connectionId(c.flow),
      client: { address: c.flow.clientAddress, port: c.flow.clientPort },
      vip: { address: c.flow.vipAddress, port: c.flow.vipPort },
      state: 'served' as const,
      node: this.p.self.name,
      ageSeconds: Math.round((now - c.since) / 1000),
      connId: c.connId,
      app: c.app,
      ...(c.instance ? { instance: c.instance } : {}),
    }));
  }
}
