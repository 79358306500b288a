// The record-layer crypto of a TLS session handed off with kernel TLS: from the secrets Node's
// `keylog` event gives (NSS key log lines) to the key and IV of each direction, and one record
// opened or sealed at a given sequence number. The SDK opens every record passing between the TCP
// socket and Node's TLS layer to learn each one's key epoch and sequence number (and to see TLS 1.3
// KeyUpdate messages), and seals the plaintext the router already read back into records for the
// target. Only what kernel TLS can take (TLS_TX/TLS_RX): TLS 1.2 and 1.3 with AES-GCM or
// ChaCha20-Poly1305. Pure functions over node:crypto; nothing is logged, no secret in any message.
import { type CipherChaCha20Poly1305, type CipherGCM, createCipheriv, createDecipheriv, createHmac, type DecipherChaCha20Poly1305, type DecipherGCM } from 'node:crypto';

export type TlsVersion = '1.2' | '1.3';
export type TlsCipher = 'aes-128-gcm' | 'aes-256-gcm' | 'chacha20-poly1305';
export type TlsHash = 'sha256' | 'sha384';
export interface TlsSuite { version: TlsVersion; cipher: TlsCipher; hash: TlsHash }
/** The key and IV of one direction in one epoch: all openRecord and sealRecord need. */
export interface RecordKeys { suite: TlsSuite; key: Buffer; iv: Buffer }

/** type(1) || legacy_version(2) || length(2), RFC 8446 5.1 and RFC 5246 6.2.1. */
export const RECORD_HEADER = 5;
/** 2^14, the largest plaintext a record may carry (RFC 8446 5.1, RFC 5246 6.2.1). */
export const MAX_PLAINTEXT = 16384;
/** Every suite here has a 16-byte authentication tag. */
export const TAG = 16;
export const ContentType = { change_cipher_spec: 20, alert: 21, handshake: 22, application_data: 23 } as const;

/** TLS 1.2 GCM: the 8 explicit nonce bytes sent before the ciphertext (RFC 5288 3). */
const EXPLICIT_NONCE = 8;
/** Every record is stamped 0x0303: TLS 1.3 freezes legacy_record_version there (RFC 8446 5.1). */
const RECORD_VERSION = 0x0303;
/** Largest ciphertext body a peer may send: 2^14 + 256 in TLS 1.3 (RFC 8446 5.2), + 2048 in 1.2 (RFC 5246 6.2.3). */
export const MAX_BODY = { '1.3': MAX_PLAINTEXT + 256, '1.2': MAX_PLAINTEXT + 2048 } as const;
const HASH_LENGTH: Record<TlsHash, number> = { sha256: 32, sha384: 48 };

const TLS13_SUITES: Record<string, Omit<TlsSuite, 'version'>> = {
  TLS_AES_128_GCM_SHA256: { cipher: 'aes-128-gcm', hash: 'sha256' },
  TLS_AES_256_GCM_SHA384: { cipher: 'aes-256-gcm', hash: 'sha384' },
  TLS_CHACHA20_POLY1305_SHA256: { cipher: 'chacha20-poly1305', hash: 'sha256' },
};
// TLS 1.2 IANA names end in <bulk cipher>_<PRF hash> whatever the key exchange (ECDHE_ECDSA,
// ECDHE_RSA, DHE_RSA, RSA, PSK...): the record layer depends on the bulk cipher and the PRF only.
const TLS12_BULK: Record<string, TlsCipher> = { AES_128_GCM: 'aes-128-gcm', AES_256_GCM: 'aes-256-gcm', CHACHA20_POLY1305: 'chacha20-poly1305' };
const TLS12_NAME = /^TLS_\w+_WITH_(AES_128_GCM|AES_256_GCM|CHACHA20_POLY1305)_(SHA256|SHA384)$/;

/** From Node's tlsSocket.getCipher().standardName (IANA name) and getProtocol() ('TLSv1.2'|'TLSv1.3'); undefined for anything kernel TLS cannot take (CBC suites, CCM, TLS 1.1, ...). */
export function suiteOf(standardName: string, protocol: string): TlsSuite | undefined {
  if (protocol === 'TLSv1.3') {
    const s = TLS13_SUITES[standardName];
    return s && { version: '1.3', ...s };
  }
  if (protocol !== 'TLSv1.2') return undefined;
  const [, bulk = '', prf = ''] = TLS12_NAME.exec(standardName) ?? [];
  const cipher = TLS12_BULK[bulk];
  // RFC 7905 2: the ChaCha20 suites are SHA-256 only.
  if (!cipher || (cipher === 'chacha20-poly1305' && prf !== 'SHA256')) return undefined;
  return { version: '1.2', cipher, hash: prf === 'SHA256' ? 'sha256' : 'sha384' };
}

/** Key and IV lengths: key 16/32/32; iv: TLS 1.3 always 12 (the per-record nonce base); TLS 1.2: GCM 4 (the implicit "salt" part of the nonce, RFC 5288), ChaCha20 12 (RFC 7905). */
export function keyLength(cipher: TlsCipher): number {
  return cipher === 'aes-128-gcm' ? 16 : 32;
}

export function ivLength(suite: Pick<TlsSuite, 'version' | 'cipher'>): number {
  return suite.version === '1.2' && suite.cipher !== 'chacha20-poly1305' ? 4 : 12;
}

/** RFC 8446 7.1 HKDF-Expand-Label (Expand only: the secret is already a PRK). Implement Expand with createHmac (Node has no expand-only API); length ≤ 255*hashLen. */
export function hkdfExpandLabel(hash: TlsHash, secret: Buffer, label: string, context: Buffer, length: number): Buffer {
  const fullLabel = Buffer.from(`tls13 ${label}`, 'ascii');
  // HkdfLabel's label is opaque<7..255>, its context opaque<0..255> (RFC 8446 7.1).
  if (fullLabel.length > 255 || context.length > 255) throw new RangeError('HKDF-Expand-Label: label or context longer than 255 bytes');
  const lengths = Buffer.alloc(2);
  lengths.writeUInt16BE(length);
  const info = Buffer.concat([lengths, Buffer.from([fullLabel.length]), fullLabel, Buffer.from([context.length]), context]);
  return hkdfExpand(hash, secret, info, length);
}

/** RFC 5869 2.3: T(i) = HMAC(PRK, T(i-1) || info || i), output the first `length` bytes of T(1) || T(2) || ... */
function hkdfExpand(hash: TlsHash, prk: Buffer, info: Buffer, length: number): Buffer {
  if (!Number.isInteger(length) || length < 0 || length > 255 * HASH_LENGTH[hash]) throw new RangeError(`HKDF-Expand: length ${length} out of range`);
  const blocks: Buffer[] = [];
  let t = Buffer.alloc(0);
  for (let i = 1, have = 0; have < length; i++, have += t.length) {
    t = createHmac(hash, prk).update(t).update(info).update(Buffer.from([i])).digest();
    blocks.push(t);
  }
  return Buffer.concat(blocks).subarray(0, length);
}

/** RFC 8446 7.3: key = HKDF-Expand-Label(secret, "key", "", keyLen), iv = ...("iv", "", 12). */
export function tls13TrafficKeys(suite: TlsSuite, secret: Buffer): { key: Buffer; iv: Buffer } {
  const none = Buffer.alloc(0);
  return { key: hkdfExpandLabel(suite.hash, secret, 'key', none, keyLength(suite.cipher)), iv: hkdfExpandLabel(suite.hash, secret, 'iv', none, 12) };
}

/** RFC 8446 7.2: application_traffic_secret_N+1 = HKDF-Expand-Label(secret_N, "traffic upd", "", Hash.length). */
export function tls13NextSecret(hash: TlsHash, secret: Buffer): Buffer {
  return hkdfExpandLabel(hash, secret, 'traffic upd', Buffer.alloc(0), HASH_LENGTH[hash]);
}

/** RFC 5246 5: P_hash(secret, seed) = HMAC(secret, A(1) || seed) || HMAC(secret, A(2) || seed) || ..., A(0) = seed, A(i) = HMAC(secret, A(i-1)). */
function tls12Prf(hash: TlsHash, secret: Buffer, label: string, seed: Buffer, length: number): Buffer {
  const labelSeed = Buffer.concat([Buffer.from(label, 'ascii'), seed]);
  const out: Buffer[] = [];
  let a = labelSeed;
  for (let have = 0; have < length; have += HASH_LENGTH[hash]) {
    a = createHmac(hash, secret).update(a).digest();
    out.push(createHmac(hash, secret).update(a).update(labelSeed).digest());
  }
  return Buffer.concat(out).subarray(0, length);
}

/** RFC 5246 5 and 6.3: key_block = PRF(master, "key expansion", server_random + client_random); AEAD suites have no MAC keys: client_write_key, server_write_key, client_write_IV, server_write_IV (IV of ivLength). PRF is P_<hash> (the suite's hash). */
export function tls12KeyBlock(suite: TlsSuite, master: Buffer, clientRandom: Buffer, serverRandom: Buffer): { client: { key: Buffer; iv: Buffer }; server: { key: Buffer; iv: Buffer } } {
  const k = keyLength(suite.cipher);
  const v = ivLength(suite);
  const block = tls12Prf(suite.hash, master, 'key expansion', Buffer.concat([serverRandom, clientRandom]), 2 * (k + v));
  // Copies, so a caller keeping one key does not keep the whole block alive.
  const at = (offset: number, length: number) => Buffer.from(block.subarray(offset, offset + length));
  return { client: { key: at(0, k), iv: at(2 * k, v) }, server: { key: at(k, k), iv: at(2 * k + v, v) } };
}

function seqBytes(seq: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(seq); // throws RangeError outside 0..2^64-1: a caller bug, not peer input
  return b;
}

/** RFC 8446 5.3 (and RFC 7905 2 for TLS 1.2 ChaCha20): the 64-bit seq, left-padded to the IV's length, XORed into the IV. */
function xorNonce(iv: Buffer, seq: bigint): Buffer {
  const nonce = Buffer.from(iv);
  const s = seqBytes(seq);
  for (let i = 0, at = nonce.length - 8; i < 8; i++) nonce.writeUInt8(nonce.readUInt8(at + i) ^ s.readUInt8(i), at + i);
  return nonce;
}

function isGcm12(suite: TlsSuite): boolean {
  return suite.version === '1.2' && suite.cipher !== 'chacha20-poly1305';
}

/** RFC 5246 6.2.3.3: additional_data = seq_num || type || version || length (of the plaintext). */
function tls12Aad(seq: bigint, type: number, version: number, length: number): Buffer {
  const aad = Buffer.alloc(13);
  seqBytes(seq).copy(aad, 0);
  aad.writeUInt8(type, 8);
  aad.writeUInt16BE(version, 9);
  aad.writeUInt16BE(length, 11);
  return aad;
}

// node:crypto types each AEAD family by its own overload, hence the branch on the same call.
function encryptor(keys: RecordKeys, nonce: Buffer): CipherGCM | CipherChaCha20Poly1305 {
  const { cipher } = keys.suite;
  const options = { authTagLength: TAG };
  return cipher === 'chacha20-poly1305' ? createCipheriv(cipher, keys.key, nonce, options) : createCipheriv(cipher, keys.key, nonce, options);
}

function decryptor(keys: RecordKeys, nonce: Buffer): DecipherGCM | DecipherChaCha20Poly1305 {
  const { cipher } = keys.suite;
  const options = { authTagLength: TAG };
  return cipher === 'chacha20-poly1305' ? createDecipheriv(cipher, keys.key, nonce, options) : createDecipheriv(cipher, keys.key, nonce, options);
}

function recordHeader(type: number, bodyLength: number): Buffer {
  const h = Buffer.alloc(RECORD_HEADER);
  h.writeUInt8(type, 0);
  h.writeUInt16BE(RECORD_VERSION, 1);
  h.writeUInt16BE(bodyLength, 3);
  return h;
}

/**
 * Decrypts one whole record (5-byte header + body) protected with keys at sequence number seq.
 * TLS 1.3 (RFC 8446 5.2-5.3): nonce = iv XOR seq (left-padded), AAD = the 5-byte header, inner plaintext = content || type || zeros: return the real type, padding removed.
 * TLS 1.2 GCM (RFC 5288): 8-byte explicit nonce first in the body, nonce = iv(4) || explicit(8); AAD = seq(8) || type(1) || version(2) || plaintext length(2). ChaCha20-Poly1305 in TLS 1.2 (RFC 7905): nonce = iv XOR seq, no explicit nonce, same AAD.
 * Returns undefined when authentication fails (wrong key/seq) or the record is malformed (too short); never throws on attacker input. explicitNonce: TLS 1.2 GCM only, the record's 8 explicit bytes (the SDK needs the last one sent).
 */
export function openRecord(keys: RecordKeys, seq: bigint, record: Buffer): { type: number; plaintext: Buffer; explicitNonce?: Buffer } | undefined {
  const { suite } = keys;
  if (record.length < RECORD_HEADER) return undefined;
  const header = record.subarray(0, RECORD_HEADER);
  const bodyLength = header.readUInt16BE(3);
  // One whole record, no more, no less: a stray byte means the caller's framing is off.
  if (record.length !== RECORD_HEADER + bodyLength || bodyLength > MAX_BODY[suite.version]) return undefined;
  const explicitLength = isGcm12(suite) ? EXPLICIT_NONCE : 0;
  if (bodyLength < explicitLength + TAG) return undefined;
  const body = record.subarray(RECORD_HEADER);
  const explicitNonce = explicitLength ? Buffer.from(body.subarray(0, EXPLICIT_NONCE)) : undefined;
  const ciphertext = body.subarray(explicitLength, bodyLength - TAG);
  const nonce = explicitNonce ? Buffer.concat([keys.iv, explicitNonce]) : xorNonce(keys.iv, seq);
  const type = header.readUInt8(0);
  const aad = suite.version === '1.3' ? header : tls12Aad(seq, type, header.readUInt16BE(1), ciphertext.length);
  const decipher = decryptor(keys, nonce);
  decipher.setAAD(aad, { plaintextLength: ciphertext.length });
  decipher.setAuthTag(body.subarray(bodyLength - TAG));
  let inner: Buffer;
  try {
    inner = Buffer.concat([decipher.update(ciphertext), decipher.final()]);
  } catch {
    return undefined; // authentication failed: wrong key, wrong seq, or tampered
  }
  if (suite.version === '1.2') return { type, plaintext: inner, explicitNonce };
  // RFC 8446 5.4: the real type is the last non-zero byte; all zeros is no record at all.
  let end = inner.length;
  while (end > 0 && inner.readUInt8(end - 1) === 0) end--;
  if (end === 0 || end - 1 > MAX_PLAINTEXT) return undefined;
  return { type: inner.readUInt8(end - 1), plaintext: inner.subarray(0, end - 1) };
}

/** Encrypts plaintext (≤ 16384 bytes, else throw) as one whole record of content type `type` at seq: TLS 1.3 outer type 23 (application_data), legacy version 0x0303, no padding; TLS 1.2: outer type = type, version 0x0303, GCM explicit nonce = explicitNonce if given else seq big-endian. */
export function sealRecord(keys: RecordKeys, seq: bigint, type: number, plaintext: Buffer, explicitNonce?: Buffer): Buffer {
  const { suite } = keys;
  if (plaintext.length > MAX_PLAINTEXT) throw new RangeError(`a record carries at most ${MAX_PLAINTEXT} bytes, not ${plaintext.length}`);
  if (explicitNonce && (!isGcm12(suite) || explicitNonce.length !== EXPLICIT_NONCE)) throw new RangeError('an explicit nonce is 8 bytes, and TLS 1.2 GCM only');
  if (suite.version === '1.3') {
    // RFC 8446 5.2: TLSInnerPlaintext = content || real type, sent as application_data.
    const inner = Buffer.concat([plaintext, Buffer.from([type])]);
    const header = recordHeader(ContentType.application_data, inner.length + TAG);
    const cipher = encryptor(keys, xorNonce(keys.iv, seq));
    cipher.setAAD(header, { plaintextLength: inner.length });
    return Buffer.concat([header, cipher.update(inner), cipher.final(), cipher.getAuthTag()]);
  }
  const explicit = isGcm12(suite) ? (explicitNonce ?? seqBytes(seq)) : Buffer.alloc(0);
  const nonce = explicit.length ? Buffer.concat([keys.iv, explicit]) : xorNonce(keys.iv, seq);
  const cipher = encryptor(keys, nonce);
  cipher.setAAD(tls12Aad(seq, type, RECORD_VERSION, plaintext.length), { plaintextLength: plaintext.length });
  const sealed = Buffer.concat([cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
  return Buffer.concat([recordHeader(type, explicit.length + sealed.length), explicit, sealed]);
}
