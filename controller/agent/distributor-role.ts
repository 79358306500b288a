// A distributor node's role: active (the DVIPA's frames arrive here and it owns the routing table)
// or standby (a backup: its pinned table is a replica the active one keeps current). keepalived
// says which (ha/vrrp-state.ts); this file only carries the decision out, with one phase type and
// transitions that check the phase they leave.
//
// The data path needs no switch: a backup's steering program is attached and configured like the
// active one's, and steers nothing while no client frame comes its way; the frames the active
// distributor sends it for connections it serves itself carry entries naming it, which the
// program passes to its kernel (bpf/steer.c). So the first frame that follows the gratuitous ARP
// of a takeover is steered by the replica, whatever batond is doing at that moment.
//
// Activating is then a distributor restart over the replica: RouteService adopts the pinned table
// as it does after a batond restart (entries for flows this node serves itself are removed,
// entries left frozen by a handoff the old distributor never finished are given back to the node
// serving the flow or removed, asked with a probe) and answers the nodes' requests.
import type { Logger } from '../log.js';
import type { ClusterConfig, NodeConfig } from '../config/cluster.js';
import { BatonError } from '../errors.js';
import { errorText } from '../input.js';
import type { ActiveDistributor } from '../ha/active.js';
import { ReplicaSink, type SinkStatus } from '../ha/replica-sink.js';
import { replicaLinkOf, replicating } from '../ha/replication.js';
import { ReplicationSource, type StreamStatus } from '../ha/replication-source.js';
import type { Channel } from '../transfer/channel.js';
import type { Message, MessageType } from '../transfer/messages.js';
import type { PeerLinks } from '../transfer/peers.js';
import { logSparsely } from '../input.js';
import { abandonAfterMs } from './bounds.js';
import { type Prober, RouteService } from './route-service.js';
import { ROUTES_MAX_ENTRIES_DEFAULT } from './table-layout.js';
import type { Steering } from './xdp.js';
import { type KeepalivedPaths, vrrpInstanceName, writeTrackFile } from '../ha/keepalived.js';
import { reconcileServed, type Served, type ServedTable } from '../ha/served.js';
import { holdsAddress, VrrpState } from '../ha/vrrp-state.js';
import type { DistributionView } from '../metrics/metrics.js';

export type RolePhase = 'standby' | 'active';

/** How long a distributor restarted with the DVIPA on its interface listens to the others' announcements first: a heartbeat and a half. */
const ANNOUNCEMENT_WAIT_MS = 1500;

const TRANSITIONS: Record<RolePhase, readonly RolePhase[]> = {
  standby: ['active'],
  active: ['standby'],
};

export interface RoleParts {
  config: ClusterConfig;
  self: NodeConfig;
  log: Logger;
  steering: Steering;
  active: ActiveDistributor;
  /** Asks a node which flows its kernel holds (recovery of entries left frozen). */
  probe: Prober;
  /** Links to the other distributors, which the active one streams its table to. */
  peers: PeerLinks;
  /** Which connections to the DVIPAs a node's kernel serves (this node's own included): ha/served.ts. */
  served: (node: string) => Promise<Served[]>;
}

/** What a move of the DVIPA did (POST /v1/dvipas/:address/move). */
export interface HandOver {
  from: string;
  to: string;
  /** Connections this node serves itself that got an entry naming it, for the next distributor to steer here. */
  ownEntries: number;
  /** From the request until the other distributor said it is active. */
  ms: number;
}

/** How long a move waits for the other distributor's replica to acknowledge the whole table. */
const HANDOVER_SYNC_MS = 2000;
/** How long a move waits for the other distributor to say it is active (keepalived there: a fraction of an advert; batond: a takeover). */
const HANDOVER_TAKEN_MS = 3000;

/** Whether cond holds within ms (checked every 5 ms: a move's steps take milliseconds). */
async function holdsWithin(cond: () => boolean, ms: number): Promise<boolean> {
  for (const deadline = Date.now() + ms; !cond(); await new Promise((r) => setTimeout(r, 5))) if (Date.now() > deadline) return false;
  return true;
}

export class DistributorRole {
  private current: RolePhase = 'standby';
  private service?: RouteService;
  private activeSince = 0;
  /** While active: the stream of every table change to each backup. */
  private source?: ReplicationSource;
  /** While standby: the active one's stream, applied to the pinned table. */
  private readonly sink: ReplicaSink;
  /** Backups a link is being opened to (one attempt at a time each). */
  private readonly attaching = new Set<string>();
  /** The last replication session each inbound link carried: its close ends only that one. */
  private readonly sessions = new WeakMap<object, string>();
  private refusedStreams = 0;
  /** The link the stream being applied arrives on (standby). */
  private replicaLink?: Channel<MessageType>;
  /** Removes the close listeners this node's streams put on its links to the backups. */
  private readonly unlisten = new Map<string, () => void>();
  /** keepalived's word on this distributor's role, when there are backups. */
  private vrrp?: VrrpState;
  /** A start that found the DVIPA on the interface, waiting to hear the other distributors. */
  private settling?: NodeJS.Timeout;
  /** keepalived's track file (keepalived.ts trackFile), when keepalived runs. */
  private trackFile?: string;
  private handingOver = false;
  /** Times this batond became active while another distributor had been (a takeover, not a start). */
  takeovers = 0;
  /** The last activation: the entries its table kept, and how many it removed as this node's own connections. */
  lastTakeover?: { at: number; entries: number; ownRemoved: number; reconciled?: number };

  constructor(private readonly p: RoleParts) {
    this.sink = new ReplicaSink(p.steering.routes, p.log.child({ svc: 'replica' }));
  }

  phase(): RolePhase {
    return this.current;
  }

  /** The routing table service, while this node is the active distributor. */
  routeService(): RouteService | undefined {
    return this.current === 'active' ? this.service : undefined;
  }

  since(): number {
    return this.activeSince;
  }

  private enter(next: RolePhase): void {
    if (!TRANSITIONS[this.current].includes(next)) {
      throw new BatonError('E_HANDOFF_STATE', `distributor role: no transition from ${this.current} to ${next}`, { node: this.p.self.name, step: 'role' });
    }
    this.current = next;
    // Standing by, frames another distributor steered here are this node's kernel's; active, its own table decides.
    this.p.steering.deferToPeers(next === 'standby');
  }

  /** keepalived made this node MASTER (or it is the only distributor): take the table over. */
  activate(reason: string): void {
    if (this.current === 'active') return;
    const t0 = performance.now();
    const { config, steering, log } = this.p;
    const wasActive = this.p.active.lastKnown();
    // Built before the phase changes: a table that cannot be read (E_BPF) leaves this node standing by.
    const source = new ReplicationSource(steering.routes, log.child({ svc: 'replication' }));
    let service: RouteService;
    try {
      const table = replicating(steering.routes, (flow, entry) => source.change(flow, entry), (flow, err) => source.lost(flow, err), () => source.streaming);
      service = new RouteService(table, config, log, abandonAfterMs(config), steering.routes.capacity() ?? ROUTES_MAX_ENTRIES_DEFAULT, this.p.self.name);
    } catch (err) {
      source.close();
      log.error({ reason, err: errorText(err) }, 'cannot take the routing table over: standing by');
      return;
    }
    this.enter('active');
    // What the active one was streaming here is the table now: nothing more is applied from it. Its
    // link is closed too, so that it drops the stream: otherwise, with no change to send (a quiet
    // table), it would never learn the session ended, and after this node stands down again its
    // replica would stay what this node made of it, until the next change (seen: split brain).
    this.sink.close();
    this.replicaLink?.close();
    this.replicaLink = undefined;
    this.source = source;
    this.service = service;
    if (wasActive !== this.p.self.name && config.distributors.length > 1) this.takeovers++;
    // Later than any claim heard, whatever the clocks: another node's clock ahead of ours must not
    // keep its lapsing claim above this activation (ha/active.ts).
    this.activeSince = Math.max(Date.now(), this.p.active.since() + 1);
    this.p.active.heard({ node: this.p.self.name, since: this.activeSince, active: true });
    const entries = service.tableSize().entries;
    this.lastTakeover = { at: this.activeSince, entries, ownRemoved: service.ownAdopted };
    // The announcement first: on each backup's link it then precedes the stream, which a backup
    // takes only from a distributor that claims to be active.
    this.announce();
    this.attachBackups();
    log.info({ reason, entries, ownRemoved: service.ownAdopted, previous: wasActive, us: Math.round((performance.now() - t0) * 1000) }, "active distributor: the routing table is this node's");
    // Entries left frozen: the nodes serving those flows say whether they still hold them.
    service.recover(this.p.probe).catch((err: unknown) => {
      log.error({ err: errorText(err) }, 'recovering entries left frozen failed; the sweep will restore them');
    });
    if (wasActive !== this.p.self.name && config.distributors.length > 1) void this.reconcileWithNodes(service, wasActive);
  }

  /**
   * After a takeover: the replica brought in line with what every node's kernel serves
   * (ha/served.ts), while the table already steers. Stops changing the table if this node stands
   * down meanwhile (the table is a replica again).
   */
  private async reconcileWithNodes(service: RouteService, previous: string | undefined): Promise<void> {
    const t0 = performance.now();
    const current = () => this.service === service;
    const table: ServedTable = {
      records: () => service.index.ids().flatMap((id) => service.index.getById(id) ?? []),
      nodeName: (id) => this.p.config.nodes.find((n) => n.id === id)?.name,
      pointAt: (flow, node) => current() && service.pointAt(flow, node),
      dropIf: (record) => current() && service.dropIf(record),
    };
    const nodes = this.p.config.nodes.map((n) => n.name);
    const result = await reconcileServed(table, nodes, previous, this.p.served, this.p.probe, this.p.log);
    if (!current()) return;
    if (this.lastTakeover) this.lastTakeover.reconciled = result.pointed + result.dropped;
    this.p.log.info({ ...result, previous, ms: Math.round(performance.now() - t0) }, 'routing table reconciled with the connections the nodes serve');
  }

  /**
   * `batonctl dvipa move`: gives the DVIPA to another distributor without losing a connection.
   * Entries naming this node first, for the connections its own kernel serves (they had none:
   * the frames arrived here); then, once the other's replica has acknowledged the whole table,
   * keepalived is told (track file) to give the DVIPA up, which it does at once with a
   * priority-0 advert: the other is MASTER within a fraction of an advert interval, its table
   * already current. When it says it is active, this node's keepalived rejoins as BACKUP.
   */
  async handOver(to: string): Promise<HandOver> {
    const t0 = performance.now();
    const { self, log } = this.p;
    const refuse = (why: string) => new BatonError('E_HANDOFF_STATE', `cannot move the DVIPA to ${to}: ${why}`, { node: self.name, step: 'dvipa-move' });
    if (!this.p.config.distributors.includes(to) || to === self.name) throw refuse('it is not another of the distributors');
    if (this.current !== 'active' || !this.service || !this.source) throw refuse('this node is not the active distributor');
    if (!this.trackFile || !this.vrrp) throw refuse('keepalived does not run here (one distributor)');
    if (this.handingOver) throw refuse('a move is already under way');
    const stream = this.source.status().find((s) => s.backup === to);
    if (!stream || stream.snapshotting) throw refuse('it has no replica of the table yet (batonctl status shows the streams)');
    this.handingOver = true;
    const service = this.service;
    try {
      let ownEntries = 0;
      for (const { flow, state } of await this.p.served(self.name)) {
        if (state !== 'TIME_WAIT' && state !== 'CLOSE' && service.pointAt(flow, self.name, true)) ownEntries++;
      }
      const synced = () => this.source?.status().find((s) => s.backup === to)?.lagEntries === 0;
      if (!(await holdsWithin(synced, HANDOVER_SYNC_MS))) throw new BatonError('E_TIMEOUT', `${to} did not acknowledge the table within ${HANDOVER_SYNC_MS} ms: the DVIPA stays here`, { node: to, step: 'dvipa-move' });
      log.warn({ to, ownEntries }, 'moving the DVIPA: keepalived gives it up');
      writeTrackFile(this.trackFile, true);
      try {
        const taken = await holdsWithin(() => this.p.active.name() === to && this.p.active.claimsActive(to), HANDOVER_TAKEN_MS);
        if (!taken) throw new BatonError('E_TIMEOUT', `${to} did not become active within ${HANDOVER_TAKEN_MS} ms: keepalived's election decides`, { node: to, step: 'dvipa-move' });
      } finally {
        writeTrackFile(this.trackFile, false);
      }
      return { from: self.name, to, ownEntries, ms: Math.round(performance.now() - t0) };
    } finally {
      this.handingOver = false;
    }
  }

  /** keepalived made this node BACKUP or FAULT (another distributor has the DVIPA): a replica from now on. */
  standDown(reason: string): void {
    if (this.current === 'standby') return;
    this.enter('standby');
    this.service?.close();
    this.service = undefined;
    this.closeSource();
    this.activeSince = 0;
    this.p.active.heard({ node: this.p.self.name, since: 0, active: false });
    this.announce();
    this.p.log.warn({ reason }, 'standby distributor: the table is a replica from now on');
  }

  /**
   * Every heartbeat: a distributor says again what it is (to a node that restarted since, or
   * missed it: an active one's claim lapses when it goes quiet, ha/active.ts), and an active one
   * (re)attaches each backup without a stream.
   */
  tick(): void {
    // A takeover that failed (the table could not be read) is tried again while keepalived says MASTER.
    if (this.current === 'standby' && this.vrrp?.state() === 'MASTER') this.activate('keepalived: still MASTER (trying again)');
    this.announce();
    if (this.current === 'active') this.attachBackups();
  }

  /** Tells every other node whether this one is the active distributor. */
  private announce(): void {
    const body = { node: this.p.self.name, active: this.current === 'active', since: this.activeSince };
    for (const node of this.p.config.nodes) {
      if (node.name === this.p.self.name) continue;
      this.p.peers.get(node.name).then(
        (link) => link.channel.send('distributor', body),
        (err: unknown) => this.p.log.debug({ peer: node.name, err: errorText(err) }, 'distributor announcement not delivered'),
      );
    }
  }

  /**
   * Opens (or reuses) the peer link to each other distributor without a stream and starts one: a
   * snapshot, then every change. A link that breaks ends its stream; the next tick starts another.
   */
  private attachBackups(): void {
    const source = this.source;
    if (!source) return;
    const streaming = new Set(source.status().map((s) => s.backup));
    for (const backup of this.p.config.distributors) {
      if (backup === this.p.self.name || streaming.has(backup) || this.attaching.has(backup)) continue;
      this.attaching.add(backup);
      this.p.peers
        .get(backup)
        .then((link) => {
          if (this.source !== source) return;
          const replicaLink = replicaLinkOf(link.channel);
          // Listening before the first page goes: a link that closes at once still ends its stream.
          // One listener per backup: replaced at a new attach, removed when the source goes (a node
          // that flaps between roles would otherwise pile them up on a link that stays open).
          const onClose = () => source.detach(backup, replicaLink);
          this.unlisten.get(backup)?.();
          link.channel.once('close', onClose);
          this.unlisten.set(backup, () => link.channel.off('close', onClose));
          source.attach(backup, replicaLink);
        })
        .catch((err: unknown) => this.p.log.debug({ backup, err: errorText(err) }, 'backup distributor not reachable: no replication stream yet'))
        .finally(() => this.attaching.delete(backup));
    }
  }

  /**
   * With backups, keepalived decides: MASTER in its notify FIFO activates, anything else stands
   * down. keepalived says nothing until its state changes, so a batond restarted on the active
   * distributor finds the DVIPA on its interface, which keepalived puts there while MASTER. A
   * keepalived that was killed leaves it there too: the node takes the table only if, after a
   * heartbeat's worth of announcements, keepalived has not spoken and no other distributor says it
   * is active.
   */
  async followKeepalived(files: Pick<KeepalivedPaths, 'notifyFifo' | 'trackFile'>): Promise<void> {
    const { config, self, log } = this.p;
    // A batond restarted in the middle of a move ends it: keepalived may rejoin.
    writeTrackFile(files.trackFile, false);
    this.trackFile = files.trackFile;
    const fifo = files.notifyFifo;
    this.vrrp = await VrrpState.open({ fifo, instance: vrrpInstanceName(config.instance), log: log.child({ svc: 'vrrp' }) });
    this.vrrp.on('state', (t) => {
      if (t.state === 'MASTER') this.activate(`keepalived: MASTER (${t.source})`);
      else this.standDown(`keepalived: ${t.state}`);
    });
    this.vrrp.on('closed', (why) => log.error({ fifo, why }, 'keepalived notify FIFO lost: this distributor no longer learns its role'));
    // keepalived puts the config's addresses on the interface together: the first tells.
    if (!(await holdsAddress(self.interface, config.dvipa.addresses[0]!))) return;
    this.settling = setTimeout(() => {
      if (this.vrrp?.state() !== undefined) return;
      if (this.p.active.othersActive()) log.warn('the DVIPA is on the interface but another distributor is active: standing by (a stale address keepalived will remove)');
      else this.activate('the DVIPA is on the interface and no other distributor is active: keepalived is MASTER');
    }, ANNOUNCEMENT_WAIT_MS);
  }

  /** A backup's acknowledgement of the stream this node sends it. */
  acked(backup: string, msg: Message<'replica-ack'>): void {
    this.source?.onAck(backup, msg.session, msg.seq);
  }

  /**
   * The active distributor's stream, on a standby one. Refused (and the link closed, so the sender
   * starts again with a snapshot) from a node that is not another distributor, while this node is
   * active itself (both believe they are: split brain, docs/operations.md), or when the sink finds
   * it out of order.
   */
  replica(from: string, msg: Message<'replica'>, channel: Channel<MessageType>): void {
    const refuse = (why: string) => {
      const n = ++this.refusedStreams;
      if (logSparsely(n)) this.p.log.warn({ from, session: msg.session, seq: msg.seq, phase: this.current, refused: n }, `replication stream refused: ${why}`);
      channel.close();
    };
    if (from === this.p.self.name || !this.p.config.distributors.includes(from)) return refuse('not from another distributor');
    if (this.current === 'active') return refuse('this node is the active distributor');
    // Only from a distributor that says it is active (its announcement precedes its stream on the
    // link): with three distributors in split brain, two would otherwise replace each other's stream.
    if (!this.p.active.claimsActive(from) || this.p.active.name() !== from) return refuse('its sender is not the distributor this node believes active');
    if (!this.sessions.has(channel)) channel.once('close', () => this.sink.detach(from, this.sessions.get(channel)));
    this.sessions.set(channel, msg.session);
    this.replicaLink = channel;
    const verdict = this.sink.receive(from, msg, (seq) => channel.send('replica-ack', { session: msg.session, seq }));
    if (!verdict.ok) channel.close();
  }

  /** What the metrics show (metrics.ts). */
  distribution(): DistributionView {
    return {
      takeovers: this.takeovers,
      ...(this.lastTakeover?.reconciled !== undefined ? { lastTakeoverReconciled: this.lastTakeover.reconciled } : {}),
      lag: (this.source?.status() ?? []).map((s) => ({ backup: s.backup, lagEntries: s.lagEntries })),
    };
  }

  /** What /v1/status and the metrics show of replication. */
  replication(): { streams: StreamStatus[]; replica: SinkStatus | undefined } {
    return { streams: this.source?.status() ?? [], replica: this.current === 'standby' ? this.sink.status() : undefined };
  }

  private closeSource(): void {
    this.source?.close();
    this.source = undefined;
    for (const off of this.unlisten.values()) off();
    this.unlisten.clear();
  }

  close(): void {
    clearTimeout(this.settling);
    this.vrrp?.close();
    this.service?.close();
    this.service = undefined;
    this.closeSource();
    this.sink.close();
  }
}
