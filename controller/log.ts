// Structured logs (pino). Every line carries the node name; handoff lines carry the connection id,
// which is the same on every node the connection passes through.
import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * Lines go to stdout, asynchronously unless BATON_LOG_SYNC=1: a handoff logs several lines, and a
 * write per line would sit in its path. Synchronous logging is for harnesses that read a
 * process's log right after what it did reached them (the test lab): asynchronously the line can
 * arrive after the bytes the process sent just after logging it.
 */
export function createLogger(bindings: Record<string, unknown> = {}, level = process.env.BATON_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { pid: process.pid, ...bindings } }, pino.destination({ dest: 1, sync: process.env.BATON_LOG_SYNC === '1' }));
}
