// How much application state and how many peeked bytes a message may carry: the routing SDK
// refuses more before it sends (appStateRefusal), every decoder on receipt (beyondLimits, in
// decodeMessage), so a peer or an application cannot make batond hold or relay more.
import { MAX_JSON_DEPTH, valueDepth } from '../input.js';

/** Application state (appState) at most this many bytes once serialised, and peeked bytes at most this many. */
export const MAX_APP_STATE_BYTES = 32 * 1024;
export const MAX_PEEKED_BYTES = 256 * 1024;

/**
 * Why appState exceeds what the SDK may send (MAX_JSON_DEPTH, MAX_APP_STATE_BYTES), or undefined:
 * the SDK checks before it sends, batond's decoder on receipt. The depth is measured first,
 * without recursion: only a value known to be shallow is serialised to be sized. Throws what
 * JSON.stringify throws for a value that cannot be serialised (a decoded one always can).
 */
export function appStateRefusal(appState: unknown): string | undefined {
  if (valueDepth(appState, MAX_JSON_DEPTH) > MAX_JSON_DEPTH) return `appState is nested deeper than ${MAX_JSON_DEPTH}`;
  const bytes = Buffer.byteLength(JSON.stringify(appState) ?? '');
  if (bytes > MAX_APP_STATE_BYTES) return `appState of ${bytes} bytes exceeds ${MAX_APP_STATE_BYTES / 1024} KiB`;
  return undefined;
}

/** Why appState or the peeked bytes exceed what the SDK may send, or undefined. */
export function beyondLimits(appState: unknown, peeked: Buffer): string | undefined {
  const why = appStateRefusal(appState);
  if (why) return why;
  if (peeked.length > MAX_PEEKED_BYTES) return `${peeked.length} peeked bytes exceed ${MAX_PEEKED_BYTES}`;
  return undefined;
}
