// batond's Prometheus metrics (prom-client), one registry per agent, served at /metrics by the
// REST API. Event counts are incremented where they happen; the XDP verdict counters are read
// from the pinned maps at scrape time, so a restarted batond reports the same monotonic counters
// the kernel kept while it was down. The routing table's size and capacity come from its index
// (route-service.ts): a scrape never walks the map.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Counter as KernelCounter, StatName } from '../agent/table-layout.js';
import { channelRejections } from '../transfer/channel.js';
import { offerRefusals } from '../transfer/target/admission.js';
import { inputErrors } from '../input.js';
import type { HandoffStep } from '../transfer/handoff-phases.js';

/**
 * What the per-step histogram labels: the handoff's timed steps (handoff-phases.ts; check and
 * admit are not timed), the import at the target, and the whole handoff.
 */
type TimedStep = Exclude<HandoffStep, 'check' | 'admit'> | 'import' | 'total';

export interface KernelView {
  /** XDP verdicts by reason, summed over CPUs; undefined on a node that does not steer. */
  xdp(): Record<StatName, KernelCounter> | undefined;
  routingTable(): { entries: number; capacity: number } | undefined;
  /** New handed-off connections a routing-table quota refused, by quota (total, per-source); distributor only. */
  quotaRefused(): Record<string, number>;
  targets(): number;
  /** Connections served here that their application closed and TCP has not finished yet. */
  closing(): number;
  /** A distributor's part in replication and takeovers (distributor-role.ts); undefined on other nodes. */
  distribution(): DistributionView | undefined;
}

export interface DistributionView {
  /** Times this batond took over from another distributor. */
  takeovers: number;
  /** Entries the last takeover's reconciliation with the nodes changed (ha/served.ts), once it finished. */
  lastTakeoverReconciled?: number;
  /** While active: per backup, entries sent and not yet acknowledged. */
  lag: Array<{ backup: string; lagEntries: number }>;
}

const MICRO = 1e-6;

export class AgentMetrics {
  readonly registry = new Registry();
  private readonly handoffs: Counter<'outcome' | 'step'>;
  private readonly stepSeconds: Histogram<'step'>;
  private readonly control: Counter<'type'>;
  private readonly controlDropped: Counter<'reason'>;
  private readonly moves: Counter<'outcome'>;
  private readonly peersRefused: Counter<'reason'>;
  private readonly apiRefusals: Counter<'reason'>;
  private readonly refusedCount = new Map<string, number>();

  constructor(node: string, kernel: KernelView) {
    this.registry.setDefaultLabels({ node });
    collectDefaultMetrics({ register: this.registry, prefix: 'baton_' });
    const registers = [this.registry];
    this.handoffs = new Counter({
      name: 'baton_handoffs_total',
      help: 'Handoffs this node coordinated, by outcome; failed ones by the step that failed',
      labelNames: ['outcome', 'step'],
      registers,
    });
    this.stepSeconds = new Histogram({
      name: 'baton_handoff_step_seconds',
      help: 'Duration of each handoff step: export (snapshot), offer (round trip to the target), import (at the target), freeze, delta (read after the freeze), commit (round trip), route install, close (route switched until live sent: the router app reporting its clock at the close, or nothing when the old socket was quiet), total',
      labelNames: ['step'],
      buckets: [25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1],
      registers,
    });
    this.control = new Counter({ name: 'baton_control_datagrams_total', help: 'Control-socket datagrams accepted, by type', labelNames: ['type'], registers });
    this.controlDropped = new Counter({ name: 'baton_control_dropped_total', help: 'Control-socket datagrams dropped, by reason', labelNames: ['reason'], registers });
    this.peersRefused = new Counter({ name: 'baton_peer_refused_total', help: 'Peer connections refused: TLS handshake failures, certificates of no node or from the wrong address', labelNames: ['reason'], registers });
    this.moves = new Counter({ name: 'baton_operator_moves_total', help: 'Connection moves an operator asked for (REST API), by outcome', labelNames: ['outcome'], registers });
    this.apiRefusals = new Counter({
      name: 'baton_api_refused_total',
      help: 'REST API requests refused, by reason: unauthenticated (no or unknown token), forbidden (scope), body (not UTF-8 JSON, too deep, prototype key), validation (schema), too-large, media-type, url, tls-handshake',
      labelNames: ['reason'],
      registers,
    });

    // Kernel counters are already monotonic: mirror them at scrape time.
    const xdpCounter = (name: string, help: string, field: 'packets' | 'bytes') =>
      new Counter({
        name,
        help,
        labelNames: ['reason'],
        registers,
        collect() {
          const stats = kernel.xdp();
          this.reset();
          if (stats) for (const [reason, c] of Object.entries(stats)) this.inc({ reason }, Number(c[field]));
        },
      });
    xdpCounter('baton_xdp_packets_total', 'Packets seen by the XDP steering program, by verdict reason', 'packets');
    xdpCounter('baton_xdp_bytes_total', 'Bytes seen by the XDP steering program, by verdict reason', 'bytes');
    new Counter({
      name: 'baton_transfer_rejected_total',
      help: 'Frames refused on transfer channels (peers and applications), by reason: framing and too-large close the link; schema, unexpected-type and blob-count drop the message; out-of-phase: a well-formed message the handoff it names does not take in its phase, dropped with nothing changed; unsolicited: a reply nobody waits for (late, after its handoff ended) or a message for a transfer the target does not hold, dropped',
      labelNames: ['reason'],
      registers,
      collect() {
        this.reset();
        for (const [reason, n] of Object.entries(channelRejections())) this.inc({ reason }, n);
      },
    });
    new Counter({
      name: 'baton_offers_refused_total',
      help: 'Connections offered to this node and refused before anything served them, by reason: wrong-sender, not-dvipa, wrong-port, not-owner (the distributor does not say the sender serves the flow), peer-offers and peer-bytes (the sender\'s share), no-application, duplicate, capacity, invalid-state, no-kernel-tls (a TLS connection offered to a node without kernel TLS)',
      labelNames: ['reason'],
      registers,
      collect() {
        this.reset();
        for (const [reason, n] of Object.entries(offerRefusals())) this.inc({ reason }, n);
      },
    });
    new Counter({
      name: 'baton_input_errors_total',
      help: 'Inputs that made a handler throw (a bug the input found), by source: the link it came on was closed, the process went on',
      labelNames: ['source'],
      registers,
      collect() {
        this.reset();
        for (const [source, n] of Object.entries(inputErrors())) this.inc({ source }, n);
      },
    });
    new Gauge({
      name: 'baton_routing_table_entries',
      help: 'Flows in the connection routing table',
      registers,
      collect() {
        const t = kernel.routingTable();
        if (t) this.set(t.entries);
      },
    });
    new Counter({
      name: 'baton_routing_quota_refused_total',
      help: 'Handoffs of new connections refused by a routing-table quota (limits.handedOffEntries: total; limits.entriesPerSource: per-source)',
      labelNames: ['quota'],
      registers,
      collect() {
        this.reset();
        for (const [quota, n] of Object.entries(kernel.quotaRefused())) this.inc({ quota }, n);
      },
    });
    new Gauge({
      name: 'baton_routing_table_capacity',
      help: 'Flows the connection routing table can hold (map max_entries)',
      registers,
      collect() {
        const t = kernel.routingTable();
        if (t) this.set(t.capacity);
      },
    });
    new Gauge({
      name: 'baton_target_instances',
      help: 'Target application instances known cluster-wide (per port)',
      registers,
      collect() {
        this.set(kernel.targets());
      },
    });
    new Counter({
      name: 'baton_takeovers_total',
      help: 'Times this distributor became the active one while another had been (keepalived made it MASTER)',
      registers,
      collect() {
        this.reset();
        this.inc(kernel.distribution()?.takeovers ?? 0);
      },
    });
    new Gauge({
      name: 'baton_takeover_reconciled_entries',
      help: 'Routing-table entries the last takeover\'s reconciliation with the nodes changed: added or pointed at the node whose kernel serves the flow, or removed because none does',
      registers,
      collect() {
        const d = kernel.distribution();
        if (d?.lastTakeoverReconciled !== undefined) this.set(d.lastTakeoverReconciled);
      },
    });
    new Gauge({
      name: 'baton_replication_lag_entries',
      help: 'Active distributor: routing-table entries streamed to a backup and not yet acknowledged by it, by backup',
      labelNames: ['backup'],
      registers,
      collect() {
        this.reset();
        for (const s of kernel.distribution()?.lag ?? []) this.set({ backup: s.backup }, s.lagEntries);
      },
    });
    new Gauge({
      name: 'baton_connections_closing',
      help: 'Connections served here whose application has closed them while TCP has not finished (their entries still forward)',
      registers,
      collect() {
        this.set(kernel.closing());
      },
    });
  }

  handoff(outcome: 'done' | 'failed', step: HandoffStep | undefined, timings?: { exportUs: number; offerRttUs: number; importUs: number; freezeUs: number; deltaUs: number; commitRttUs: number; routeUs: number; closeUs?: number; totalUs?: number }): void {
    this.handoffs.inc({ outcome, step: outcome === 'done' ? 'none' : (step ?? 'unknown') });
    if (!timings) return;
    const observe = (s: TimedStep, us: number | undefined) => {
      if (us !== undefined) this.stepSeconds.observe({ step: s }, us * MICRO);
    };
    observe('export', timings.exportUs);
    observe('offer', timings.offerRttUs);
    observe('import', timings.importUs);
    observe('freeze', timings.freezeUs);
    observe('delta', timings.deltaUs);
    observe('commit', timings.commitRttUs);
    observe('route', timings.routeUs);
    observe('close', timings.closeUs);
    observe('total', timings.totalUs);
  }

  controlDatagram(type: string): void {
    this.control.inc({ type });
  }

  controlDrop(reason: string): void {
    this.controlDropped.inc({ reason });
  }

  /** Counts a refused peer connection; returns how many were refused so far (for sparse logs). */
  peerRefused(detail: string): number {
    // A bounded label set: the kind of refusal, not the free text.
    const reason = /certificate names .* but the connection comes from/.test(detail)
      ? 'wrong-address'
      : /not a node of the cluster/.test(detail)
        ? 'unknown-node'
        : /certificate|unknown ca|self.signed|verify/i.test(detail)
          ? 'untrusted-certificate'
          : 'handshake';
    this.peersRefused.inc({ reason });
    const n = (this.refusedCount.get(reason) ?? 0) + 1;
    this.refusedCount.set(reason, n);
    return n;
  }

  /** Counts a request the REST API refused (controller/api/problem.ts names the reasons). */
  apiRefused(reason: string): void {
    this.apiRefusals.inc({ reason });
  }

  operatorMove(outcome: 'done' | 'failed'): void {
    this.moves.inc({ outcome });
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}
