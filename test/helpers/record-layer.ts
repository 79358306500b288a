// What kernel TLS does with a session's state, done in userspace for tests on kernels without it:
// given the structs a handoff sends (native/ktls.ts crypto_info, TX then RX), decrypt the client's
// records from RX's sequence number on and seal ours from TX's, exactly as the kernel would be
// told to. A session exported wrongly (a key, a nonce base, a sequence number off by one) shows
// as a record that does not open here, or one the real client refuses.
import { parseCryptoInfo } from '../../native/ktls.js';
import { ContentType, MAX_PLAINTEXT, openRecord, type RecordKeys, sealRecord } from '../../controller/transfer/tls-keys.js';
import { recordKeysOf } from '../../controller/sdk/tls-session.js';
import { splitRecords } from '../../controller/sdk/tls-records.js';

export class RecordLayer {
  private rxSeq: bigint;
  private txSeq: bigint;
  private txExplicit: bigint;
  private readonly rx: RecordKeys;
  private readonly tx: RecordKeys;
  private pending = Buffer.alloc(0);
  /** Records that were not application data, in order: [type, plaintext]. */
  readonly control: Array<[number, Buffer]> = [];

  constructor(keys: Buffer) {
    const half = keys.length / 2;
    const tx = parseCryptoInfo(keys.subarray(0, half));
    const rx = parseCryptoInfo(keys.subarray(half));
    this.tx = recordKeysOf(tx, tx.dir);
    this.rx = recordKeysOf(rx, rx.dir);
    this.txSeq = tx.dir.recSeq;
    this.rxSeq = rx.dir.recSeq;
    this.txExplicit = tx.dir.iv.length === 8 ? tx.dir.iv.readBigUInt64BE(0) : 0n;
  }

  /** The client's bytes in (the receive queue, then what follows): the application data they carry. Throws on a record that does not open. */
  receive(bytes: Buffer): Buffer {
    this.pending = Buffer.concat([this.pending, bytes]);
    const { records, used } = splitRecords(this.pending);
    this.pending = this.pending.subarray(used);
    const out: Buffer[] = [];
    for (const rec of records) {
      const opened = openRecord(this.rx, this.rxSeq, rec);
      if (!opened) throw new Error(`client record ${this.rxSeq} (${rec.length} bytes) does not open under the exported keys`);
      this.rxSeq++;
      if (opened.type === ContentType.application_data) out.push(opened.plaintext);
      else this.control.push([opened.type, opened.plaintext]);
    }
    return Buffer.concat(out);
  }

  /** Our plaintext out, as the records the kernel would send. */
  send(plaintext: Buffer, type: number = ContentType.application_data): Buffer {
    const out: Buffer[] = [];
    for (let at = 0; at < plaintext.length || (at === 0 && plaintext.length === 0); at += MAX_PLAINTEXT) {
      let explicit: Buffer | undefined;
      if (this.tx.suite.version === '1.2' && this.tx.suite.cipher !== 'chacha20-poly1305') {
        explicit = Buffer.alloc(8);
        explicit.writeBigUInt64BE(this.txExplicit++);
      }
      out.push(sealRecord(this.tx, this.txSeq++, type, plaintext.subarray(at, at + MAX_PLAINTEXT), explicit));
      if (plaintext.length === 0) break;
    }
    return Buffer.concat(out);
  }
}
