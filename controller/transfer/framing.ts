// Length-prefixed frames shared by every Baton stream channel (node↔node over TCP, application↔node
// over a Unix socket). Layout, all integers big-endian:
//
//   u32  frameLength   bytes that follow this field (header length field + header + blobs)
//   u32  headerLength  bytes of the JSON header
//   ...  header        UTF-8 JSON object, validated against the message schema on receipt
//   ...  blobs         raw byte strings concatenated; header.blobs lists their lengths in order
//
// Socket queues travel as raw blobs so a multi-megabyte send queue is neither base64-inflated nor
// copied through a JSON string.
import { BatonError, isBatonError } from '../errors.js';
import { MAX_JSON_DEPTH, parseJson } from '../input.js';

export const FRAME_PREFIX_BYTES = 8;
export const DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024;
export const MAX_HEADER_BYTES = 64 * 1024;
/**
 * Deepest nesting a header may have: the message's own objects (a few levels) around application
 * state that may itself nest MAX_JSON_DEPTH deep (messages.ts bounds that part exactly).
 */
export const MAX_HEADER_DEPTH = MAX_JSON_DEPTH + 4;

/**
 * Why a received frame was refused. framing and too-large break the byte stream (the channel
 * closes); schema, unexpected-type and blob-count drop one message (messages.ts), carried as
 * `rejection` in the E_PROTOCOL error's context so the channel counts by reason without parsing
 * error text. out-of-phase drops one well-formed message too, refused by the state machine it is
 * for: the handoff it names is not in a phase that takes it (transfer/target/phases.ts,
 * transfer/handoff-phases.ts); counted by that machine (countRefusedMessage in channel.ts), and
 * nothing else changes. unsolicited drops a well-formed reply nobody waits for: late, after the
 * handoff or request it answers ended, or never asked for (PendingReplies in channel.ts).
 */
export type RejectReason = 'framing' | 'too-large' | 'schema' | 'unexpected-type' | 'blob-count' | 'out-of-phase' | 'unsolicited';
export const REJECT_REASONS: readonly RejectReason[] = ['framing', 'too-large', 'schema', 'unexpected-type', 'blob-count', 'out-of-phase', 'unsolicited'];

/** The reason a frame decoder or decodeMessage error gives; undefined for any other error. */
export function rejectionOf(err: unknown): RejectReason | undefined {
  if (!isBatonError(err, 'E_PROTOCOL')) return undefined;
  const r = err.context.rejection;
  return REJECT_REASONS.find((known) => known === r);
}

export interface Frame {
  header: Record<string, unknown> & { blobs?: number[] };
  blobs: Buffer[];
}

const broken = (message: string, rejection: RejectReason) => new BatonError('E_PROTOCOL', message, { step: 'decode', rejection });

export function encodeFrame(header: Record<string, unknown>, blobs: Buffer[] = []): Buffer[] {
  const json = Buffer.from(JSON.stringify(blobs.length > 0 ? { ...header, blobs: blobs.map((b) => b.length) } : header), 'utf8');
  if (json.length > MAX_HEADER_BYTES) {
    throw new BatonError('E_PROTOCOL', `frame header of ${json.length} bytes exceeds ${MAX_HEADER_BYTES}`, { step: 'encode' });
  }
  const blobBytes = blobs.reduce((sum, b) => sum + b.length, 0);
  const prefix = Buffer.allocUnsafe(FRAME_PREFIX_BYTES);
  prefix.writeUInt32BE(4 + json.length + blobBytes, 0);
  prefix.writeUInt32BE(json.length, 4);
  return [prefix, json, ...blobs.filter((b) => b.length > 0)];
}

/**
 * Incremental decoder: feed it whatever the socket delivered, get back whole frames. A violation
 * (oversized frame, bad lengths, invalid JSON) throws; the caller must drop the connection, since
 * the byte stream cannot be resynchronised.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;

  constructor(private readonly maxFrameBytes = DEFAULT_MAX_FRAME_BYTES) {}

  /** Every whole frame buffered; a violation throws, losing the frames before it in this chunk (see next()). */
  push(chunk: Buffer): Frame[] {
    this.append(chunk);
    const frames: Frame[] = [];
    for (let f = this.next(); f; f = this.next()) frames.push(f);
    return frames;
  }

  append(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /**
   * The next whole frame, or undefined until more bytes arrive; throws on reaching a violation.
   * One frame at a time, so frames that came before a violation in the same read are still
   * handled, as they would have been had the read ended between them.
   */
  next(): Frame | undefined {
    if (this.buffered < 4) return undefined;
    const frameLength = this.peekUInt32(0);
    if (frameLength < 4 || frameLength > this.maxFrameBytes) {
      throw broken(`frame length ${frameLength} outside 4..${this.maxFrameBytes}`, frameLength < 4 ? 'framing' : 'too-large');
    }
    if (this.buffered < 4 + frameLength) return undefined;
    return parseFrame(this.take(4 + frameLength).subarray(4));
  }

  private peekUInt32(offset: number): number {
    const first = this.chunks[0]!;
    if (first.length >= offset + 4) return first.readUInt32BE(offset);
    this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0]!.readUInt32BE(offset);
  }

  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      const all = Buffer.concat(this.chunks);
      out = all.subarray(0, n);
      this.chunks = all.length > n ? [all.subarray(n)] : [];
    }
    this.buffered -= n;
    return out;
  }
}

function parseFrame(body: Buffer): Frame {
  const headerLength = body.readUInt32BE(0);
  if (headerLength > MAX_HEADER_BYTES) {
    throw broken(`header length ${headerLength} exceeds ${MAX_HEADER_BYTES}`, 'too-large');
  }
  if (4 + headerLength > body.length) {
    throw broken(`header length ${headerLength} does not fit a frame of ${body.length} bytes`, 'framing');
  }
  // Bounded before it is parsed: a header nested thousands deep parses, but stringifying it later
  // (a log line, an offer relayed to another node) would overflow the stack.
  const parsed = parseJson(body.subarray(4, 4 + headerLength), { maxBytes: MAX_HEADER_BYTES, maxDepth: MAX_HEADER_DEPTH });
  if (!parsed.ok) throw broken(`frame header refused (${parsed.reason}): ${parsed.detail}`, 'framing');
  const header = parsed.value;
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw broken('frame header must be a JSON object', 'framing');
  }
  const declared = (header as { blobs?: unknown }).blobs ?? [];
  if (!Array.isArray(declared) || !declared.every((n) => Number.isInteger(n) && n >= 0)) {
    throw broken('header.blobs must be an array of non-negative integers', 'framing');
  }
  const payload = body.subarray(4 + headerLength);
  const total = (declared as number[]).reduce((a, b) => a + b, 0);
  if (total !== payload.length) {
    throw broken(`header.blobs declares ${total} bytes but the frame carries ${payload.length}`, 'framing');
  }
  const blobs: Buffer[] = [];
  let offset = 0;
  for (const len of declared as number[]) {
    // Copy: the frame buffer may be a slice of a larger read that would otherwise stay alive.
    blobs.push(Buffer.from(payload.subarray(offset, offset + len)));
    offset += len;
  }
  return { header: header as Frame['header'], blobs };
}
