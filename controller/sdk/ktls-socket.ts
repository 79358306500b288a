// A transferred TLS connection, on the target: an ordinary net.Socket whose kernel decrypts what
// the client sends and encrypts what the application writes (kernel TLS, installed by batond
// before the socket came here), so the application reads and writes plaintext. The kernel hands
// application data to read() as it is; any other record (an alert, a post-handshake message) it
// gives only to a recvmsg() that asks for its type, and read() fails with EIO on it. libuv then
// gives up on the socket, so such a record ends the connection; this class reads it first, with
// its type (native/ktls.ts), to end the connection the way TLS wants:
//   - close_notify from the client: the same back, then 'end' and 'close', no error;
//   - any other alert: the connection ends with an E_TLS error naming the alert;
//   - a KeyUpdate (TLS 1.3): the client's next records are under keys this kernel is not given
//     (Debian 12's kernel cannot take new keys on a kernel TLS socket, and the target holds no
//     traffic secret to derive them from), so the connection ends with an internal_error alert
//     and an E_TLS error saying why.
// And when the application ends its side, close_notify goes before the FIN, as TLS requires.
//
// Such a connection can be handed off again (handedOffState): its keys and sequence numbers read
// back from the kernel, the plaintext it decrypted and nobody read sealed again as records. Its
// queues cannot be exported as bytes (every read of them goes through kernel TLS, repair mode
// included), so it moves only once both are empty: no record from the client half received, and
// everything sent acknowledged. A connection that does not get quiet within QUIET_TIMEOUT_MS stays.
import net from 'node:net';
import { BatonError } from '../errors.js';
import type { Logger } from '../log.js';
import { cryptoInfo, type KtlsState, ktlsState, recvRecord, sendRecord, tcpQueues } from '../../native/ktls.js';
import { ContentType } from '../transfer/tls-keys.js';
import type { TlsInfo } from '../transfer/tls-wire.js';
import { recordKeysOf, sealPeeked } from './tls-session.js';

/** How long a handoff of a transferred TLS connection waits for its queues to empty. */
export const QUIET_TIMEOUT_MS = 2_000;

/** RFC 8446 6: alert levels and the descriptions this class sends or names. */
const WARNING = 1;
const FATAL = 2;
const CLOSE_NOTIFY = 0;
const UNEXPECTED_MESSAGE = 10;
const INTERNAL_ERROR = 80;
const KEY_UPDATE = 24;

type Final = (cb: (err?: Error | null) => void) => void;

export class KtlsSocket extends net.Socket {
  private closeNotifySent = false;

  constructor(
    opts: net.SocketConstructorOpts,
    private readonly connId: string,
    private readonly log: Logger,
  ) {
    super(opts);
  }

  private get fd(): number | undefined {
    const fd = (this as unknown as { _handle?: { fd?: number } | null })._handle?.fd;
    return typeof fd === 'number' && fd >= 0 ? fd : undefined;
  }

  /** The application ended its side: close_notify first (after everything it wrote), then the FIN. */
  override _final(cb: (err?: Error | null) => void): void {
    this.alert(WARNING, CLOSE_NOTIFY);
    (net.Socket.prototype as unknown as { _final: Final })._final.call(this, cb);
  }

  override destroy(err?: Error): this {
    if (err && (err as NodeJS.ErrnoException).code === 'EIO' && (err as NodeJS.ErrnoException).syscall === 'read' && !this.destroyed) {
      const outcome = this.controlRecord();
      if (outcome === 'closed') {
        this.push(null);
        return super.destroy();
      }
      if (outcome) return super.destroy(outcome);
    }
    return super.destroy(err);
  }

  /** The record read() could not take: 'closed' for close_notify, else the error that ends the connection. */
  private controlRecord(): 'closed' | BatonError | undefined {
    const fd = this.fd;
    if (fd === undefined) return undefined;
    let rec;
    try {
      rec = recvRecord(fd);
    } catch (err) {
      return new BatonError('E_TLS', `reading a TLS record the kernel would not pass as data: ${(err as Error).message}`, { connId: this.connId });
    }
    if (!rec) return undefined;
    if (rec.type === ContentType.alert && rec.data.length === 2) {
      const [level, description] = [rec.data[0]!, rec.data[1]!];
      if (description === CLOSE_NOTIFY) {
        this.alert(WARNING, CLOSE_NOTIFY);
        return 'closed';
      }
      return new BatonError('E_TLS', `the client sent TLS alert ${description} (${level === FATAL ? 'fatal' : 'warning'})`, { connId: this.connId });
    }
    if (rec.type === ContentType.handshake && rec.data[0] === KEY_UPDATE) {
      this.alert(FATAL, INTERNAL_ERROR);
      return new BatonError('E_TLS', 'the client updated its TLS keys (KeyUpdate): kernel TLS here cannot take new keys, so the connection ends', { connId: this.connId });
    }
    this.alert(FATAL, UNEXPECTED_MESSAGE);
    return new BatonError('E_TLS', `the client sent a TLS record of type ${rec.type} that a transferred connection cannot take`, { connId: this.connId });
  }

  /** One alert record, at most one close_notify; the kernel encrypts it after everything written. */
  private alert(level: number, description: number): void {
    const fd = this.fd;
    if (fd === undefined || (description === CLOSE_NOTIFY && this.closeNotifySent)) return;
    if (description === CLOSE_NOTIFY) this.closeNotifySent = true;
    try {
      sendRecord(fd, ContentType.alert, Buffer.from([level, description]));
    } catch (err) {
      this.log.debug({ connId: this.connId, err: (err as Error).message }, 'could not send a TLS alert');
    }
  }
}

/**
 * Every plaintext byte the kernel has decrypted and not yet given out, read now (reading is
 * stopped on the socket). A record that is not data (an alert, a KeyUpdate) or the end of the
 * stream stops it: the handoff is refused, the data read so far goes back to the application.
 * (Such a record, read here, is not seen by the socket's own handling: the connection is ending.)
 */
export function drainKtls(fd: number, connId: string): { data: Buffer; error?: Error } {
  const chunks: Buffer[] = [];
  let error: Error | undefined;
  try {
    for (let rec = recvRecord(fd); rec; rec = recvRecord(fd)) {
      if (rec.type !== ContentType.application_data || rec.data.length === 0) {
        error = new BatonError('E_HANDOFF_STATE', rec.data.length === 0 ? 'the client closed the connection' : `the client sent a TLS record of type ${rec.type} just now`, { connId, step: 'prepare' });
        break;
      }
      chunks.push(rec.data);
    }
  } catch (err) {
    error = err as Error;
  }
  return { data: Buffer.concat(chunks), ...(error ? { error } : {}) };
}

/**
 * A transferred TLS connection's session for handoff(), once it is quiet: nothing half received,
 * nothing unacknowledged, nothing decrypted and unread (waited for up to QUIET_TIMEOUT_MS, reading
 * out on the way what the kernel decrypts: it is added to taken.buffered, which travels as peeked
 * plaintext and comes back to the application if the handoff fails). The state is read, then the
 * kernel asked once more: a record decrypted in between would be counted in the state and read by
 * nobody, so then it is read and the state read again.
 */
export async function quietKtls(taken: { fd: number; buffered: Buffer }, connId: string): Promise<KtlsState> {
  const deadline = Date.now() + QUIET_TIMEOUT_MS;
  for (;;) {
    const q = tcpQueues(taken.fd);
    const before = drainKtls(taken.fd, connId);
    if (before.data.length > 0) taken.buffered = Buffer.concat([taken.buffered, before.data]);
    if (before.error) throw before.error;
    if (q.inq === 0 && q.outq === 0 && before.data.length === 0) {
      const state = ktlsState(taken.fd);
      const after = drainKtls(taken.fd, connId);
      if (after.data.length > 0) taken.buffered = Buffer.concat([taken.buffered, after.data]);
      if (after.error || after.data.length > 0) wipeState(state);
      if (after.error) throw after.error;
      if (after.data.length === 0) return state;
    }
    if (Date.now() >= deadline) {
      throw new BatonError('E_HANDOFF_STATE', `a TLS connection moves only when quiet: ${q.inq} bytes of a client record received, ${q.outq} bytes sent and not acknowledged after ${QUIET_TIMEOUT_MS} ms`, { connId, step: 'prepare' });
    }
    await new Promise((r) => setTimeout(r, 2));
  }
}

/**
 * The handoff message's TLS part from the kernel's state: the suite, the kernel's structs with the
 * receive side moved back over the peeked plaintext, which goes sealed as records in replay. The
 * state's keys are wiped.
 */
export function handedOffState(state: KtlsState, peeked: Buffer, connId: string): { tls: TlsInfo; keys: Buffer; replay: Buffer } {
  try {
    const { records, first } = sealPeeked(recordKeysOf(state, state.rx), state.rx.recSeq, peeked, connId);
    const keys = Buffer.concat([cryptoInfo(state.version, state.cipher, state.tx), cryptoInfo(state.version, state.cipher, { ...state.rx, recSeq: first })]);
    return { tls: { version: state.version, cipher: state.cipher }, keys, replay: records };
  } finally {
    wipeState(state);
  }
}

function wipeState(state: KtlsState): void {
  for (const d of [state.tx, state.rx]) for (const b of [d.key, d.salt, d.iv]) b.fill(0);
}
