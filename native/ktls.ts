// Kernel TLS on a TCP socket through build/native/libbaton.so (native/ktls.c; the call sequence
// is in native/ktls.h). The target node's batond reinstates a TLS connection's socket
// (native/repair.ts) and installs the session's record-layer state on it (installKtls): the
// application then reads and writes plaintext, and the kernel encrypts, decrypts and numbers the
// records. A record that is not application data (an alert, a TLS 1.3 KeyUpdate) makes a plain
// read fail with EIO: recvRecord reads it with its type; sendRecord sends one (close_notify).
// A re-transfer reads the installed state back (ktlsState).
//
// KtlsState is exactly what the kernel's crypto_info structs hold (linux/tls.h), nothing derived:
// cryptoInfo and parseCryptoInfo are the one place that knows their layout. It holds keys: no
// error message or log line here carries a byte of a key, salt or iv, only lengths and names;
// the struct buffers built for an install are zeroed once the kernel has copied them.
//
// Every function is synchronous. A kernel call that fails throws BatonError('E_NATIVE') naming
// the call and its errno; a state that does not fit the kernel's structs throws
// BatonError('E_HANDOFF_STATE').
import os from 'node:os';
import { BatonError } from '../controller/errors.js';
import { MAX_PLAINTEXT, type TlsCipher, type TlsVersion } from '../controller/transfer/tls-keys.js';
import { errnoName } from './errno.js';
import { kernelTls } from './kernel-tls.js';
import { libbaton } from './repair.js';

/**
 * One direction's record-layer state exactly as the kernel's crypto_info holds it (linux/tls.h).
 * AES-GCM: salt is the 4-byte implicit part of the nonce; iv the 8-byte rest (TLS 1.2: the
 * explicit nonce of the next record; TLS 1.3: the last 8 bytes of the write IV, whose first 4 are
 * the salt). ChaCha20-Poly1305: iv is the whole 12-byte write IV, salt is empty. recSeq is the
 * sequence number of the next record (TX: the next one sent; RX: the next one expected).
 */
export interface KtlsDirection {
  key: Buffer;
  salt: Buffer;
  iv: Buffer;
  recSeq: bigint;
}

export interface KtlsState {
  version: TlsVersion;
  cipher: TlsCipher;
  tx: KtlsDirection;
  rx: KtlsDirection;
}

// ---- the kernel's structs (linux/tls.h) --------------------------------------------------------

const VERSIONS: Record<TlsVersion, number> = { '1.2': 0x0303, '1.3': 0x0304 }; // TLS_1_2_VERSION, TLS_1_3_VERSION
const HEADER_SIZE = 4; // struct tls_crypto_info { __u16 version; __u16 cipher_type; }, host byte order
const REC_SEQ_SIZE = 8; // TLS_CIPHER_*_REC_SEQ_SIZE: the same for every cipher, big-endian

interface CipherLayout {
  id: number;
  iv: number;
  key: number;
  salt: number;
}

// struct tls12_crypto_info_aes_gcm_128 / _aes_gcm_256 / _chacha20_poly1305: the header, then
// iv, key, salt, rec_seq, all unsigned char arrays (no padding): 40, 56 and 56 bytes.
const CIPHERS: Record<TlsCipher, CipherLayout> = {
  'aes-128-gcm': { id: 51, iv: 8, key: 16, salt: 4 }, // TLS_CIPHER_AES_GCM_128
  'aes-256-gcm': { id: 52, iv: 8, key: 32, salt: 4 }, // TLS_CIPHER_AES_GCM_256
  'chacha20-poly1305': { id: 54, iv: 12, key: 32, salt: 0 }, // TLS_CIPHER_CHACHA20_POLY1305
};

function structSize(c: CipherLayout): number {
  return HEADER_SIZE + c.iv + c.key + c.salt + REC_SEQ_SIZE;
}

const MAX_STRUCT_SIZE = Math.max(...Object.values(CIPHERS).map(structSize));

function versionOf(num: number): TlsVersion | undefined {
  return (Object.keys(VERSIONS) as TlsVersion[]).find((v) => VERSIONS[v] === num);
}

function cipherOf(id: number): TlsCipher | undefined {
  return (Object.keys(CIPHERS) as TlsCipher[]).find((c) => CIPHERS[c].id === id);
}

function refuse(message: string, context: Record<string, unknown> = {}): BatonError {
  return new BatonError('E_HANDOFF_STATE', message, { step: 'ktls', ...context });
}

/**
 * The struct bytes setsockopt(TLS_TX / TLS_RX) takes for this version, cipher and direction.
 * Throws E_HANDOFF_STATE when a length does not match the cipher or recSeq is not a u64.
 */
export function cryptoInfo(version: TlsVersion, cipher: TlsCipher, dir: KtlsDirection): Buffer {
  const v = Object.hasOwn(VERSIONS, version) ? VERSIONS[version] : undefined;
  if (v === undefined) throw refuse(`kernel TLS takes TLS 1.2 or 1.3, not ${JSON.stringify(version)}`);
  const c = Object.hasOwn(CIPHERS, cipher) ? CIPHERS[cipher] : undefined;
  if (!c) throw refuse(`kernel TLS takes ${Object.keys(CIPHERS).join(', ')}, not ${JSON.stringify(cipher)}`);
  for (const [field, want] of [['key', c.key], ['salt', c.salt], ['iv', c.iv]] as const) {
    const got = dir[field];
    if (!Buffer.isBuffer(got) || got.length !== want) {
      throw refuse(`${cipher} needs a ${want}-byte ${field}, got ${Buffer.isBuffer(got) ? `${got.length} bytes` : typeof got}`, { cipher });
    }
  }
  if (typeof dir.recSeq !== 'bigint' || dir.recSeq < 0n || dir.recSeq > 0xffff_ffff_ffff_ffffn) {
    throw refuse(`recSeq must be a bigint in 0 … 2^64 - 1 (a record sequence number), got ${typeof dir.recSeq === 'bigint' ? dir.recSeq : typeof dir.recSeq}`, { cipher });
  }
  // Buffer.alloc, never allocUnsafe: a pooled buffer would share its memory with other buffers,
  // and zeroing this one after the install must wipe the only copy the struct made.
  const buf = Buffer.alloc(structSize(c));
  buf.writeUInt16LE(v, 0); // host byte order: little-endian on every platform Baton runs on
  buf.writeUInt16LE(c.id, 2);
  let at = HEADER_SIZE;
  at += dir.iv.copy(buf, at);
  at += dir.key.copy(buf, at);
  at += dir.salt.copy(buf, at);
  buf.writeBigUInt64BE(dir.recSeq, at);
  return buf;
}

/**
 * A struct as the kernel's getsockopt(TLS_TX / TLS_RX) gives it back. The direction's buffers are
 * copies: the caller may zero buf. Throws E_HANDOFF_STATE on an unknown version or cipher, or a
 * length that is not that cipher's struct size.
 */
export function parseCryptoInfo(buf: Buffer): { version: TlsVersion; cipher: TlsCipher; dir: KtlsDirection } {
  if (buf.length < HEADER_SIZE) throw refuse(`a kernel TLS crypto_info of ${buf.length} bytes is shorter than its ${HEADER_SIZE}-byte header`);
  const versionNum = buf.readUInt16LE(0);
  const cipherId = buf.readUInt16LE(2);
  const version = versionOf(versionNum);
  if (!version) throw refuse(`kernel TLS version 0x${versionNum.toString(16).padStart(4, '0')} is neither TLS 1.2 nor 1.3`);
  const cipher = cipherOf(cipherId);
  if (!cipher) throw refuse(`kernel TLS cipher type ${cipherId} is not one Baton moves (${Object.values(CIPHERS).map((c) => c.id).join(', ')})`);
  const c = CIPHERS[cipher];
  if (buf.length !== structSize(c)) throw refuse(`a ${cipher} crypto_info is ${structSize(c)} bytes, got ${buf.length}`, { cipher });
  let at = HEADER_SIZE;
  const take = (n: number) => Buffer.from(buf.subarray(at, (at += n)));
  const iv = take(c.iv);
  const key = take(c.key);
  const salt = take(c.salt);
  return { version, cipher, dir: { key, salt, iv, recSeq: buf.readBigUInt64BE(at) } };
}

// ---- the C side ---------------------------------------------------------------------------

const { EAGAIN, ENOENT } = os.constants.errno;
const TLS_TX = 1;
const TLS_RX = 2;
// <sys/socket.h>; Node's os.constants has no MSG_* flags.
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const STEPS = ['', 'ulp', 'tx', 'rx'] as const; // BATON_KTLS_STEP_*
const CALLS = ['', 'setsockopt(TCP_ULP, "tls")', 'setsockopt(TLS_TX)', 'setsockopt(TLS_RX)'] as const;

interface Native {
  install(fd: number, tx: Buffer, txLen: number, rx: Buffer, rxLen: number, step: Int32Array): number;
  get(fd: number, which: number, buf: Buffer, len: number): number;
  recv(fd: number, buf: Buffer, len: number, type: Int32Array, flags: number): number;
  send(fd: number, type: number, buf: Buffer, len: number, flags: number): number;
  queues(fd: number, inq: Int32Array, outq: Int32Array): number;
}

let bound: Native | undefined;

// Bound on first use through repair.ts's one loaded (and ABI-checked) library, with anonymous
// koffi types only: koffi's type names are process-wide and test isolation evaluates modules
// twice. koffi has no ssize_t: intptr_t is the same 64-bit signed integer on Linux.
function native(): Native {
  if (bound) return bound;
  const lib = libbaton();
  bound = {
    install: lib.func('baton_ktls_install', 'int', ['int', 'const uint8_t *', 'uint32_t', 'const uint8_t *', 'uint32_t', 'int *']),
    get: lib.func('baton_ktls_get', 'int', ['int', 'int', 'uint8_t *', 'uint32_t']),
    recv: lib.func('baton_ktls_recv_record', 'intptr_t', ['int', 'uint8_t *', 'size_t', 'int *', 'int']),
    send: lib.func('baton_ktls_send_record', 'intptr_t', ['int', 'int', 'const uint8_t *', 'size_t', 'int']),
    queues: lib.func('baton_ktls_queues', 'int', ['int', 'int *', 'int *']),
  } as Native;
  return bound;
}

const stepOut = new Int32Array(1);
const typeOut = new Int32Array(1);
const recvScratch = Buffer.alloc(MAX_PLAINTEXT);

function fail(errno: number, message: string, context: Record<string, unknown>): BatonError {
  const name = errnoName(errno);
  return new BatonError('E_NATIVE', `${message} failed: ${name}`, { errno, errnoName: name, ...context });
}

/**
 * Installs kernel TLS on a connected socket: the tls ULP, then the TX state, then the RX state.
 * Throws E_NATIVE naming the step (context.step 'ktls-ulp' / 'ktls-tx' / 'ktls-rx') and the errno;
 * ENOENT at the ULP step means this kernel has no kernel TLS. Not atomic: after a failure past
 * the ULP step the socket is good only for closing. The struct buffers built here are zeroed
 * after the call, whatever it returned.
 */
export function installKtls(fd: number, state: KtlsState): void {
  const c = native();
  const tx = cryptoInfo(state.version, state.cipher, state.tx);
  let rx: Buffer | undefined;
  let ret: number;
  try {
    rx = cryptoInfo(state.version, state.cipher, state.rx);
    ret = c.install(fd, tx, tx.length, rx, rx.length, stepOut);
  } finally {
    tx.fill(0);
    rx?.fill(0);
  }
  if (ret === 0) return;
  const step = stepOut[0]!;
  const errno = -ret;
  const context = { step: `ktls-${STEPS[step] ?? step}`, fd, version: state.version, cipher: state.cipher };
  if (step === 1 && errno === ENOENT) {
    // The kernel loads the module on first use only for CAP_NET_ADMIN, and only if it exists.
    const here = kernelTls();
    const why = here.available ? 'its module is installed but not loaded: `modprobe tls`' : here.how;
    throw new BatonError('E_NATIVE', `${CALLS[1]} failed: ENOENT: no kernel TLS on this node (${why})`, { errno, errnoName: 'ENOENT', ...context });
  }
  throw fail(errno, `kernel TLS install: ${CALLS[step] ?? `step ${step}`}`, context);
}

function readDirection(c: Native, fd: number, which: number): { version: TlsVersion; cipher: TlsCipher; dir: KtlsDirection } {
  const what = which === TLS_TX ? 'TLS_TX' : 'TLS_RX';
  const buf = Buffer.alloc(MAX_STRUCT_SIZE);
  try {
    // The kernel answers exactly the header's 4 bytes or exactly the cipher's struct, nothing
    // in between: the header first, to learn the cipher, then the whole struct.
    let ret = c.get(fd, which, buf, HEADER_SIZE);
    if (ret < 0) throw fail(-ret, `getsockopt(${what}, header)`, { step: 'ktls-get', fd });
    const cipher = cipherOf(buf.readUInt16LE(2));
    if (!cipher) throw refuse(`${what} holds kernel TLS cipher type ${buf.readUInt16LE(2)}, not one Baton moves`, { fd });
    const size = structSize(CIPHERS[cipher]);
    ret = c.get(fd, which, buf, size);
    if (ret < 0) throw fail(-ret, `getsockopt(${what})`, { step: 'ktls-get', fd, cipher });
    if (ret !== size) throw refuse(`getsockopt(${what}) gave ${ret} bytes of a ${size}-byte ${cipher} crypto_info`, { fd, cipher });
    return parseCryptoInfo(buf.subarray(0, size));
  } finally {
    buf.fill(0);
  }
}

/**
 * Both directions as the kernel holds them now (for a re-transfer): recSeq is the next record's,
 * iv the current one (TLS 1.2 AES-GCM advances it with every record). Throws E_NATIVE with EBUSY
 * when a direction is not installed; ENOPROTOOPT or EOPNOTSUPP (by kernel version) when the socket
 * has no kernel TLS at all.
 */
export function ktlsState(fd: number): KtlsState {
  const c = native();
  const tx = readDirection(c, fd, TLS_TX);
  const rx = readDirection(c, fd, TLS_RX);
  if (tx.version !== rx.version || tx.cipher !== rx.cipher) {
    throw refuse(`kernel TLS directions disagree: TX ${tx.version} ${tx.cipher}, RX ${rx.version} ${rx.cipher}`, { fd });
  }
  return { version: tx.version, cipher: tx.cipher, tx: tx.dir, rx: rx.dir };
}

/**
 * One record from a kernel TLS socket without blocking: its content type and plaintext (at most
 * max bytes; application data may span several records up to max), or undefined when nothing is
 * ready (EAGAIN). A non-data record (alert 21, handshake 22) always comes alone. Type 23 with no
 * bytes is the end of the stream. Throws E_NATIVE on other errors: EBADMSG means a record failed
 * authentication (the session is broken), EIO a non-data record that did not fit.
 */
export function recvRecord(fd: number, max = MAX_PLAINTEXT): { type: number; data: Buffer } | undefined {
  if (!Number.isInteger(max) || max <= 0) throw new RangeError(`recvRecord: max must be a positive integer, got ${max}`);
  const buf = max <= recvScratch.length ? recvScratch : Buffer.alloc(max);
  const ret = native().recv(fd, buf, max, typeOut, MSG_DONTWAIT);
  if (ret === -EAGAIN) return undefined;
  if (ret < 0) throw fail(-ret, 'recvmsg(TLS_GET_RECORD_TYPE)', { step: 'ktls-recv', fd });
  const data = Buffer.from(buf.subarray(0, ret));
  if (buf === recvScratch) recvScratch.fill(0, 0, ret); // plaintext lingers nowhere but in data
  return { type: typeOut[0]!, data };
}

/**
 * Sends data as records of the given content type (0 … 255; 21 for an alert such as
 * close_notify, [1, 0]) without blocking. Returns the bytes the kernel took: fewer than
 * data.length, or 0, when the socket's send buffer is full (EAGAIN). Throws E_NATIVE otherwise
 * (EINVAL for a type out of range).
 */
export function sendRecord(fd: number, type: number, data: Buffer): number {
  const ret = native().send(fd, type, data, data.length, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (ret === -EAGAIN) return 0;
  if (ret < 0) throw fail(-ret, `sendmsg(TLS_SET_RECORD_TYPE ${type})`, { step: 'ktls-send', fd });
  return ret;
}

const inqOut = new Int32Array(1);
const outqOut = new Int32Array(1);

/**
 * The TCP queues of a socket: bytes received not yet consumed (under kernel TLS: a record not yet
 * complete) and bytes sent not yet acknowledged. Throws E_NATIVE.
 */
export function tcpQueues(fd: number): { inq: number; outq: number } {
  const ret = native().queues(fd, inqOut, outqOut);
  if (ret < 0) throw fail(-ret, 'ioctl(SIOCINQ/SIOCOUTQ)', { step: 'ktls-queues', fd });
  return { inq: inqOut[0]!, outq: outqOut[0]! };
}
