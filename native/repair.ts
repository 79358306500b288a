// TCP_REPAIR export and import through build/native/libbaton.so (native/repair.c; the call
// order is documented in native/repair.h). Each function below is one FFI call, or two for a
// snapshot, so a whole export or import costs one crossing plus its syscalls.
//
// A handoff: exportSnapshot → importConnection (target, stays in repair mode) → freeze →
// exportDelta → appendSent + appendReceived (target) → route → goLive, write the unsent tail →
// close the original (destroy() in repair mode, or closeSilently). leaveRepair rolls back.
//
// TcpConnectionState is THE definition of a connection in flight: the transfer protocol
// serialises exactly it, the target rebuilds the socket from exactly it.
//
// Every function is synchronous and throws BatonError('E_NATIVE') naming the kernel call that
// failed and its errno ("TCP_REPAIR_QUEUE(recv) failed: EPERM"). Needs CAP_NET_ADMIN.
import type net from 'node:net';
import os from 'node:os';
import koffi from 'koffi';
import { BatonError } from '../controller/errors.js';
import { errnoName } from './errno.js';
import { buildPath } from '../controller/paths.js';
import { addressToBytes, bytesToAddress } from '../controller/flow.js';

export interface TcpEndpoint {
  address: string;
  port: number;
}

export interface TcpConnectionState {
  family: 4 | 6;
  local: TcpEndpoint; // the DVIPA side
  remote: TcpEndpoint; // the client
  sendSeq: number; // seq of the first byte of sendQueue
  recvSeq: number; // seq of the first byte of recvQueue
  sendQueue: Buffer; // whole send queue: sent-but-unacked, then unsent
  unsentLength: number; // trailing bytes of sendQueue never transmitted
  recvQueue: Buffer; // received, not yet read by the application
  mss: number;
  options: { timestamps: boolean; sack: boolean; windowScale: boolean };
  sndWscale: number;
  rcvWscale: number;
  timestamp: number; // TCP_TIMESTAMP clock at export
  window: { sndWl1: number; sndWnd: number; maxWindow: number; rcvWnd: number; rcvWup: number };
}

export interface ImportOptions {
  /**
   * Bytes the routing application already took from the kernel (so they are no longer in
   * recvQueue) that the target application must read first: they go into the new socket's
   * receive queue in front of recvQueue, starting at recvSeq - prepend.length.
   */
  prepend?: Buffer;
}

// ---- the C side ------------------------------------------------------------------------

const ABI_VERSION = 10;
const OPT_TIMESTAMPS = 1;
const OPT_SACK = 2;
const OPT_WSCALE = 4;
const { ENOBUFS } = os.constants.errno;

/** struct baton_tcp_state, field for field (native/repair.h). */
interface RawState {
  family: number;
  options: number;
  snd_wscale: number;
  rcv_wscale: number;
  local_port: number;
  remote_port: number;
  local_addr: Uint8Array;
  remote_addr: Uint8Array;
  send_seq: number;
  send_len: number;
  unsent_len: number;
  recv_seq: number;
  recv_len: number;
  mss: number;
  timestamp: number;
  snd_wl1: number;
  snd_wnd: number;
  max_window: number;
  rcv_wnd: number;
  rcv_wup: number;
}

// The struct crosses as a plain byte buffer read and written at koffi-computed offsets: koffi's
// own struct conversion cost ~7 µs per export, as much as the syscalls. Anonymous koffi
// types, since koffi's type names are process-wide and test isolation evaluates modules twice.
const ADDR = koffi.array('uint8_t', 16);
const STATE_TYPES: { [K in keyof RawState]: 'uint8_t' | 'uint16_t' | 'uint32_t' | typeof ADDR } = {
  family: 'uint8_t',
  options: 'uint8_t',
  snd_wscale: 'uint8_t',
  rcv_wscale: 'uint8_t',
  local_port: 'uint16_t',
  remote_port: 'uint16_t',
  local_addr: ADDR,
  remote_addr: ADDR,
  send_seq: 'uint32_t',
  send_len: 'uint32_t',
  unsent_len: 'uint32_t',
  recv_seq: 'uint32_t',
  recv_len: 'uint32_t',
  mss: 'uint32_t',
  timestamp: 'uint32_t',
  snd_wl1: 'uint32_t',
  snd_wnd: 'uint32_t',
  max_window: 'uint32_t',
  rcv_wnd: 'uint32_t',
  rcv_wup: 'uint32_t',
};
const STATE = koffi.struct(STATE_TYPES);
const STATE_SIZE = koffi.sizeof(STATE);
const STATE_LAYOUT = (Object.keys(STATE_TYPES) as (keyof RawState)[]).map((name) => ({
  name,
  type: STATE_TYPES[name],
  offset: koffi.offsetof(STATE, name),
}));

// Host byte order is little-endian on every platform Baton runs on (x86-64, arm64).
export function decodeRawState(buf: Buffer): RawState {
  const out: Record<string, number | Uint8Array> = {};
  for (const { name, type, offset } of STATE_LAYOUT) {
    if (type === 'uint8_t') out[name] = buf.readUInt8(offset);
    else if (type === 'uint16_t') out[name] = buf.readUInt16LE(offset);
    else if (type === 'uint32_t') out[name] = buf.readUInt32LE(offset);
    else out[name] = new Uint8Array(buf.subarray(offset, offset + 16));
  }
  return out as unknown as RawState;
}

export function encodeRawState(raw: RawState, buf: Buffer = Buffer.alloc(STATE_SIZE)): Buffer {
  for (const { name, type, offset } of STATE_LAYOUT) {
    const v = raw[name];
    if (typeof v !== 'number') buf.set(v, offset);
    else if (type === 'uint8_t') buf.writeUInt8(v, offset);
    else if (type === 'uint16_t') buf.writeUInt16LE(v, offset);
    else buf.writeUInt32LE(v >>> 0, offset);
  }
  return buf;
}

interface Native {
  lastStep(): string;
  exportBegin(fd: number, st: Buffer): number;
  exportQueues(fd: number, st: Buffer, sendq: Buffer | null, sendCap: number, recvq: Buffer | null, recvCap: number): number;
  exportDelta(fd: number, recvSeq: number, recvLenKnown: number, buf: Buffer | null, cap: number, deltaLen: Uint32Array, unsentLen: Uint32Array, window: Uint32Array): number;
  repairOff(fd: number): number;
  import(st: Buffer, sendq: Buffer | null, recvq: Buffer | null, fdOut: Int32Array): number;
  appendRecv(fd: number, buf: Buffer, len: number): number;
  appendSent(fd: number, buf: Buffer, len: number): number;
  setWindow(fd: number, window: Uint32Array): number;
  goLive(fd: number, timestamp: Uint32Array | null): number;
  timestamp(fd: number, out: Uint32Array): number;
  quietClock(fd: number, rcvNxt: number, out: Uint32Array): number;
  closeSilently(fd: number): number;
  dup(fd: number): number;
  socketCheck(fd: number, out: Buffer): number;
  setIdle(fd: number, idle: Uint32Array): number;
}

let loaded: Native | undefined;
let library: ReturnType<typeof koffi.load> | undefined;
const libraryPath = buildPath('native', 'libbaton.so');

/**
 * build/native/libbaton.so (every native/*.c), loaded once per process and checked against this
 * build before anything binds a function of it (here, fdpass.ts, diag.ts): a library older than
 * the TypeScript would otherwise fail on the first function it lacks, or worse, on one whose
 * arguments changed.
 */
export function libbaton(): ReturnType<typeof koffi.load> {
  if (library) return library;
  let lib: ReturnType<typeof koffi.load>;
  let abi: number | undefined;
  let stateSize: number | undefined;
  try {
    lib = koffi.load(libraryPath);
    abi = lib.func('baton_abi_version', 'uint32_t', [])() as number;
    stateSize = lib.func('baton_state_size', 'uint32_t', [])() as number;
  } catch (err) {
    throw new BatonError('E_NATIVE', `cannot load ${libraryPath} (run \`make native\`): ${(err as Error).message}`, { step: 'load' }, { cause: err });
  }
  if (abi !== ABI_VERSION || stateSize !== STATE_SIZE) {
    throw new BatonError(
      'E_NATIVE',
      `${libraryPath} does not match this build (ABI ${abi}, state ${stateSize} bytes; expected ${ABI_VERSION}, ${STATE_SIZE}): run \`make native\``,
      { step: 'load' },
    );
  }
  library = lib;
  return library;
}

function native(): Native {
  if (loaded) return loaded;
  const lib = libbaton();
  const c = {
    lastStep: lib.func('baton_last_step', 'const char *', []),
    exportBegin: lib.func('baton_export_begin', 'int', ['int', 'uint8_t *']),
    exportQueues: lib.func('baton_export_queues', 'int', ['int', 'uint8_t *', 'uint8_t *', 'uint32_t', 'uint8_t *', 'uint32_t']),
    exportDelta: lib.func('baton_export_delta', 'int', ['int', 'uint32_t', 'uint32_t', 'uint8_t *', 'uint32_t', 'uint32_t *', 'uint32_t *', 'uint32_t *']),
    repairOff: lib.func('baton_repair_off', 'int', ['int']),
    import: lib.func('baton_import', 'int', ['const uint8_t *', 'const uint8_t *', 'const uint8_t *', 'int *']),
    appendRecv: lib.func('baton_import_append_recv', 'int', ['int', 'const uint8_t *', 'uint32_t']),
    appendSent: lib.func('baton_import_append_sent', 'int', ['int', 'const uint8_t *', 'uint32_t']),
    setWindow: lib.func('baton_import_set_window', 'int', ['int', 'const uint32_t *']),
    goLive: lib.func('baton_go_live', 'int', ['int', 'const uint32_t *']),
    timestamp: lib.func('baton_timestamp', 'int', ['int', 'uint32_t *']),
    quietClock: lib.func('baton_quiet_clock', 'int', ['int', 'uint32_t', 'uint32_t *']),
    closeSilently: lib.func('baton_close_silently', 'int', ['int']),
    dup: lib.func('baton_dup', 'int', ['int']),
    socketCheck: lib.func('baton_socket_check', 'int', ['int', 'uint8_t *']),
    setIdle: lib.func('baton_set_idle', 'int', ['int', 'const uint32_t *']),
  } as Native;
  loaded = c;
  return c;
}

/**
 * Loads libbaton.so now rather than on the first export or import (~0.2–3 ms: dlopen, symbol
 * binding, ABI check), so a daemon pays it at start-up and not inside its first handoff.
 */
export function loadNative(): void {
  native();
}


/** Throws for a negative (-errno) return, naming the step the C side recorded. */
function check(ret: number, call: string, context: Record<string, unknown> = {}): number {
  if (ret >= 0) return ret;
  const errno = -ret;
  const step = native().lastStep() || call;
  throw new BatonError('E_NATIVE', `${step} failed: ${errnoName(errno)}`, { step, errno, errnoName: errnoName(errno), call, ...context });
}

// ---- the state struct (addresses: controller/flow.ts) ------------------------------------

function stateFromRaw(st: RawState, sendQueue: Buffer, recvQueue: Buffer): TcpConnectionState {
  const family = st.family === 6 ? 6 : 4;
  return {
    family,
    local: { address: bytesToAddress(family, st.local_addr), port: st.local_port },
    remote: { address: bytesToAddress(family, st.remote_addr), port: st.remote_port },
    sendSeq: st.send_seq,
    recvSeq: st.recv_seq,
    sendQueue,
    unsentLength: st.unsent_len,
    recvQueue,
    mss: st.mss,
    options: {
      timestamps: (st.options & OPT_TIMESTAMPS) !== 0,
      sack: (st.options & OPT_SACK) !== 0,
      windowScale: (st.options & OPT_WSCALE) !== 0,
    },
    sndWscale: st.snd_wscale,
    rcvWscale: st.rcv_wscale,
    timestamp: st.timestamp,
    window: { sndWl1: st.snd_wl1, sndWnd: st.snd_wnd, maxWindow: st.max_window, rcvWnd: st.rcv_wnd, rcvWup: st.rcv_wup },
  };
}

/**
 * The struct baton_import takes, with `prepend` folded into the receive queue: its first byte
 * moves back by prepend.length (mod 2^32), so the kernel's rcv_nxt stays where the client
 * expects it. Returns the receive bytes to pass along with it.
 */
export function rawForImport(state: TcpConnectionState, prepend: Buffer = Buffer.alloc(0)): { raw: RawState; recv: Buffer } {
  if (state.family !== 4 && state.family !== 6) throw new BatonError('E_NATIVE', `bad family ${String(state.family)}`, { step: 'state' });
  if (state.unsentLength < 0 || state.unsentLength > state.sendQueue.length) {
    throw new BatonError('E_NATIVE', `unsentLength ${state.unsentLength} outside the ${state.sendQueue.length}-byte send queue`, { step: 'state' });
  }
  const recv = prepend.length > 0 ? Buffer.concat([prepend, state.recvQueue]) : state.recvQueue;
  const options =
    (state.options.timestamps ? OPT_TIMESTAMPS : 0) | (state.options.sack ? OPT_SACK : 0) | (state.options.windowScale ? OPT_WSCALE : 0);
  const raw: RawState = {
    family: state.family,
    options,
    snd_wscale: state.sndWscale,
    rcv_wscale: state.rcvWscale,
    local_port: state.local.port,
    remote_port: state.remote.port,
    local_addr: addressToBytes(state.family, state.local.address, 'local address'),
    remote_addr: addressToBytes(state.family, state.remote.address, 'remote address'),
    send_seq: state.sendSeq >>> 0,
    send_len: state.sendQueue.length,
    unsent_len: state.unsentLength,
    recv_seq: (state.recvSeq - prepend.length) >>> 0,
    recv_len: recv.length,
    mss: state.mss,
    timestamp: state.timestamp >>> 0,
    snd_wl1: state.window.sndWl1 >>> 0,
    snd_wnd: state.window.sndWnd,
    max_window: state.window.maxWindow,
    rcv_wnd: state.window.rcvWnd,
    rcv_wup: state.window.rcvWup >>> 0,
  };
  return { raw, recv };
}

const orNull = (b: Buffer) => (b.length > 0 ? b : null);

// ---- export ----------------------------------------------------------------------------

/**
 * Puts the socket in repair mode (it no longer answers what it receives, but keeps receiving,
 * and still sends queued data if the client opens its window: see exportDelta) and
 * returns its state and both queues. The fd stays in repair mode: follow with
 * exportDelta, then destroy/closeSilently, or leaveRepair to roll back. A Node-owned socket
 * must have its handle's reads stopped first (pause() is not enough). On failure the socket
 * is back out of repair mode.
 */
export function exportSnapshot(fd: number): TcpConnectionState {
  const c = native();
  const st = Buffer.alloc(STATE_SIZE);
  check(c.exportBegin(fd, st), 'baton_export_begin', { fd });
  try {
    let raw = decodeRawState(st);
    let send = Buffer.allocUnsafe(raw.send_len);
    const recv = Buffer.allocUnsafe(raw.recv_len);
    for (;;) {
      const ret = c.exportQueues(fd, st, orNull(send), send.length, orNull(recv), recv.length);
      raw = decodeRawState(st);
      // The peek found a partly acknowledged segment, readable only whole: take it all.
      if (ret === -ENOBUFS && raw.send_len > send.length) {
        send = Buffer.allocUnsafe(raw.send_len);
        continue;
      }
      check(ret, 'baton_export_queues', { fd });
      break;
    }
    return stateFromRaw(raw, send.subarray(0, raw.send_len), recv);
  } catch (err) {
    c.repairOff(fd);
    throw err;
  }
}

let deltaScratch = Buffer.allocUnsafe(64 * 1024);

/** What changed on the exported socket between the snapshot and the freeze. */
export interface ExportDelta {
  /** Bytes that reached the receive queue after snapshot.recvQueue: append them on the target. */
  received: Buffer;
  /**
   * The unsent tail now. Repair mode does not stop transmission: when the client opened its
   * window the kernel went on sending. The first snapshot.unsentLength - unsentLength bytes of
   * the snapshot's unsent tail are now in flight: appendSent() them on the target.
   */
  unsentLength: number;
  /** The socket's window at the freeze: newer than the snapshot's; setWindow() it on the target. */
  window: TcpConnectionState['window'];
}

/**
 * Reads what changed since the snapshot (the socket is still in repair mode and nobody reads
 * it, so new bytes sit right behind snapshot.recvQueue). Call after the flow is frozen, so
 * nothing more can arrive and no window update can release more of the send queue.
 */
export function exportDelta(fd: number, snapshot: TcpConnectionState): ExportDelta {
  const c = native();
  const len = new Uint32Array(1);
  const unsent = new Uint32Array(1);
  const win = new Uint32Array(5);
  for (;;) {
    const ret = c.exportDelta(fd, snapshot.recvSeq >>> 0, snapshot.recvQueue.length, deltaScratch, deltaScratch.length, len, unsent, win);
    if (ret === -ENOBUFS && len[0]! > deltaScratch.length) {
      deltaScratch = Buffer.allocUnsafe(len[0]!);
      continue;
    }
    check(ret, 'baton_export_delta', { fd });
    if (unsent[0]! > snapshot.unsentLength) {
      throw new BatonError('E_NATIVE', `unsent tail grew from ${snapshot.unsentLength} to ${unsent[0]} bytes since the snapshot: someone wrote to the socket`, {
        step: 'baton_export_delta',
        fd,
      });
    }
    const [sndWl1, sndWnd, maxWindow, rcvWnd, rcvWup] = win as unknown as [number, number, number, number, number];
    return { received: Buffer.from(deltaScratch.subarray(0, len[0]!)), unsentLength: unsent[0]!, window: { sndWl1, sndWnd, maxWindow, rcvWnd, rcvWup } };
  }
}

/** Rollback: the original socket leaves repair mode and carries on; bytes that arrived meanwhile are delivered. */
export function leaveRepair(fd: number): void {
  check(native().repairOff(fd), 'baton_repair_off', { fd });
}

// ---- import ----------------------------------------------------------------------------

/**
 * Rebuilds the connection on a new socket in this thread's network namespace and returns its
 * fd, still in repair mode: it holds the connection but says nothing until goLive. The local
 * address must be configured here; a LISTEN socket on the same address and port is fine.
 * The unsent tail of state.sendQueue is NOT queued: write it after goLive, before anything else.
 */
export function importConnection(state: TcpConnectionState, opts: ImportOptions = {}): number {
  const c = native();
  const { raw, recv } = rawForImport(state, opts.prepend);
  const fdOut = new Int32Array([-1]);
  check(c.import(encodeRawState(raw), orNull(state.sendQueue), orNull(recv), fdOut), 'baton_import', {
    local: `${state.local.address}:${state.local.port}`,
    remote: `${state.remote.address}:${state.remote.port}`,
  });
  return fdOut[0]!;
}

/** Appends the export delta to the receive queue of a socket still in repair mode. */
export function appendReceived(fd: number, bytes: Buffer): void {
  if (bytes.length === 0) return;
  check(native().appendRecv(fd, bytes, bytes.length), 'baton_import_append_recv', { fd });
}

/**
 * Appends bytes to the sent part of the send queue of a socket still in repair mode: the
 * first snapshot.unsentLength - delta.unsentLength bytes of the snapshot's unsent tail, which
 * the old socket transmitted after the snapshot. Then only the rest is written after goLive.
 */
export function appendSent(fd: number, bytes: Buffer): void {
  if (bytes.length === 0) return;
  check(native().appendSent(fd, bytes, bytes.length), 'baton_import_append_sent', { fd });
}

/**
 * Sets the window of a socket still in repair mode, after its queues are complete: the one the
 * old socket saw at the freeze (exportDelta().window), which is newer than the snapshot's.
 */
export function setWindow(fd: number, window: TcpConnectionState['window']): void {
  const w = Uint32Array.of(window.sndWl1, window.sndWnd, window.maxWindow, window.rcvWnd, window.rcvWup);
  check(native().setWindow(fd, w), 'baton_import_set_window', { fd });
}

/**
 * Leaves repair mode: the kernel sends a window probe and the connection is live. Only once the
 * route points here, or the peer's answer reaches a node with no socket for it. Hand the fd to
 * Node afterwards with `new net.Socket({ fd })`. timestamp: the old socket's clock when it was
 * closed (socketTimestamp), so the stamps this socket sends continue that sequence (see
 * baton_go_live in native/repair.h).
 */
export function goLive(fd: number, timestamp?: number): void {
  check(native().goLive(fd, timestamp === undefined ? null : Uint32Array.of(timestamp >>> 0)), 'baton_go_live', { fd });
}

/** How long a reinstated connection may sit idle or stuck (struct baton_idle); 0 turns a part off. */
export interface IdleBounds {
  keepaliveIdleS: number;
  keepaliveIntervalS: number;
  keepaliveProbes: number;
  userTimeoutS: number;
}

/** Sets the idle bounds on a socket (keepalive probes, TCP_USER_TIMEOUT): before it goes live. */
export function setIdleBounds(fd: number, idle: IdleBounds): void {
  const b = Uint32Array.of(idle.keepaliveIdleS, idle.keepaliveIntervalS, idle.keepaliveProbes, idle.userTimeoutS * 1000);
  check(native().setIdle(fd, b), 'baton_set_idle', { fd });
}

/** The socket's TCP timestamp clock now: read just before closing a handed-off socket. */
export function socketTimestamp(fd: number): number {
  const out = new Uint32Array(1);
  check(native().timestamp(fd, out), 'baton_timestamp', { fd });
  return out[0]!;
}

/**
 * The clock of an old socket in repair mode if it can send nothing more by itself (nothing in its
 * send queue, no keepalive, everything received acknowledged: a due delayed ACK is sent now), so
 * the reading is final without waiting for its close; undefined when it still might send. rcvNxt:
 * the sequence number after the last byte received (receive queue start + length, delta included).
 * See baton_quiet_clock in native/repair.h.
 */
export function quietClock(fd: number, rcvNxt: number): number | undefined {
  const out = new Uint32Array(1);
  const ret = native().quietClock(fd, rcvNxt >>> 0, out);
  if (ret === -os.constants.errno.EBUSY) return undefined;
  check(ret, 'baton_quiet_clock', { fd });
  return out[0]!;
}

/** Closes without a FIN or RST (repair mode on, then close). On failure the fd stays open. */
export function closeSilently(fd: number): void {
  check(native().closeSilently(fd), 'baton_close_silently', { fd });
}

/** A close-on-exec duplicate: keeps the connection when Node destroys its socket. */
export function dupFd(fd: number): number {
  return check(native().dup(fd), 'baton_dup', { fd });
}

interface NodeTcpHandle {
  fd: number;
}

/** The kernel fd under a connected net.Socket. Throws unless it is a TCP handle. */
export function socketFd(sock: net.Socket): number {
  const handle = (sock as unknown as { _handle?: unknown })._handle as (NodeTcpHandle & { constructor?: { name?: string } }) | null | undefined;
  if (!handle || handle.constructor?.name !== 'TCP' || typeof handle.fd !== 'number' || handle.fd < 0) {
    throw new BatonError('E_HANDOFF_STATE', 'socket has no open TCP handle', { step: 'socketFd' });
  }
  return handle.fd;
}

// ---- what a descriptor is ----------------------------------------------------------------

/** The kernel's numbers SocketInfo carries that callers test for (<sys/socket.h>, <netinet/tcp.h>). */
export const SOCKET_CONSTANTS = { AF_UNIX: 1, AF_INET: 2, AF_INET6: 10, SOCK_STREAM: 1, SOCK_DGRAM: 2, IPPROTO_TCP: 6, TCP_ESTABLISHED: 1 } as const;

/** What a descriptor is (baton_socket_check in native/repair.h): the kernel's numbers, addresses for inet sockets. */
export interface SocketInfo {
  /** SO_DOMAIN, SO_TYPE, SO_PROTOCOL. */
  domain: number;
  type: number;
  protocol: number;
  /** TCP_INFO's state, for a TCP socket only (1: ESTABLISHED). */
  tcpState?: number;
  /** getsockname, for an AF_INET/AF_INET6 socket (family 4 for an IPv4-mapped address). */
  local?: TcpEndpoint & { family: 4 | 6 };
  /** getpeername, when connected. */
  remote?: TcpEndpoint;
}

// struct baton_socket_info, read at koffi-computed offsets like the state struct.
const INFO = koffi.struct({
  domain: 'int32_t',
  type: 'int32_t',
  protocol: 'int32_t',
  tcp_state: 'int32_t',
  family: 'uint8_t',
  connected: 'uint8_t',
  local_port: 'uint16_t',
  remote_port: 'uint16_t',
  local_addr: ADDR,
  remote_addr: ADDR,
});
const INFO_AT = Object.fromEntries(
  ['domain', 'type', 'protocol', 'tcp_state', 'family', 'connected', 'local_port', 'remote_port', 'local_addr', 'remote_addr'].map((f) => [f, koffi.offsetof(INFO, f)]),
) as Record<'domain' | 'type' | 'protocol' | 'tcp_state' | 'family' | 'connected' | 'local_port' | 'remote_port' | 'local_addr' | 'remote_addr', number>;
const infoScratch = Buffer.alloc(koffi.sizeof(INFO));

/**
 * What fd is, read without touching it: family, type, protocol, TCP state, local and remote
 * address. Throws E_NATIVE (ENOTSOCK: not a socket; EBADF: not open).
 */
export function inspectSocket(fd: number): SocketInfo {
  check(native().socketCheck(fd, infoScratch), 'baton_socket_check', { fd });
  const b = infoScratch;
  const info: SocketInfo = { domain: b.readInt32LE(INFO_AT.domain), type: b.readInt32LE(INFO_AT.type), protocol: b.readInt32LE(INFO_AT.protocol) };
  const tcpState = b.readInt32LE(INFO_AT.tcp_state);
  if (tcpState >= 0) info.tcpState = tcpState;
  const family = b.readUInt8(INFO_AT.family);
  if (family === 4 || family === 6) {
    const at = (offset: number) => new Uint8Array(b.subarray(offset, offset + 16));
    info.local = { family, address: bytesToAddress(family, at(INFO_AT.local_addr)), port: b.readUInt16LE(INFO_AT.local_port) };
    if (b.readUInt8(INFO_AT.connected)) info.remote = { address: bytesToAddress(family, at(INFO_AT.remote_addr)), port: b.readUInt16LE(INFO_AT.remote_port) };
  }
  return info;
}
