// A TLS connection's session on the wire between the routing application, its batond and the
// target's batond: the suite in the message (handoff, offer, transferred), the keys in a blob of
// their own (handoff, offer), never in JSON, so no log line or error can quote them. The blob is
// the kernel's crypto_info for the target's sending direction, then for its receiving one
// (native/ktls.ts): what setsockopt(TLS_TX) and setsockopt(TLS_RX) take, as the kernel defines it.
import { Type, type Static } from '@sinclair/typebox';
import { BatonError } from '../errors.js';
import type { RejectReason } from './framing.js';
import { type KtlsState, parseCryptoInfo } from '../../native/ktls.js';

export const TlsSchema = Type.Object(
  {
    version: Type.Union([Type.Literal('1.2'), Type.Literal('1.3')]),
    cipher: Type.Union([Type.Literal('aes-128-gcm'), Type.Literal('aes-256-gcm'), Type.Literal('chacha20-poly1305')]),
  },
  { additionalProperties: false },
);
export type TlsInfo = Static<typeof TlsSchema>;

/**
 * The keys blob read against the message's suite: both structs of that version and cipher, the
 * blob exactly their length; empty exactly when the connection is not TLS. Throws E_PROTOCOL
 * (the sender's bytes are described by their lengths only).
 */
export function keysOf(tls: TlsInfo | undefined, blob: Buffer, connId?: string): KtlsState | undefined {
  const refuse = (why: string) => new BatonError('E_PROTOCOL', `TLS keys refused: ${why}`, { connId, step: 'validate', rejection: 'schema' satisfies RejectReason });
  if (!tls) {
    if (blob.length !== 0) throw refuse(`${blob.length} bytes of keys for a connection that is not TLS`);
    return undefined;
  }
  if (blob.length === 0 || blob.length % 2 !== 0) throw refuse(`a keys blob of ${blob.length} bytes is not two structs of one size`);
  const half = blob.length / 2;
  let tx, rx;
  try {
    tx = parseCryptoInfo(blob.subarray(0, half));
    rx = parseCryptoInfo(blob.subarray(half));
  } catch (err) {
    throw refuse((err as Error).message);
  }
  for (const d of [tx, rx]) {
    if (d.version !== tls.version || d.cipher !== tls.cipher) throw refuse(`a struct for TLS ${d.version} ${d.cipher} in a ${tls.version} ${tls.cipher} session`);
  }
  return { version: tls.version, cipher: tls.cipher, tx: tx.dir, rx: rx.dir };
}

/** Wipes a session's keys once they are installed or no longer needed. */
export function wipeKeys(state: KtlsState | undefined, ...blobs: Buffer[]): void {
  for (const d of state ? [state.tx, state.rx] : []) for (const b of [d.key, d.salt, d.iv]) b.fill(0);
  for (const b of blobs) b.fill(0);
}
