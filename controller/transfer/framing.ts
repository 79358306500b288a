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
import { BatonError } from '../errors.js';

export const FRAME_PREFIX_BYTES = 8;
export const DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024;
export const MAX_HEADER_BYTES = 64 * 1024;

export interface Frame {
  header: Record<string, unknown> & { blobs?: number[] };
  blobs: Buffer[];
}

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

  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames: Frame[] = [];
    for (;;) {
      if (this.buffered < 4) break;
      const frameLength = this.peekUInt32(0);
      if (frameLength < 4 || frameLength > this.maxFrameBytes) {
        throw new BatonError('E_PROTOCOL', `frame length ${frameLength} outside 4..${this.maxFrameBytes}`, { step: 'decode' });
      }
      if (this.buffered < 4 + frameLength) break;
      const whole = this.take(4 + frameLength);
      frames.push(parseFrame(whole.subarray(4)));
    }
    return frames;
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
  if (headerLength > MAX_HEADER_BYTES || 4 + headerLength > body.length) {
    throw new BatonError('E_PROTOCOL', `header length ${headerLength} does not fit a frame of ${body.length} bytes`, { step: 'decode' });
  }
  let header: unknown;
  try {
    header = JSON.parse(body.subarray(4, 4 + headerLength).toString('utf8'));
  } catch (err) {
    throw new BatonError('E_PROTOCOL', `frame header is not valid JSON: ${(err as Error).message}`, { step: 'decode' });
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new BatonError('E_PROTOCOL', 'frame header must be a JSON object', { step: 'decode' });
  }
  const declared = (header as { blobs?: unknown }).blobs ?? [];
  if (!Array.isArray(declared) || !declared.every((n) => Number.isInteger(n) && n >= 0)) {
    throw new BatonError('E_PROTOCOL', 'header.blobs must be an array of non-negative integers', { step: 'decode' });
  }
  const payload = body.subarray(4 + headerLength);
  const total = (declared as number[]).reduce((a, b) => a + b, 0);
  if (total !== payload.length) {
    throw new BatonError('E_PROTOCOL', `header.blobs declares ${total} bytes but the frame carries ${payload.length}`, { step: 'decode' });
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
