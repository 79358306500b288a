// Every check an offer must pass before any socket is touched and before anyone else is asked
// (docs/protocol.md, "What a target checks before it accepts"): it names as its sender the node
// whose certificate the link proved; that node has no more than its share of offers and bytes in
// flight here; the connection is to a DVIPA of the cluster, on the port the offer names and the
// chosen application registered; no transfer of it is here already; the application has room;
// its state is consistent. Each refusal has a kind, counted (baton_offers_refused_total) and
// logged sparsely by OfferRefusals. Whether the sender serves the flow is the distributor's to
// say, asked afterwards (handoffs.ts, OfferPolicy.confirmOwner).
import { errorText, logSparsely } from '../../input.js';
import type { Logger } from '../../log.js';
import type { TcpConnectionState } from '../../../native/repair.js';
import type { FlowKey } from '../../flow.js';
import { connFromWire, type Message } from '../messages.js';
import { type KernelTls, kernelTls } from '../../../native/kernel-tls.js';
import type { TargetApp, TargetApplications } from './applications.js';
import type { Holdings } from './capacity.js';

/** Offers one peer may have in flight here unless configured (limits.offersPerPeer): what a routing node runs at once by default. */
export const DEFAULT_OFFERS_PER_PEER = 4096;
/** Bytes of queues and peeked bytes those offers may hold here unless configured (limits.offerBytesPerPeer). */
export const DEFAULT_OFFER_BYTES_PER_PEER = 256 * 1024 * 1024;

/** Why an offer was refused, as baton_offers_refused_total labels it. */
export const OFFER_REFUSALS = ['wrong-sender', 'not-dvipa', 'wrong-port', 'not-owner', 'peer-offers', 'peer-bytes', 'no-application', 'duplicate', 'capacity', 'invalid-state', 'no-kernel-tls'] as const;
export type OfferRefusal = (typeof OFFER_REFUSALS)[number];

/** What a target trusts an offer with: the cluster's DVIPAs, its distributor's word, its bounds per peer. */
export interface OfferPolicy {
  /** Is this one of the cluster's virtual IPs (the config's, or one an operator added)? */
  isDvipa(address: string): boolean;
  /** The active distributor (ha/active.ts): it owns the routing table, so an offer it sends needs no confirmation. */
  distributor: () => string;
  /**
   * Resolves once the distributor confirms that node serves flow (its routing table forwards the
   * flow there); rejects, saying why, when it does not or cannot say within the step timeout.
   */
  confirmOwner(node: string, flow: FlowKey, connId: string): Promise<void>;
  /** Offers one peer may have in flight here (offer until live, abort or reject). */
  offersPerPeer: number;
  /** Bytes (send queue, receive queue, peeked) those offers may hold here. */
  offerBytesPerPeer: number;
  /** Connections an application that declared no capacity serves at once (limits.targetCapacity). */
  targetCapacity: number;
  /** Whether this node's kernel has kernel TLS (native/kernel-tls.ts, the default; a test's world says). */
  kernelTls?: () => KernelTls;
}

/** The connections app may serve at once: what its instance declared, else the cluster's default; 0 is no limit. */
export function capacityOf(applications: TargetApplications, policy: Pick<OfferPolicy, 'targetCapacity'>, app: TargetApp): number {
  return applications.capacity(app) ?? policy.targetCapacity;
}

export type Refused = { kind: OfferRefusal; reason: string };
export type Admitted = { app: TargetApp; state: TcpConnectionState; bytes: number };

/** What the checks read: the node's applications, what is held here, whether a transfer of the id is here. */
export interface AdmissionView {
  policy: OfferPolicy;
  applications: TargetApplications;
  holdings: Holdings;
  isHere(connId: string): boolean;
}

/** The offer's application, state and size, or the first check it fails (in the order of docs/protocol.md). */
export function admit(view: AdmissionView, peerName: string, msg: Message<'offer'>, blobs: Buffer[]): Admitted | Refused {
  const { policy, applications, holdings } = view;
  const { conn, target, connId } = msg;
  const [sendQueue, recvQueue, peeked] = blobs as [Buffer, Buffer, Buffer];
  const bytes = sendQueue.length + recvQueue.length + peeked.length;
  if (msg.from !== peerName) return { kind: 'wrong-sender', reason: `offer says it comes from ${msg.from} but arrived on ${peerName}'s link` };
  const share = holdings.share(peerName);
  if (share.offers >= policy.offersPerPeer) return { kind: 'peer-offers', reason: `${peerName} has ${share.offers} offers in flight here, the most it may` };
  if (share.bytes + bytes > policy.offerBytesPerPeer) {
    return { kind: 'peer-bytes', reason: `${peerName}'s offers would hold ${share.bytes + bytes} bytes here (this one ${bytes} bytes), more than ${policy.offerBytesPerPeer}` };
  }
  if (!policy.isDvipa(conn.local.address)) return { kind: 'not-dvipa', reason: `the connection is to ${conn.local.address}, which is not a DVIPA of this cluster` };
  const app = applications.pick(target.port, target.instance);
  if (!app) {
    const what = target.instance ? `instance ${target.instance} on port ${target.port}` : `port ${target.port}`;
    return { kind: 'no-application', reason: `no target application serves ${what} on this node` };
  }
  // The application registered target.port (pick found it there): the connection must be to it.
  if (conn.local.port !== target.port) return { kind: 'wrong-port', reason: `the connection is to port ${conn.local.port}, the offer is for port ${target.port}` };
  if (view.isHere(connId)) return { kind: 'duplicate', reason: 'a transfer of this connection is already pending here' };
  const capacity = capacityOf(applications, policy, app);
  if (capacity > 0 && holdings.held(app) >= capacity) {
    return { kind: 'capacity', reason: `target application ${app.instance ?? app.name} is at capacity (${capacity} connections)` };
  }
  // A TLS connection's session is installed in this kernel at live, past the point where the
  // routing node could take the connection back: a node that cannot refuses now.
  if (msg.tls) {
    const ktls = (policy.kernelTls ?? kernelTls)();
    if (!ktls.available) return { kind: 'no-kernel-tls', reason: `a TLS connection needs kernel TLS here: ${ktls.how}` };
  }
  try {
    return { app, state: connFromWire(conn, sendQueue, recvQueue, connId), bytes };
  } catch (err) {
    return { kind: 'invalid-state', reason: errorText(err) };
  }
}

// Every relay of the process adds here too, for the node's counter (one relay per batond).
const refusedTotals = new Map<OfferRefusal, number>();

/** Offers refused since the process started, by kind, every kind present: for a Prometheus counter. */
export function offerRefusals(): Record<OfferRefusal, number> {
  return Object.fromEntries(OFFER_REFUSALS.map((r) => [r, refusedTotals.get(r) ?? 0])) as Record<OfferRefusal, number>;
}

/** Counts and logs refusals: one relay's by kind, and the process's (offerRefusals). */
export class OfferRefusals {
  private readonly refused = new Map<OfferRefusal, number>();

  constructor(private readonly log: Logger) {}

  count(connId: string, { kind, reason }: Refused): void {
    this.refused.set(kind, (this.refused.get(kind) ?? 0) + 1);
    const n = (refusedTotals.get(kind) ?? 0) + 1;
    refusedTotals.set(kind, n);
    // A peer that floods refusals must not flood the log: the first ten of a kind, then every 1000th.
    if (logSparsely(n)) this.log.warn({ connId, refusal: kind, reason, refused: n }, 'offer refused');
  }

  /** This relay's refusals by kind, every kind present. */
  view(): Record<OfferRefusal, number> {
    return Object.fromEntries(OFFER_REFUSALS.map((r) => [r, this.refused.get(r) ?? 0])) as Record<OfferRefusal, number>;
  }
}
