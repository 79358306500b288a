// The socket work batond does in a handoff, named by what it means to the handoff. The routing
// node's batond exports the application's socket (a duplicate of its descriptor) and reads the
// delta; the target node's batond reinstates the connection, completes it and makes it live, then
// hands the descriptor to the target application. Each step is one native call (native/repair.ts);
// the state machines (handoff.ts, target/handoffs.ts) only see this interface, so their unit tests
// can run without a kernel.
import fs from 'node:fs';
import { BatonError } from '../errors.js';
import { TCP_STATES } from '../../native/diag.js';
import { installKtls, type KtlsState } from '../../native/ktls.js';
import { closeFd } from '../../native/fdpass.js';
import {
  appendReceived,
  appendSent,
  closeSilently,
  type ExportDelta,
  exportDelta,
  exportSnapshot,
  goLive,
  type IdleBounds,
  importConnection,
  inspectSocket,
  leaveRepair,
  quietClock,
  setIdleBounds,
  setWindow,
  SOCKET_CONSTANTS as K,
  type SocketInfo,
  type TcpConnectionState,
} from '../../native/repair.js';

export interface HandoffSockets {
  /** Routing node, first: what the descriptor an application passed is, read without touching it. */
  inspect(fd: number): SocketInfo;
  /** Routing node: repair mode on, the connection's state read (the socket then sends nothing new). */
  snapshot(fd: number): TcpConnectionState;
  /** Routing node, once frozen: what reached the socket, and what it transmitted, since the snapshot. */
  delta(fd: number, snapshot: TcpConnectionState): ExportDelta;
  /** Routing node, rolling back: repair mode off; the application's socket carries on. */
  resume(fd: number): void;
  /** Routing node, once the flow no longer reaches the socket: its final clock if it can send nothing more by itself. */
  quietClock(fd: number, rcvNxt: number): number | undefined;
  /** Closes this process's descriptor only (plain close): the socket lives on in the application. */
  release(fd: number): void;
  /** Target node: the connection rebuilt in repair mode, peeked bytes ahead of its receive queue. */
  reinstate(state: TcpConnectionState, peeked: Buffer): number;
  /** Target node, still in repair mode: the routing node's delta, applied (see TargetHandoffs.commit). */
  complete(fd: number, sentSinceSnapshot: Buffer, received: Buffer, window: TcpConnectionState['window']): void;
  /**
   * Target node: the idle bounds set (keepalive, TCP_USER_TIMEOUT), then repair mode off with the
   * old socket's clock; the kernel's window probe follows.
   */
  goLive(fd: number, timestamp?: number): void;
  /** Drops a reinstated socket: no FIN, no RST. */
  discard(fd: number): void;
  /**
   * Target node, a TLS connection once live: the unsent tail written as it is (it is records the
   * routing node's kernel never transmitted, already encrypted), then kernel TLS installed with
   * the session's keys, so that everything written from now on is encrypted by the kernel.
   */
  takeSession(fd: number, unsent: Buffer, keys: KtlsState): void;
}

/**
 * The cluster file's idle bounds (limits.idle) with their defaults: a client that vanished is
 * noticed within about keepaliveIdleS + keepaliveIntervalS × keepaliveProbes seconds of silence
 * (7 minutes), or userTimeoutS after data it never acknowledged (5 minutes).
 */
export function idleBounds(limits: { keepaliveIdleS?: number; keepaliveIntervalS?: number; keepaliveProbes?: number; userTimeoutS?: number } = {}): IdleBounds {
  return {
    keepaliveIdleS: limits.keepaliveIdleS ?? 300,
    keepaliveIntervalS: limits.keepaliveIntervalS ?? 30,
    keepaliveProbes: limits.keepaliveProbes ?? 4,
    userTimeoutS: limits.userTimeoutS ?? 300,
  };
}

/** The kernel's sockets, reinstated connections bounded by idle. */
export function handoffSockets(idle: IdleBounds): HandoffSockets {
  return {
    ...nativeSockets,
    goLive(fd, timestamp) {
      setIdleBounds(fd, idle);
      goLive(fd, timestamp);
    },
  };
}

export const nativeSockets: HandoffSockets = {
  inspect: inspectSocket,
  snapshot: exportSnapshot,
  delta: exportDelta,
  resume: leaveRepair,
  quietClock,
  release: closeFd,
  reinstate: (state, peeked) => importConnection(state, { prepend: peeked }),
  complete(fd, sentSinceSnapshot, received, window) {
    appendSent(fd, sentSinceSnapshot);
    appendReceived(fd, received);
    setWindow(fd, window);
  },
  goLive,
  discard: closeSilently,
  takeSession(fd, unsent, keys) {
    writeAll(fd, unsent);
    installKtls(fd, keys);
  },
};

/**
 * Writes bytes to a live socket without waiting: they go to its send queue, whose room is the
 * socket's buffer, not the client's window. A tail the routing node's socket held fits, unless
 * this socket's buffer is smaller and full: then the connection cannot be continued (an error).
 */
function writeAll(fd: number, bytes: Buffer): void {
  for (let at = 0; at < bytes.length; ) {
    try {
      at += fs.writeSync(fd, bytes, at, bytes.length - at);
    } catch (err) {
      throw new BatonError('E_NATIVE', `cannot queue the ${bytes.length - at} bytes of the unsent tail before kernel TLS: ${(err as Error).message}`, { step: 'live' });
    }
  }
}

/** Why a descriptor is not an established TCP connection to a DVIPA (isDvipa), or undefined. */
export function unfitDescriptor(info: SocketInfo, isDvipa: (address: string) => boolean): string | undefined {
  if (info.domain !== K.AF_INET && info.domain !== K.AF_INET6) return info.domain === K.AF_UNIX ? 'a Unix socket' : `a socket of address family ${info.domain}`;
  if (info.type !== K.SOCK_STREAM || info.protocol !== K.IPPROTO_TCP) return info.type === K.SOCK_DGRAM ? 'a datagram (UDP) socket' : `socket type ${info.type}, protocol ${info.protocol}`;
  if (info.tcpState !== K.TCP_ESTABLISHED) return `TCP state ${TCP_STATES[info.tcpState as keyof typeof TCP_STATES] ?? info.tcpState}`;
  if (!info.local || !isDvipa(info.local.address)) return `its local address ${info.local?.address} is not a DVIPA`;
  return undefined;
}

/** Did the socket stay as the snapshot saw it: nothing received, nothing transmitted, the same window? */
export function unchangedSince(snapshot: TcpConnectionState, delta: ExportDelta): boolean {
  const a = snapshot.window;
  const b = delta.window;
  return (
    delta.received.length === 0 &&
    delta.unsentLength === snapshot.unsentLength &&
    a.sndWl1 === b.sndWl1 &&
    a.sndWnd === b.sndWnd &&
    a.maxWindow === b.maxWindow &&
    a.rcvWnd === b.rcvWnd &&
    a.rcvWup === b.rcvWup
  );
}
