// The line protocol's data commands, one connection at a time, shared by the example target and the
// benchmark's plain server (so a comparison between them is of the paths, not of two parsers):
//   GET <n>  → n bytes of the pattern (examples/line/pattern.ts)
//   PUT <n>  → reads n raw bytes, answers SHA256 <hex>
//   QUIT     → BYE, closes
// A caller adds commands of its own (extra) and can take the connection away between lines
// (hold, detach/reattach: the target hands it on to another node).
import { createHash, type Hash } from 'node:crypto';
import type net from 'node:net';
import { streamPattern } from './pattern.js';

const MAX_TRANSFER = 1 << 30;

export interface LineCommands {
  /** The answer to a line that is no command. */
  usage: string;
  /** A longer line closes the connection (default: no limit). */
  maxLine?: number;
  /**
   * A line that is not GET, PUT or QUIT: 'next' when handled, 'stop' to leave the loop until
   * run() is called again, undefined to answer usage.
   */
  extra?(line: string): 'next' | 'stop' | undefined;
  /** Asked at every line boundary with no upload running: true leaves the loop until run(). */
  hold?(): boolean;
}

export class LineSession {
  private buffered: Buffer = Buffer.alloc(0);
  private upload?: { remaining: number; hash: Hash };
  private busy = false;
  private readonly onData = (chunk: Buffer): void => {
    this.buffered = this.buffered.length ? Buffer.concat([this.buffered, chunk]) : chunk;
    this.run();
  };

  constructor(
    private readonly socket: net.Socket,
    private readonly commands: LineCommands,
  ) {
    socket.on('data', this.onData);
  }

  /** Stops reading and parsing; returns what was received and not parsed yet. */
  detach(): Buffer {
    this.socket.off('data', this.onData);
    this.busy = true;
    const unparsed = this.buffered;
    this.buffered = Buffer.alloc(0);
    return unparsed;
  }

  /** Undoes detach(): the unparsed bytes go back in front and reading resumes; parsing at run(). */
  reattach(unparsed: Buffer): void {
    this.buffered = Buffer.concat([unparsed, this.buffered]);
    this.busy = false;
    this.socket.on('data', this.onData);
  }

  run(): void {
    while (!this.busy) {
      if (!this.upload && this.commands.hold?.()) return;
      if (this.upload) {
        const n = Math.min(this.upload.remaining, this.buffered.length);
        this.upload.hash.update(this.buffered.subarray(0, n));
        this.upload.remaining -= n;
        this.buffered = this.buffered.subarray(n);
        if (this.upload.remaining > 0) return;
        this.socket.write(`SHA256 ${this.upload.hash.digest('hex')}\n`);
        this.upload = undefined;
        continue;
      }
      const nl = this.buffered.indexOf(0x0a);
      if (nl < 0) {
        if (this.commands.maxLine !== undefined && this.buffered.length > this.commands.maxLine) this.socket.end('ERR line too long\n');
        return;
      }
      const line = this.buffered.subarray(0, nl).toString('utf8').trim();
      this.buffered = this.buffered.subarray(nl + 1);
      if (line === 'QUIT') {
        this.socket.end('BYE\n');
        return;
      }
      const m = /^(GET|PUT) (\d{1,10})$/.exec(line);
      if (!m) {
        const handled = this.commands.extra?.(line);
        if (handled === 'stop') return;
        if (handled === 'next') continue;
      }
      if (!m || Number(m[2]) > MAX_TRANSFER) {
        this.socket.write(`${this.commands.usage}\n`);
        continue;
      }
      const n = Number(m[2]);
      if (m[1] === 'PUT') {
        this.upload = { remaining: n, hash: createHash('sha256') };
        continue;
      }
      this.busy = true;
      streamPattern(this.socket, n, () => {
        this.busy = false;
        this.run();
      });
    }
  }
}
