// The node's monotonic clock, in whole µs: CLOCK_MONOTONIC, the clock libuv reads (process.hrtime).
// A handoff's messages carry readings of it at each send and receive (HopClock in
// transfer/messages.ts): the trace of its critical path. Differences of one node's readings are
// durations anywhere; readings of different nodes compare only where they share one clock, as the
// processes of the one-machine namespace lab do (bench/handoff.ts reads them hop by hop there).
export function monotonicUs(): number {
  const [s, ns] = process.hrtime();
  return s * 1_000_000 + Math.floor(ns / 1000);
}
