// What the routing-phase limits are (routing-guard.ts enforces them): their names and production
// defaults. How a connection's source is counted for the per-source limit: flow.ts, sourceOf.
import { BatonError } from '../errors.js';
import { IPV6_SOURCE_PREFIX } from '../flow.js';

export type LimitReason = 'idle' | 'deadline' | 'too-many-bytes' | 'per-source' | 'total';
export const LIMIT_REASONS: readonly LimitReason[] = ['idle', 'deadline', 'too-many-bytes', 'per-source', 'total'];

export interface RoutingLimits {
  /** Close a connection that has sent no byte for this long. */
  idleMs: number;
  /** Close a connection still undecided this long after accept, however it trickles bytes in (slowloris). */
  deadlineMs: number;
  /** Close a connection that sent more than this before the decision. */
  maxBytes: number;
  /** Connections in the routing phase at once from one source (an IPv4 address, an IPv6 prefix); more are refused at accept. */
  maxPerSource: number;
  /** The IPv6 prefix length that makes one source: every address of a /64 (the default) counts as one client. 1–128. */
  ipv6SourcePrefix: number;
  /** Connections in the routing phase at once in total; more are refused at accept. */
  maxTotal: number;
}

/**
 * Production defaults. A routing phase is a machine exchange of a round trip or two (a challenge
 * and the authenticated request), so 10 s without a byte or 30 s in all is far beyond any client
 * that means it; 64 KiB covers a few protocol exchanges with room to spare; 64 undecided
 * connections from one address is a lot for a phase that lasts milliseconds (raise it for clients
 * behind a large NAT); 4096 in total keeps the worst case (each holding up to maxBytes in kernel
 * and Node buffers) to a few hundred MB on the distributor.
 */
export const ROUTING_LIMIT_DEFAULTS: Readonly<RoutingLimits> = Object.freeze({
  idleMs: 10_000,
  deadlineMs: 30_000,
  maxBytes: 64 * 1024,
  maxPerSource: 64,
  ipv6SourcePrefix: IPV6_SOURCE_PREFIX,
  maxTotal: 4096,
});

export function positiveInteger(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new BatonError('E_CONFIG', `routing guard: ${name} must be a positive integer, got ${String(value)}`, { step: 'routing-guard', option: name });
  }
  return value;
}

