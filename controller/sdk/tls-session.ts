// TLS connections a routing application can hand off. The application accepts TLS with
// acceptTls() instead of new tls.TLSSocket(): Node's TLS layer then runs over a stream the SDK
// controls (RecordTap) instead of straight on the TCP handle, so the SDK sees every record pass
// each way and follows the record layer (tls-records.ts) with the secrets Node's keylog event
// gives. At handoff() it stops the flow at a record boundary and exports what kernel TLS needs to
// continue the session on the target: the suite, each direction's keys and next sequence number.
//
//   const socket = acceptTls(raw, { secureContext });   // raw: the net.Socket the server accepted
//   socket.once('data', (request) => router.handoff(socket, target, { peeked: request }));
//
// Plaintext the application read but did not consume (peeked) goes back into the target's receive
// queue as records sealed with the client's keys at the sequence numbers just before the next
// record the client will send (they never appear on the wire; the peer link is mutual TLS), so the
// target's kernel decrypts them first, exactly as it does plain TCP's peeked bytes.
import type net from 'node:net';
import { Duplex, type Writable } from 'node:stream';
import tls from 'node:tls';
import { BatonError } from '../errors.js';
import { ContentType, MAX_PLAINTEXT, type RecordKeys, sealRecord, suiteOf, type TlsCipher, type TlsSuite, type TlsVersion } from '../transfer/tls-keys.js';
import { cryptoInfo, type KtlsDirection } from '../../native/ktls.js';
import { type DirectionState, RecordFollower, type SessionSecrets, splitRecords } from './tls-records.js';

/** Records kept per direction until the handshake completes: certificates chains fit many times. */
const MAX_HANDSHAKE_BYTES = 256 * 1024;

/**
 * Between the TCP socket and Node's TLS layer. From the client: only whole records reach TLS, so
 * that stopping the flow (hold()) leaves nothing half read inside OpenSSL; the bytes held back stay
 * here. To the client: every byte TLS writes, seen record by record on its way to the socket.
 */
class RecordTap extends Duplex {
  private inbound: Buffer = Buffer.alloc(0);
  private outbound: Buffer = Buffer.alloc(0);
  private held = false;
  private clientEnded = false;
  /** After a handoff the socket is Baton's: whatever TLS still writes (nothing, normally) is dropped. */
  private detached = false;

  constructor(
    readonly raw: net.Socket,
    private readonly fromClient: (rec: Buffer) => void,
    private readonly fromServer: (rec: Buffer) => void,
    private readonly broken: (why: string) => void,
  ) {
    super({ allowHalfOpen: true });
    raw.on('data', (b: Buffer) => {
      this.inbound = this.inbound.length === 0 ? b : Buffer.concat([this.inbound, b]);
      if (!this.held) this.release();
    });
    raw.on('end', () => {
      this.clientEnded = true;
      if (!this.held) this.release();
    });
    raw.on('error', (err) => this.destroy(err));
    raw.on('close', () => this.destroy());
  }

  /** Stops passing the client's records to TLS: what arrives from now on is kept here. */
  hold(): void {
    this.held = true;
  }

  /** The client's bytes this side of TLS (whole records and a partial one), taken: they go with the connection. */
  takeHeld(): Buffer {
    const b = this.inbound;
    this.inbound = Buffer.alloc(0);
    return b;
  }

  /** The handoff failed: bytes come back (in front of any that arrived since) and flow again. */
  unhold(bytes: Buffer): void {
    this.inbound = bytes.length === 0 ? this.inbound : Buffer.concat([bytes, this.inbound]);
    this.held = false;
    this.release();
  }

  detach(): void {
    this.detached = true;
  }

  private release(): void {
    const { records, used, broken } = splitRecords(this.inbound);
    if (broken) this.broken(`from the client: ${broken}`);
    if (used > 0) {
      for (const rec of records) this.fromClient(rec);
      const whole = this.inbound.subarray(0, used);
      this.inbound = this.inbound.subarray(used);
      if (!this.push(whole)) this.raw.pause();
    }
    // A stream that cannot be split any more goes to TLS as it is: OpenSSL answers it with an alert.
    if (broken && this.inbound.length > 0) {
      this.push(this.inbound);
      this.inbound = Buffer.alloc(0);
    }
    if (this.clientEnded && this.inbound.length === 0) this.push(null);
  }

  override _read(): void {
    if (!this.held && this.raw.isPaused()) this.raw.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.detached) return cb();
    this.outbound = this.outbound.length === 0 ? chunk : Buffer.concat([this.outbound, chunk]);
    const { records, used, broken } = splitRecords(this.outbound);
    if (broken) this.broken(`from this side: ${broken}`);
    for (const rec of records) this.fromServer(rec);
    this.outbound = broken ? Buffer.alloc(0) : this.outbound.subarray(used);
    this.raw.write(chunk, cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (!this.detached) this.raw.end();
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (!this.raw.destroyed) this.raw.destroy(err ?? undefined);
    cb(err);
  }

}

/** What kernel TLS on the target needs: the suite and each direction's keys and next sequence number. */
export interface TlsExport {
  suite: TlsSuite;
  /** This side's records (server → client). */
  tx: DirectionState;
  /** The client's records, starting with the first record of `replay`. */
  rx: DirectionState;
  /** For the target's receive queue: the peeked plaintext sealed as records, then the client's bytes held here. */
  replay: Buffer;
}

export class TlsSession {
  readonly socket: tls.TLSSocket;
  private readonly tap: RecordTap;
  private readonly secrets: SessionSecrets = {};
  private readonly fromClient = new RecordFollower('client', MAX_HANDSHAKE_BYTES);
  private readonly fromServer = new RecordFollower('server', MAX_HANDSHAKE_BYTES);
  private suite?: TlsSuite;
  private refusal?: string;

  constructor(
    readonly raw: net.Socket,
    options: Omit<tls.TLSSocketOptions, 'isServer'>,
  ) {
    this.tap = new RecordTap(
      raw,
      (rec) => this.fromClient.record(rec),
      (rec) => this.fromServer.record(rec),
      (why) => (this.refusal ??= why),
    );
    this.socket = new tls.TLSSocket(this.tap, { ...options, isServer: true });
    this.socket.on('keylog', (line: Buffer) => this.keylog(line));
    this.socket.once('secure', () => this.secured());
    this.socket.once('close', () => this.wipe());
  }

  /** Why this session could not be handed off now, or undefined. */
  whyNot(): string | undefined {
    if (this.refusal) return this.refusal;
    if (!this.suite) return 'the TLS handshake has not completed, or its suite is not one kernel TLS takes (TLS 1.2/1.3 with AES-GCM or ChaCha20-Poly1305)';
    for (const f of [this.fromClient, this.fromServer]) {
      const s = f.state();
      if ('refused' in s) return s.refused;
    }
    return undefined;
  }

  /** Stops the client's records at a record boundary (hold) or lets them flow again. */
  hold(): void {
    this.tap.hold();
  }

  takeHeld(): Buffer {
    return this.tap.takeHeld();
  }

  unhold(bytes: Buffer): void {
    this.tap.unhold(bytes);
  }

  /** Below the TLS socket, towards the client: what must have flushed before the session can go. */
  get writers(): Writable[] {
    return [this.tap, this.raw];
  }

  /**
   * The session's state once the flow is stopped and every byte written was flushed: peeked is
   * the plaintext the target reads first, held the client's bytes not yet given to TLS (from
   * takeHeld and the TCP socket's own buffer). Throws BatonError when the session cannot go.
   */
  export(peeked: Buffer, held: Buffer, connId: string): TlsExport {
    const why = this.whyNot();
    if (why) throw new BatonError('E_HANDOFF_STATE', `this TLS session cannot be handed off: ${why}`, { connId, step: 'prepare' });
    const tx = this.fromServer.state() as DirectionState;
    const rx = this.fromClient.state() as DirectionState;
    const { records, first } = sealPeeked(rx.keys, rx.seq, peeked, connId);
    return { suite: this.suite!, tx, rx: { ...rx, seq: first }, replay: Buffer.concat([records, held]) };
  }

  /**
   * What the handoff message carries: the suite, the kernel's crypto_info for each direction
   * (native/ktls.ts: the wire form of the keys, sent to batond in their own blob, never logged;
   * the caller wipes it), and the bytes for the target's receive queue.
   */
  offer(peeked: Buffer, held: Buffer, connId: string): { tls: { version: TlsVersion; cipher: TlsCipher }; keys: Buffer; replay: Buffer } {
    const { suite, tx, rx, replay } = this.export(peeked, held, connId);
    const info = [cryptoInfo(suite.version, suite.cipher, kernelDirection(suite, tx, true)), cryptoInfo(suite.version, suite.cipher, kernelDirection(suite, rx, false))];
    const keys = Buffer.concat(info);
    for (const b of info) b.fill(0);
    return { tls: { version: suite.version, cipher: suite.cipher }, keys, replay };
  }

  /** The connection is gone (handed off): nothing more is written, every key is forgotten. */
  detach(): void {
    this.tap.detach();
    this.wipe();
  }

  private secured(): void {
    // A TLS 1.2 renegotiation changes the keys in a way the followers cannot see; refuse it.
    this.socket.disableRenegotiation();
    const cipher = this.socket.getCipher();
    const suite = suiteOf(cipher.standardName ?? '', this.socket.getProtocol() ?? '');
    if (!suite) return;
    this.suite = suite;
    this.fromServer.start(suite, this.secrets);
    this.fromClient.start(suite, this.secrets, this.fromServer.serverRandom);
    // The handshake secrets are used; the traffic secrets live on in the followers.
    for (const s of Object.values(this.secrets)) s?.fill(0);
  }

  private wipe(): void {
    this.fromClient.wipe();
    this.fromServer.wipe();
    for (const s of Object.values(this.secrets)) s?.fill(0);
  }

  /**
   * One NSS key log line (label, client random, secret, all hex): parsed from its bytes, never
   * turned into a string (a JavaScript string cannot be wiped).
   */
  private keylog(line: Buffer): void {
    const fields: [number, number][] = [];
    let start = 0;
    for (let i = 0; i <= line.length; i++) {
      if (i === line.length || line[i] === 0x20 || line[i] === 0x0a) {
        if (i > start) fields.push([start, i]);
        start = i + 1;
      }
    }
    if (fields.length !== 3) return;
    const label = line.toString('latin1', fields[0]![0], fields[0]![1]);
    const secret = fromHex(line.subarray(fields[2]![0], fields[2]![1]));
    if (!secret) return;
    const key = KEYLOG_LABELS[label];
    if (!key) {
      secret.fill(0);
      return;
    }
    this.secrets[key]?.fill(0);
    this.secrets[key] = secret;
    if (key === 'master') this.secrets.clientRandom = fromHex(line.subarray(fields[1]![0], fields[1]![1]));
  }
}

const KEYLOG_LABELS: Record<string, keyof SessionSecrets> = {
  CLIENT_HANDSHAKE_TRAFFIC_SECRET: 'clientHandshake',
  SERVER_HANDSHAKE_TRAFFIC_SECRET: 'serverHandshake',
  CLIENT_TRAFFIC_SECRET_0: 'clientTraffic',
  SERVER_TRAFFIC_SECRET_0: 'serverTraffic',
  CLIENT_RANDOM: 'master',
};

function fromHex(hex: Buffer): Buffer | undefined {
  if (hex.length % 2 !== 0) return undefined;
  const out = Buffer.alloc(hex.length / 2);
  for (let i = 0; i < out.length; i++) {
    const hi = nibble(hex[2 * i]!);
    const lo = nibble(hex[2 * i + 1]!);
    if (hi < 0 || lo < 0) return undefined;
    out[i] = (hi << 4) | lo;
  }
  return out;
}

function nibble(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  return -1;
}

/**
 * One direction as kernel TLS holds it (linux/tls.h): AES-GCM splits the nonce base into a 4-byte
 * salt and 8 bytes; in TLS 1.2 those 8 are the explicit nonce each record carries (RFC 5288), which
 * the kernel sends and then increments: it starts one past the last one sent here, so no nonce is
 * used twice under a key. ChaCha20-Poly1305 takes the 12-byte base whole.
 */
function kernelDirection(suite: TlsSuite, d: DirectionState, sending: boolean): KtlsDirection {
  const { key, iv } = d.keys;
  if (suite.cipher === 'chacha20-poly1305') return { key, salt: Buffer.alloc(0), iv, recSeq: d.seq };
  if (suite.version === '1.3') return { key, salt: iv.subarray(0, 4), iv: iv.subarray(4, 12), recSeq: d.seq };
  const explicit = Buffer.alloc(8);
  explicit.writeBigUInt64BE(sending && d.lastExplicitNonce ? (d.lastExplicitNonce.readBigUInt64BE(0) + 1n) & 0xffffffffffffffffn : d.seq);
  return { key, salt: iv, iv: explicit, recSeq: d.seq };
}

/**
 * Peeked plaintext as records sealed with the client's keys, for the target's receive queue: at the
 * sequence numbers of the client's last records before next (the receive side then starts at
 * first). They must be of the current keys, so the client must have sent that many since its last
 * key change. The records never leave the peer link and the target's kernel.
 */
export function sealPeeked(keys: RecordKeys, next: bigint, peeked: Buffer, connId: string): { records: Buffer; first: bigint } {
  const count = BigInt(Math.ceil(peeked.length / MAX_PLAINTEXT));
  if (count > next) {
    throw new BatonError('E_HANDOFF_STATE', `${peeked.length} peeked bytes need ${count} records, but the client sent only ${next} under its current keys`, { connId, step: 'prepare' });
  }
  const first = next - count;
  const sealed: Buffer[] = [];
  for (let i = 0n; i < count; i++) {
    const at = Number(i) * MAX_PLAINTEXT;
    sealed.push(sealRecord(keys, first + i, ContentType.application_data, peeked.subarray(at, at + MAX_PLAINTEXT)));
  }
  return { records: Buffer.concat(sealed), first };
}

/** The record keys of one direction as kernel TLS holds it (kernelDirection's inverse). */
export function recordKeysOf(suite: Pick<TlsSuite, 'version' | 'cipher'>, d: KtlsDirection): RecordKeys {
  const full: TlsSuite = { ...suite, hash: suite.cipher === 'aes-256-gcm' ? 'sha384' : 'sha256' };
  const iv = suite.cipher === 'chacha20-poly1305' ? d.iv : suite.version === '1.3' ? Buffer.concat([d.salt, d.iv]) : d.salt;
  return { suite: full, key: d.key, iv };
}

const sessions = new WeakMap<tls.TLSSocket, TlsSession>();

/**
 * Accepts TLS as the server on a connection the routing application accepted (raw), so that
 * RouterClient.handoff() can later hand it over with its session. The options are
 * tls.TLSSocket's (secureContext, or key and cert; requestCert, ALPNProtocols, SNICallback…);
 * the TLSSocket returned is an ordinary one. Its remoteAddress is undefined (TLS runs over a
 * stream): use raw's.
 */
export function acceptTls(raw: net.Socket, options: Omit<tls.TLSSocketOptions, 'isServer'>): tls.TLSSocket {
  const session = new TlsSession(raw, options);
  sessions.set(session.socket, session);
  return session.socket;
}

export function tlsSessionOf(socket: net.Socket): TlsSession | undefined {
  return sessions.get(socket as tls.TLSSocket);
}
