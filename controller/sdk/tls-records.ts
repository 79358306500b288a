// The record layer of one direction of a TLS session, followed from outside. Node runs TLS in
// OpenSSL and tells JavaScript neither the record sequence numbers nor which key protects which
// record; kernel TLS needs both to take the session over. So the SDK sees every record pass
// (tls-session.ts puts Node's TLS layer over a stream it controls) and follows each direction here:
// which epoch (handshake, application traffic secret N) each record belongs to and its sequence
// number in that epoch. TLS 1.3 records all look alike on the wire (RFC 8446 5.2), so each one is
// decrypted with the keys Node gave through its keylog event: that tells the handshake epoch from
// the application one and shows a KeyUpdate, after which the keys change. TLS 1.2 records after a
// side's ChangeCipherSpec are simply counted (RFC 5246 6.1: the sequence number restarts at 0 there).
import { ContentType, MAX_BODY, openRecord, RECORD_HEADER, type RecordKeys, tls12KeyBlock, tls13NextSecret, tls13TrafficKeys, type TlsSuite } from '../transfer/tls-keys.js';

/** The stream is split before the version is known: by the larger bound, TLS 1.2's. */
const MAX_RECORD_BODY = MAX_BODY['1.2'];
/** Handshake message types this follower reads (RFC 8446 4). */
const SERVER_HELLO = 2;
const KEY_UPDATE = 24;

/**
 * Splits a byte stream into whole TLS records. Returns the whole records found in `bytes` (a
 * prefix) and the length they take; the rest is a record not yet complete. A header announcing a
 * body longer than any TLS record is a protocol violation: `broken` says so (OpenSSL will refuse
 * the stream too; the follower stops following).
 */
export function splitRecords(bytes: Buffer): { records: Buffer[]; used: number; broken?: string } {
  const records: Buffer[] = [];
  let at = 0;
  while (bytes.length - at >= RECORD_HEADER) {
    const len = bytes.readUInt16BE(at + 3);
    if (len > MAX_RECORD_BODY) return { records, used: at, broken: `a record announces ${len} bytes (at most ${MAX_RECORD_BODY})` };
    if (bytes.length - at < RECORD_HEADER + len) break;
    records.push(bytes.subarray(at, at + RECORD_HEADER + len));
    at += RECORD_HEADER + len;
  }
  return { records, used: at };
}

/** The secrets of one session as the keylog event gave them (tls-session.ts collects them). */
export interface SessionSecrets {
  /** TLS 1.3, per direction: the handshake and first application traffic secrets. */
  clientHandshake?: Buffer;
  serverHandshake?: Buffer;
  clientTraffic?: Buffer;
  serverTraffic?: Buffer;
  /** TLS 1.2: the master secret and the client's random (from the keylog line). */
  master?: Buffer;
  clientRandom?: Buffer;
}

/** Where one direction stands: what kernel TLS needs to continue it. */
export interface DirectionState {
  keys: RecordKeys;
  /** Sequence number of the next record in this direction. */
  seq: bigint;
  /** TLS 1.2 AES-GCM: the explicit nonce of the last record sent (the next must differ). */
  lastExplicitNonce?: Buffer;
}

/**
 * One direction. Records are given in order with record(); before the handshake completes
 * (the suite and every secret known) they are kept, then followed all at once by start().
 */
export class RecordFollower {
  private early: Buffer[] = [];
  private earlyBytes = 0;
  private suite?: TlsSuite;
  /** TLS 1.3: 'handshake' until the first record under the application keys; TLS 1.2: 'plain' until ChangeCipherSpec. */
  private epoch: 'plain' | 'handshake' | 'application' = 'plain';
  private handshakeKeys?: RecordKeys;
  private trafficSecret?: Buffer;
  private keys?: RecordKeys;
  private seq = 0n;
  private lastExplicitNonce?: Buffer;
  /** TLS 1.3: whether an encrypted record passed (Hello messages and alerts before it are in the clear). */
  private sawEncrypted = false;
  /** Why this direction can no longer be followed (then the connection cannot be handed off). */
  lost?: string;
  /** TLS 1.2, server → client: the ServerHello's random, read on the way. */
  serverRandom?: Buffer;

  constructor(
    /** 'client' for records from the client (the server's receive side), 'server' for ours. */
    readonly from: 'client' | 'server',
    /** Records kept until the handshake completes, at most this many bytes (a handshake is a few KiB). */
    private readonly maxEarlyBytes: number,
  ) {}

  record(rec: Buffer): void {
    if (this.lost) return;
    if (!this.suite) {
      if (this.earlyBytes + rec.length > this.maxEarlyBytes) return this.lose(`more than ${this.maxEarlyBytes} bytes of records before the handshake completed`);
      this.early.push(rec);
      this.earlyBytes += rec.length;
      if (this.from === 'server' && !this.serverRandom) this.readServerRandom(rec);
      return;
    }
    if (this.suite.version === '1.3') this.follow13(rec);
    else this.follow12(rec);
  }

  /**
   * The handshake is complete: the suite and secrets are known. The records kept so far are
   * followed now, then every later one as it passes. TLS 1.2 needs the server random, which the
   * server side read from its ServerHello: tls-session.ts passes it to the client side.
   */
  start(suite: TlsSuite, secrets: SessionSecrets, serverRandom?: Buffer): void {
    if (this.lost || this.suite) return;
    this.suite = suite;
    if (suite.version === '1.3') {
      const hs = this.from === 'client' ? secrets.clientHandshake : secrets.serverHandshake;
      const traffic = this.from === 'client' ? secrets.clientTraffic : secrets.serverTraffic;
      if (!hs || !traffic) return this.lose('the TLS 1.3 traffic secrets were not logged');
      this.handshakeKeys = { suite, ...tls13TrafficKeys(suite, hs) };
      this.trafficSecret = Buffer.from(traffic);
      this.keys = { suite, ...tls13TrafficKeys(suite, traffic) };
      this.epoch = 'handshake';
    } else {
      const random = serverRandom ?? this.serverRandom;
      if (!secrets.master || !secrets.clientRandom || !random) return this.lose('the TLS 1.2 master secret or a random is missing');
      const block = tls12KeyBlock(suite, secrets.master, secrets.clientRandom, random);
      this.keys = { suite, ...block[this.from] };
      const other = block[this.from === 'client' ? 'server' : 'client'];
      other.key.fill(0);
      other.iv.fill(0);
    }
    const early = this.early;
    this.early = [];
    this.earlyBytes = 0;
    for (const rec of early) this.record(rec);
  }

  /** Where this direction stands, or why it cannot be continued elsewhere. */
  state(): DirectionState | { refused: string } {
    if (this.lost) return { refused: this.lost };
    if (!this.suite || !this.keys) return { refused: 'the TLS handshake has not completed' };
    if (this.epoch !== 'application') return { refused: `the ${this.from}'s records are not yet under the session's traffic keys` };
    return { keys: this.keys, seq: this.seq, ...(this.lastExplicitNonce ? { lastExplicitNonce: this.lastExplicitNonce } : {}) };
  }

  /** Forget every key (the session is handed off, or over). */
  wipe(): void {
    for (const b of [this.handshakeKeys?.key, this.handshakeKeys?.iv, this.keys?.key, this.keys?.iv, this.trafficSecret]) b?.fill(0);
    this.handshakeKeys = undefined;
    this.keys = undefined;
    this.trafficSecret = undefined;
    this.early = [];
    this.lost ??= 'the session keys were wiped';
  }

  private lose(why: string): void {
    this.lost = why;
    this.early = [];
  }

  private follow13(rec: Buffer): void {
    const type = rec[0];
    // ChangeCipherSpec is sent in the clear for middleboxes' sake and has no sequence number;
    // before the first encrypted record, Hello messages and alerts are in the clear too.
    if (type === ContentType.change_cipher_spec) return;
    if (type !== ContentType.application_data) {
      if (!this.sawEncrypted) return;
      return this.lose(`a plaintext record of type ${type} after encryption began`);
    }
    this.sawEncrypted = true;
    if (this.epoch === 'handshake') {
      if (this.handshakeKeys && openRecord(this.handshakeKeys, this.seq, rec)) {
        this.seq++;
        return;
      }
      // The first record that the handshake keys do not open must be the first of the
      // application epoch (sequence numbers restart at 0, RFC 8446 5.3).
      this.epoch = 'application';
      this.seq = 0n;
      this.handshakeKeys?.key.fill(0);
      this.handshakeKeys?.iv.fill(0);
      this.handshakeKeys = undefined;
    }
    const opened = openRecord(this.keys!, this.seq, rec);
    if (!opened) return this.lose(`record ${this.seq} of the ${this.from} did not decrypt under the expected keys`);
    this.seq++;
    if (opened.type === ContentType.handshake && endsWithKeyUpdate(opened.plaintext)) {
      // RFC 8446 4.6.3: the next record in this direction is under the next traffic secret, from 0.
      const next = tls13NextSecret(this.suite!.hash, this.trafficSecret!);
      this.wipeKeys();
      this.trafficSecret = next;
      this.keys = { suite: this.suite!, ...tls13TrafficKeys(this.suite!, next) };
      this.seq = 0n;
    }
  }

  private follow12(rec: Buffer): void {
    const type = rec[0];
    if (this.epoch === 'plain') {
      if (type === ContentType.change_cipher_spec) {
        this.epoch = 'application';
        this.seq = 0n;
      }
      return;
    }
    // After ChangeCipherSpec: Finished (seq 0), then application data and alerts. Anything that
    // changes the keys again (a renegotiation: a handshake message after Finished, another
    // ChangeCipherSpec) cannot be followed without decrypting: the connection stays here.
    if (type === ContentType.change_cipher_spec || (type === ContentType.handshake && this.seq > 0n)) {
      return this.lose('a TLS 1.2 renegotiation began');
    }
    if (this.suite!.cipher !== 'chacha20-poly1305' && rec.length >= RECORD_HEADER + 8) this.lastExplicitNonce = Buffer.from(rec.subarray(RECORD_HEADER, RECORD_HEADER + 8));
    this.seq++;
  }

  private wipeKeys(): void {
    this.keys?.key.fill(0);
    this.keys?.iv.fill(0);
    this.trafficSecret?.fill(0);
  }

  private readServerRandom(rec: Buffer): void {
    // ServerHello: record header (5), handshake type (1) and length (3), legacy_version (2), random (32).
    if (rec[0] === ContentType.handshake && rec.length >= RECORD_HEADER + 4 + 2 + 32 && rec[RECORD_HEADER] === SERVER_HELLO) {
      this.serverRandom = Buffer.from(rec.subarray(RECORD_HEADER + 6, RECORD_HEADER + 6 + 32));
    }
  }
}

/**
 * Whether a decrypted handshake record ends with a KeyUpdate (RFC 8446 4.6.3: it must be the last
 * message of its record, since the keys change after it). Walks the record's messages.
 */
function endsWithKeyUpdate(plaintext: Buffer): boolean {
  let at = 0;
  let last = -1;
  while (plaintext.length - at >= 4) {
    last = plaintext[at]!;
    at += 4 + plaintext.readUIntBE(at + 1, 3);
  }
  return last === KEY_UPDATE;
}
