// What applications import.
export { RouterClient, MAX_PEEKED_BYTES, type HandoffOptions, type HandoffResult, type HandoffTarget, type HandoffTimings, type RouterOptions } from './router.js';
export type { ControlOptions } from './control-link.js';
export { RoutingGuard, type RoutingGuardOptions, type RoutingGuardStats, type RoutingHandler, type RoutingPhase } from './routing-guard.js';
export { ROUTING_LIMIT_DEFAULTS, LIMIT_REASONS, type LimitReason, type RoutingLimits } from './routing-limits.js';
export type { TargetInfo } from '../control/messages.js';
export { acceptTls } from './tls-session.js';
export { TargetClient, serveHttp, type OfferDecision, type TargetOptions, type TransferOffer, type TransferredConnection } from './target.js';
export { BatonError, isBatonError } from '../errors.js';
/** A socket's peer as host:port, an IPv6 host in brackets: for logs. */
export { peerText } from '../flow.js';
