// Taking a connection from Node for a handoff, and giving it back if the handoff fails: reading
// stops with every byte not yet delivered kept (in the kernel, or here to travel with the
// connection), and every byte already written is flushed to the kernel first.
import type net from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { BatonError } from '../errors.js';
import { socketFd } from '../../native/repair.js';
import type { TlsSession } from './tls-session.js';

/** How long a handoff waits for Node to flush what the application already wrote. */
const DRAIN_TIMEOUT_MS = 2_000;

export interface TakenOver {
  fd: number;
  /** What Node had read and not delivered: plaintext (with TLS, the decrypted bytes). */
  buffered: Buffer;
  /** Gives the socket back; the buffered bytes go back in front unless the caller took them elsewhere. */
  restore(opts?: { buffered: boolean }): void;
}

/** TLS: the client's bytes held before its TLS layer too (whole records and a partial one). */
export interface TakenOverTls extends TakenOver {
  held: Buffer;
}

interface TcpHandle {
  reading?: boolean;
  readStart(): number;
  readStop(): number;
}

/**
 * Detaches the application's reader from a stream: its 'data' and 'readable' listeners removed,
 * the stream paused, what it had buffered read out. restore() puts it all back.
 */
function detachReader(stream: Readable): { buffered: Buffer; restore(opts?: { buffered: boolean }): void } {
  const wasFlowing = stream.readableFlowing === true;
  const listeners = { data: stream.listeners('data'), readable: stream.listeners('readable') };
  stream.removeAllListeners('data');
  stream.removeAllListeners('readable');
  stream.pause();
  const chunks: Buffer[] = [];
  // Synchronous: nothing can be delivered between these reads and the caller's next step.
  for (let chunk = stream.read() as Buffer | null; chunk !== null; chunk = stream.read() as Buffer | null) chunks.push(chunk);
  const buffered = Buffer.concat(chunks);
  return {
    buffered,
    restore(opts = { buffered: true }) {
      if (opts.buffered && buffered.length > 0) stream.unshift(buffered);
      for (const l of listeners.data) stream.on('data', l as (b: Buffer) => void);
      for (const l of listeners.readable) stream.on('readable', l as () => void);
      if (wasFlowing) stream.resume();
    },
  };
}

/**
 * Stops Node from reading the socket so every byte not yet delivered stays in the kernel queue
 * (pause() is not enough, libuv keeps reading: docs/native.md, "Taking a socket from Node").
 * Whatever Node had already buffered is returned so it can travel with the peeked bytes.
 */
export function takeOverReads(socket: net.Socket, connId: string, drainKernel?: (fd: number) => { data: Buffer; error?: Error }): TakenOver {
  const fd = socketFd(socket);
  const handle = (socket as unknown as { _handle: TcpHandle | null })._handle;
  if (!handle) throw new BatonError('E_HANDOFF_STATE', 'socket has no handle', { connId, step: 'prepare' });
  const reader = detachReader(socket);
  handle.reading = false;
  handle.readStop();
  // Under kernel TLS, what the kernel decrypted and nobody read is plaintext too: read it now, so
  // that it travels (sealed again) and, on failure, comes back in front like Node's own buffer.
  const kernel = drainKernel?.(fd) ?? { data: Buffer.alloc(0) };
  const buffered = kernel.data.length > 0 ? Buffer.concat([reader.buffered, kernel.data]) : reader.buffered;
  const taken: TakenOver = {
    fd,
    buffered,
    restore(opts = { buffered: true }) {
      reader.restore({ buffered: false });
      // taken.buffered, not the first read: under kernel TLS the wait for a quiet connection adds to it.
      if (opts.buffered && taken.buffered.length > 0) socket.unshift(taken.buffered);
      // The stream still believes a read is pending (it never saw readStop), so it will not ask
      // again: restart the handle ourselves. Node's own backpressure stops it again if needed.
      handle.reading = true;
      handle.readStart();
    },
  };
  if (kernel.error) {
    taken.restore();
    throw kernel.error;
  }
  return taken;
}

/**
 * A TLS connection: the application's reader detached from the TLS socket (its buffered
 * plaintext kept), the client's records stopped before TLS at a record boundary, and the TCP
 * socket's reading stopped. restore() undoes it in the order that keeps the bytes in order.
 */
export function takeOverTls(session: TlsSession, connId: string): TakenOverTls {
  const reader = detachReader(session.socket);
  session.hold();
  let tcp: TakenOver;
  try {
    tcp = takeOverReads(session.raw, connId);
  } catch (err) {
    session.unhold(Buffer.alloc(0));
    reader.restore();
    throw err;
  }
  const held = Buffer.concat([session.takeHeld(), tcp.buffered]);
  return {
    fd: tcp.fd,
    buffered: reader.buffered,
    held,
    restore() {
      reader.restore();
      // The held bytes (the TCP socket's buffered ones among them) go to TLS first; the TCP
      // socket's reader, the tap, comes back after them.
      session.unhold(held);
      tcp.restore({ buffered: false });
    },
  };
}

/**
 * Resolves once every stream has handed everything written to the next layer (the last one: to
 * the kernel). Polled: a Writable emits 'drain' only after a write that filled its buffer.
 */
export function untilFlushed(streams: readonly Writable[], connId: string): Promise<void> {
  const pending = () => streams.reduce((n, s) => n + s.writableLength, 0);
  if (pending() === 0) return Promise.resolve();
  const deadline = Date.now() + DRAIN_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const check = () => {
      const n = pending();
      if (n === 0) return resolve();
      if (Date.now() >= deadline) return reject(new BatonError('E_HANDOFF_STATE', `${n} written bytes still queued in Node after ${DRAIN_TIMEOUT_MS} ms`, { connId, step: 'prepare' }));
      setTimeout(check, 1);
    };
    setTimeout(check, 1);
  });
}
