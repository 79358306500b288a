// Structured logs (pino). Every line carries the node name; handoff lines carry the connection id,
// which is the same on every node the connection passes through.
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(bindings: Record<string, unknown> = {}, level = process.env.BATON_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { pid: process.pid, ...bindings } });
}
