// Hostile input, handled once for every way in: a datagram, a frame, an HTTP body, a file.
//
//   parseJson()      JSON with its size, nesting depth and encoding bounded *before* V8 parses
//                    it: a value nested 30,000 deep parses, but stringifying it (a log line, a
//                    message relayed to another node) overflows the stack and kills the process.
//   describeInput()  what may be logged about a value an attacker chose: its type and a short,
//                    escaped prefix; never the value itself, never a recursive walk.
//   guard()          wraps an event handler (socket 'data', 'message'): an exception that escapes
//                    it is logged, counted in baton_input_errors_total{source} and handed to
//                    onError (which closes the offending link) instead of reaching the event loop.
import type { Logger } from './log.js';

/** Where input comes from, as baton_input_errors_total labels it. */
export const INPUT_SOURCES = ['control', 'peer', 'app', 'api', 'config', 'sdk', 'descriptor'] as const;
export type InputSource = (typeof INPUT_SOURCES)[number];

/** Deepest nesting of arrays and objects any Baton input may have (application state included). */
export const MAX_JSON_DEPTH = 64;

const errors = new Map<InputSource, number>();

/** Counts one input that made a handler throw (the link was closed, the process went on). */
export function countInputError(source: InputSource): number {
  const n = (errors.get(source) ?? 0) + 1;
  errors.set(source, n);
  return n;
}

/** Monotonic counts since the process started, every source present: for a Prometheus counter. */
export function inputErrors(): Record<InputSource, number> {
  return Object.fromEntries(INPUT_SOURCES.map((s) => [s, errors.get(s) ?? 0])) as Record<InputSource, number>;
}

export type JsonRefusal = 'too-large' | 'too-deep' | 'encoding' | 'not-json';
export type JsonResult = { ok: true; value: unknown } | { ok: false; reason: JsonRefusal; detail: string };

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * Parses JSON text after checking, without recursion, that it is at most maxBytes long, valid
 * UTF-8 (a Buffer is decoded strictly: a replacement character would let two different byte
 * strings mean the same message) and nested at most maxDepth deep. Never throws.
 */
export function parseJson(input: string | Buffer | Uint8Array, limits: { maxBytes: number; maxDepth?: number }): JsonResult {
  const bytes = typeof input === 'string' ? Buffer.byteLength(input) : input.length;
  if (bytes > limits.maxBytes) return { ok: false, reason: 'too-large', detail: `${bytes} bytes, at most ${limits.maxBytes}` };
  let text: string;
  if (typeof input === 'string') text = input;
  else {
    try {
      text = utf8.decode(input);
    } catch {
      return { ok: false, reason: 'encoding', detail: 'not valid UTF-8' };
    }
  }
  const maxDepth = limits.maxDepth ?? MAX_JSON_DEPTH;
  const depth = nestingDepth(text, maxDepth);
  if (depth > maxDepth) return { ok: false, reason: 'too-deep', detail: `nested deeper than ${maxDepth}` };
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (err) {
    // V8's message quotes a few characters around the error: bound it like any attacker text.
    return { ok: false, reason: 'not-json', detail: bounded((err as Error).message, 120) };
  }
}

/**
 * How deep arrays and objects nest in JSON text, counting brackets outside strings; stops
 * counting once past limit. Malformed text gets some number: JSON.parse refuses it anyway.
 */
function nestingDepth(text: string, limit = Infinity): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: the next character is escaped
      else if (c === 0x22) inString = false;
      continue;
    }
    if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) {
        max = depth;
        if (max > limit) return max;
      }
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return max;
}

/** How deep a parsed value nests (iteratively); stops once past limit. */
export function valueDepth(value: unknown, limit = MAX_JSON_DEPTH): number {
  let max = 0;
  const stack: Array<[unknown, number]> = [[value, 1]];
  while (stack.length > 0) {
    const [v, d] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (d > max) {
      max = d;
      if (max > limit) return max;
    }
    for (const child of Array.isArray(v) ? v : Object.values(v)) stack.push([child, d + 1]);
  }
  return max;
}

/** A string cut to at most max characters, control and non-ASCII characters escaped. */
export function bounded(text: string, max = 64): string {
  const cut = text.length > max ? `${text.slice(0, max)}…(${text.length} chars)` : text;
  // eslint-disable-next-line no-control-regex
  return cut.replace(/[^\x20-\x7e…()]/g, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/**
 * What may be logged about a value from outside: its type, a length, and for a string a short
 * escaped prefix. Constant work whatever the value: no stringify, no walk.
 */
export function describeInput(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return `array(${value.length})`;
  switch (typeof value) {
    case 'string':
      return `string ${JSON.stringify(bounded(value, 32))}`;
    case 'number':
    case 'boolean':
      return `${typeof value} ${String(value).slice(0, 32)}`;
    case 'object':
      return 'object';
    default:
      return typeof value;
  }
}

/** The message of an error, bounded: an exception's text may quote what an attacker sent. */
export function errorText(err: unknown, max = 200): string {
  return bounded(err instanceof Error ? err.message : String(err), max);
}

/**
 * Whether the nth occurrence of something an attacker can repeat at will (a refused message, a
 * dropped datagram, a failed handshake) is logged: the first ten, then every 1000th, so that a
 * flood of bad input never becomes a flood of log lines. The count itself is a metric.
 */
export function logSparsely(n: number): boolean {
  return n <= 10 || n % 1000 === 0;
}

/**
 * Wraps a handler of input from source: whatever it throws (synchronously, or as a rejected
 * promise) is logged with a bounded message, counted, and passed to onError, which should close
 * the link the input came on. The process carries on.
 */
export function guard<A extends unknown[]>(
  source: InputSource,
  log: Logger,
  handler: (...args: A) => unknown,
  onError: (err: unknown) => void = () => undefined,
): (...args: A) => void {
  const fail = (err: unknown) => {
    const n = countInputError(source);
    if (logSparsely(n)) log.error({ source, err: errorText(err), inputErrors: n }, 'input handler failed: link closed');
    try {
      onError(err);
    } catch (closeErr) {
      log.error({ source, err: errorText(closeErr) }, 'closing the link after an input error failed too');
    }
  };
  return (...args: A) => {
    try {
      const out = handler(...args);
      if (out instanceof Promise) out.catch(fail);
    } catch (err) {
      fail(err);
    }
  };
}
