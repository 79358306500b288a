// Structured logs (pino). Every line carries the node name; handoff lines carry the connection id,
// which is the same on every node the connection passes through.
import { pino, type Logger } from 'pino';

export type { Logger };

/** Asynchronous lines wait in memory until this many bytes are pending, or FLUSH_EVERY_MS. */
export const LOG_BUFFER_BYTES = 4096;
export const LOG_FLUSH_EVERY_MS = 100;

/**
 * Lines go to stdout, asynchronously unless BATON_LOG_SYNC=1, and buffered: a write is a job on
 * libuv's thread pool whose completion wakes the event loop again, and on a busy node those two
 * wake-ups per line cost more than the line (measured: bench/changes.md, 2026-12-05). So lines
 * wait until 4 KiB are pending or 100 ms have passed, whichever comes first; pino writes what is
 * pending synchronously when the process exits (normally, on an uncaught exception, or through a
 * signal handler that exits). A SIGKILL loses at most the last 100 ms. Synchronous logging is for
 * harnesses that read a process's log right after what it did reached them (the test lab):
 * asynchronously the line can arrive after the bytes the process sent just after logging it.
 */
export function createLogger(bindings: Record<string, unknown> = {}, level = process.env.BATON_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { pid: process.pid, ...bindings } }, stdout());
}

type Destination = ReturnType<typeof pino.destination>;
let buffered: Destination | undefined;

/** Every logger of the process shares one buffered stdout (and one flush timer); a synchronous one each. */
function stdout(): Destination {
  if (process.env.BATON_LOG_SYNC === '1') return pino.destination({ dest: 1, sync: true });
  if (!buffered) {
    const dest = pino.destination({ dest: 1, sync: false, minLength: LOG_BUFFER_BYTES });
    setInterval(() => dest.flush(), LOG_FLUSH_EVERY_MS).unref();
    buffered = dest;
  }
  return buffered;
}
