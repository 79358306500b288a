// The deterministic byte pattern GET streams: byte i of a stream is i mod 251 (a prime, so the
// pattern never lines up with power-of-two buffer sizes and a shifted or repeated chunk shows).
import type net from 'node:net';

const PERIOD = 251;
const block = Buffer.alloc(PERIOD * 256);
for (let i = 0; i < block.length; i++) block[i] = i % PERIOD;

/** Bytes [offset, offset+length) of the pattern. */
export function patternChunk(offset: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  let written = 0;
  while (written < length) {
    const start = (offset + written) % PERIOD;
    const n = Math.min(length - written, block.length - start);
    block.copy(out, written, start, start + n);
    written += n;
  }
  return out;
}

const CHUNK = 256 * 1024;

/** Writes the first `total` bytes of the pattern to the socket, honouring backpressure, then calls done. */
export function streamPattern(socket: net.Socket, total: number, done: () => void): void {
  let sent = 0;
  const pump = () => {
    while (sent < total) {
      const n = Math.min(CHUNK, total - sent);
      const ok = socket.write(patternChunk(sent, n));
      sent += n;
      if (!ok) {
        socket.once('drain', pump);
        return;
      }
    }
    done();
  };
  pump();
}
