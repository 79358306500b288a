// Socket descriptors between an application and batond (native/fdpass.c; the protocol is in
// native/fdpass.h). Descriptors travel on Unix datagram sockets beside each process's stream
// channel to batond, one descriptor and its tag (the connection id) per datagram: to an address in
// the abstract namespace (FdSocket.open), or between the ends of a connected pair (FdSocket.pair).
// The sender sends the datagram before the stream message that names the tag, so whoever reads
// that message calls receiveAll() knowing the datagram is already queued: no polling, nothing async.
//
// Anybody in the network namespace can send to an abstract address, and fill it: an inbox that
// must hear from one sender only is connected to that sender's socket (connectTo a socket bound at
// a filesystem path, FdSocket.bindPath), and the kernel refuses everyone else (EPERM). Every
// received descriptor comes with the sender's pid as the kernel saw it: accept it only if that
// equals peerPid() of the stream channel it was announced on, and close it otherwise.
import os from 'node:os';
import { BatonError } from '../controller/errors.js';
import { errnoName } from './errno.js';
import { libbaton } from './repair.js';

const { EAGAIN, EMSGSIZE } = os.constants.errno;
const TAG_MAX = 255; // BATON_FD_TAG_MAX
const NAME_MAX = 107; // an abstract sun_path without its leading NUL

interface Native {
  open(name: Buffer, nameLen: number, bound: Buffer, boundCap: number, boundLen: Uint32Array): number;
  bindPath(path: Buffer, pathLen: number): number;
  connect(sock: number, path: Buffer, pathLen: number): number;
  pair(a: Int32Array, b: Int32Array, sndbuf: number): number;
  send(sock: number, to: Buffer, toLen: number, fd: number, tag: Buffer, tagLen: number): number;
  recv(sock: number, fdOut: Int32Array, tag: Buffer, tagCap: number, pidOut: Int32Array): number;
  peerPid(sock: number): number;
  closeFd(fd: number): number;
}

let bound: Native | undefined;

// Bound on first use, with anonymous koffi types only: koffi's type names are process-wide and
// test isolation evaluates this module twice.
function native(): Native {
  if (bound) return bound;
  const lib = libbaton();
  bound = {
    open: lib.func('baton_fdsock_open', 'int', ['const uint8_t *', 'uint32_t', 'uint8_t *', 'uint32_t', 'uint32_t *']),
    bindPath: lib.func('baton_fdsock_bind_path', 'int', ['const uint8_t *', 'uint32_t']),
    connect: lib.func('baton_fdsock_connect', 'int', ['int', 'const uint8_t *', 'uint32_t']),
    pair: lib.func('baton_fd_pair', 'int', ['int *', 'int *', 'uint32_t']),
    send: lib.func('baton_fd_send', 'int', ['int', 'const uint8_t *', 'uint32_t', 'int', 'const uint8_t *', 'uint32_t']),
    recv: lib.func('baton_fd_recv', 'int', ['int', 'int *', 'uint8_t *', 'uint32_t', 'int32_t *']),
    peerPid: lib.func('baton_peer_pid', 'int', ['int']),
    closeFd: lib.func('baton_close_fd', 'int', ['int']),
  } as Native;
  return bound;
}

// Scratch shared by every call: calls are synchronous, so one set per module instance (one per
// thread) is enough, and a send or a receive allocates nothing but the tag string.
const nameScratch = Buffer.alloc(NAME_MAX + 1);
const tagScratch = Buffer.alloc(TAG_MAX + 1);
const lenOut = new Uint32Array(1);
const fdOut = new Int32Array(1);
const pidOut = new Int32Array(1);

/**
 * str as bytes in a scratch buffer when it fits, else in a buffer of its own: the C side checks
 * the length, so a too-long string fails there with the same EINVAL as any other bad argument.
 */
function bytes(str: string, scratch: Buffer, encoding: BufferEncoding): { buf: Buffer; len: number } {
  const len = Buffer.byteLength(str, encoding);
  if (len > scratch.length) return { buf: Buffer.from(str, encoding), len };
  scratch.write(str, 0, encoding);
  return { buf: scratch, len };
}

function fail(errno: number, message: string, context: Record<string, unknown>): BatonError {
  const name = errnoName(errno);
  return new BatonError('E_NATIVE', `${message} failed: ${name}`, { errno, errnoName: name, ...context });
}

/**
 * A Unix datagram socket that carries socket descriptors: bound in the abstract namespace (open),
 * bound at a filesystem path (bindPath: a sender inboxes connect to), or one end of a connected
 * pair (pair, adopt).
 */
export class FdSocket {
  #fd: number;
  /** The bound abstract name, without the leading NUL (`ss -x` shows it as @address); '' for an end of a pair or a socket bound at a path. */
  readonly address: string;

  private constructor(fd: number, address: string) {
    this.#fd = fd;
    this.address = address;
  }

  /**
   * Opens a socket bound to the abstract name `name` (ASCII, at most 107 bytes), or to a unique
   * name the kernel picks when name is undefined or ''. Throws E_NATIVE (EADDRINUSE: the name is
   * taken in this network namespace).
   */
  static open(name?: string): FdSocket {
    const c = native();
    const { buf, len } = bytes(name ?? '', nameScratch, 'latin1');
    const out = Buffer.alloc(NAME_MAX + 1);
    const fd = c.open(buf, len, out, out.length, lenOut);
    if (fd < 0) throw fail(-fd, `socket+bind(AF_UNIX, SOCK_DGRAM, ${name ? `@${name}` : 'autobind'})`, { step: 'fdsock_open', name });
    return new FdSocket(fd, out.toString('latin1', 0, lenOut[0]));
  }

  /**
   * Opens a socket bound at the filesystem path `path` (at most 107 bytes), mode 0600: the sender
   * an inbox connects to (connectTo). Throws E_NATIVE (EADDRINUSE: the path exists).
   */
  static bindPath(path: string): FdSocket {
    const p = Buffer.from(path, 'utf8');
    const fd = native().bindPath(p, p.length);
    if (fd < 0) throw fail(-fd, `socket+bind(AF_UNIX, SOCK_DGRAM, ${path})`, { step: 'fdsock_bind', path });
    return new FdSocket(fd, '');
  }

  /**
   * A connected pair (baton_fd_pair in native/fdpass.h): no queue-length limit between its ends,
   * only the sender's send buffer, sndbuf bytes (forced with CAP_NET_ADMIN). Throws E_NATIVE.
   */
  static pair(sndbuf = 0): [FdSocket, FdSocket] {
    const a = new Int32Array(1);
    const b = new Int32Array(1);
    const ret = native().pair(a, b, sndbuf);
    if (ret < 0) throw fail(-ret, 'socketpair(AF_UNIX, SOCK_DGRAM)', { step: 'fd_pair', sndbuf });
    return [new FdSocket(a[0]!, ''), new FdSocket(b[0]!, '')];
  }

  /** An end of a pair received from another process (its descriptor is now this object's). */
  static adopt(fd: number): FdSocket {
    return new FdSocket(fd, '');
  }

  /** The socket's descriptor; -1 once closed. */
  get fd(): number {
    return this.#fd;
  }

  /**
   * Sends fd tagged with tag (1..255 bytes UTF-8) to the FdSocket bound at `to`, or with `to`
   * null to the other end of this pair, without blocking. The caller's fd stays open; the receiver gets its own descriptor of the same
   * socket. Throws E_NATIVE with the errno in the message and context: EAGAIN when the
   * receiver's queue is full (net.unix.max_dgram_qlen, 10 datagrams by default, unless the
   * receiver is connected to this socket), EPERM when the receiver is connected to another
   * socket, ECONNREFUSED when nobody is bound there, EINVAL for an empty or too long tag, EBADF for a closed fd.
   */
  send(to: string | null, fd: number, tag: string): void {
    const c = native();
    const sock = this.#open('send');
    const dest = bytes(to ?? '', nameScratch, 'latin1');
    const t = bytes(tag, tagScratch, 'utf8');
    const ret = c.send(sock, dest.buf, dest.len, fd, t.buf, t.len);
    if (ret < 0) throw fail(-ret, `sendmsg(SCM_RIGHTS) to ${to === null ? 'the other end of the pair' : `@${to}`}`, { step: 'fd_send', to, fd, tag });
  }

  /**
   * Connects this socket to the one bound at the filesystem path `path`: from then on the kernel
   * queues here only what that socket sends; anyone else's send fails with EPERM. Connecting again
   * replaces the peer. Throws E_NATIVE (ENOENT or ECONNREFUSED: nothing bound there; EACCES).
   */
  connectTo(path: string): void {
    const p = Buffer.from(path, 'utf8');
    const ret = native().connect(this.#open('connect'), p, p.length);
    if (ret < 0) throw fail(-ret, `connect(@${this.address} to ${path})`, { step: 'fdsock_connect', path });
  }

  /**
   * Every datagram queued now, in order, without blocking; [] when none. Each received fd is
   * close-on-exec and belongs to the caller, as does checking `pid`. Datagrams that were
   * truncated (payload over 256 bytes, too many descriptors) or carried no descriptor are
   * dropped, their descriptors closed, and reported as { error } entries for the caller to log.
   * A receive error other than "nothing queued" is thrown if it comes first, and otherwise ends
   * the list as an { error } entry so the descriptors already received are not lost.
   */
  receiveAll(): Array<{ fd: number; tag: string; pid: number } | { error: string }> {
    const c = native();
    const sock = this.#open('receive');
    const out: Array<{ fd: number; tag: string; pid: number } | { error: string }> = [];
    for (;;) {
      const ret = c.recv(sock, fdOut, tagScratch, tagScratch.length, pidOut);
      const pid = pidOut[0]!;
      if (ret >= 0) {
        const tag = tagScratch.toString('utf8', 0, ret);
        const fd = fdOut[0]!;
        if (fd >= 0) out.push({ fd, tag, pid });
        else out.push({ error: `datagram on @${this.address} from pid ${pid} tagged ${JSON.stringify(tag)} carried no descriptor` });
        continue;
      }
      if (ret === -EAGAIN) return out;
      if (ret === -EMSGSIZE) {
        out.push({ error: `truncated datagram on @${this.address} from pid ${pid} dropped, its descriptors closed` });
        continue;
      }
      const err = fail(-ret, `recvmsg on @${this.address}`, { step: 'fd_recv' });
      if (out.length === 0) throw err;
      out.push({ error: err.message });
      return out;
    }
  }

  /** Closes the socket; anything still queued on it is dropped and its descriptors closed by the kernel. Idempotent. */
  close(): void {
    const fd = this.#fd;
    if (fd < 0) return;
    this.#fd = -1;
    closeFd(fd);
  }

  #open(what: string): number {
    if (this.#fd < 0) throw new BatonError('E_NATIVE', `${what} on closed FdSocket @${this.address}`, { step: `fd_${what}` });
    return this.#fd;
  }
}

/**
 * The pid at the other end of a connected Unix socket (SO_PEERCRED), as of connect/accept.
 * Throws E_NATIVE (ENOTCONN when the socket has no peer credentials).
 */
export function peerPid(fd: number): number {
  const ret = native().peerPid(fd);
  if (ret < 0) throw fail(-ret, `getsockopt(SO_PEERCRED) on fd ${fd}`, { step: 'peer_pid', fd });
  return ret;
}

/** close(2) on a descriptor Node does not own (a received one). A plain close: a socket in repair mode wants closeSilently. */
export function closeFd(fd: number): void {
  const ret = native().closeFd(fd);
  if (ret < 0) throw fail(-ret, `close(${fd})`, { step: 'close', fd });
}
