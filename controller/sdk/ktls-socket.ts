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
//     (Linux takes new keys on a kernel TLS socket only from 6.14 on; the SDK does not yet), so
//     the connection ends with an internal_error alert and an E_TLS error saying why.
// And when the application ends its side, close_notify goes before the FIN, as TLS requires.
import net from 'node:net';
import { BatonError } from '../errors.js';
import type { Logger } from '../log.js';
import { recvRecord, sendRecord } from '../../native/ktls.js';
import { ContentType } from '../transfer/tls-keys.js';

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
