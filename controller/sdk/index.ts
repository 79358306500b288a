// What applications import.
export { RouterClient, MAX_PEEKED_BYTES, type HandoffOptions, type HandoffResult, type HandoffTarget, type HandoffTimings } from './router.js';
export { TargetClient, serveHttp, type TargetOptions, type TransferredConnection } from './target.js';
export { BatonError, isBatonError } from '../errors.js';
