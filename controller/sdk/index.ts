// What applications import.
export { RouterClient, MAX_PEEKED_BYTES, type HandoffOptions, type HandoffResult, type HandoffTarget, type HandoffTimings, type RouterOptions } from './router.js';
export type { ControlOptions } from './control-link.js';
export type { TargetInfo } from '../control/messages.js';
export { TargetClient, serveHttp, type OfferDecision, type TargetOptions, type TransferOffer, type TransferredConnection } from './target.js';
export { BatonError, isBatonError } from '../errors.js';
