// Many streaming connections through the line protocol, in one python process
// (examples/clients/line_streams.py): the client the restart and takeover tests keep busy while
// they take a distributor away.
import path from 'node:path';
import { expect } from 'vitest';
import { LINE_PORT } from '../../controller/lab/cluster.js';
import type { LabDescription } from '../../controller/lab/description.js';
import { dvipaOf } from '../../controller/lab/demo.js';
import type { Family } from '../../controller/flow.js';
import { repoRoot } from '../../controller/paths.js';

/** One connection's report. */
export interface StreamResult {
  conn: number;
  user: string;
  ok: boolean;
  served_by?: string;
  rounds: number;
  get_bytes: number;
  put_bytes: number;
  error?: string;
  /** [start, end] of every GET+PUT round, epoch ms. */
  round_ms?: Array<[number, number]>;
}

/** The argv, every connection its own socket through the usual login and handoff, to the DVIPA's address of a family. */
export function streamsClient(lab: LabDescription, args: string[], family: Family = 4): string[] {
  return ['python3', path.join(repoRoot(), 'examples/clients/line_streams.py'), '--host', dvipaOf(lab, family), '--port', String(LINE_PORT), ...args];
}

/**
 * What every test of a distributor going away asserts first: the client reported, every one of
 * its connections ended well, and each moved exactly its rounds' bytes (roundBytes each way).
 */
export function expectAllCarriedOn(out: { stdout: string; stderr: string }, connections: number, roundBytes: number): StreamResult[] {
  const { results, summary } = parseStreams(out.stdout);
  expect(summary, out.stderr.slice(-3000)).toBeDefined();
  expect(summary!.failed).toEqual([]);
  expect(results).toHaveLength(connections);
  expect(results.filter((r) => r.ok !== true)).toEqual([]);
  for (const r of results) expect(r.get_bytes + r.put_bytes).toBe(r.rounds * 2 * roundBytes);
  return results;
}

/** Its output: the connections' reports and the summary line (undefined when the client never got that far). */
export function parseStreams(stdout: string): { results: StreamResult[]; summary?: { failed: unknown[] } } {
  const lines = stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as StreamResult & { summary?: boolean; failed?: unknown[] });
  const summary = lines.find((l) => l.summary);
  return { results: lines.filter((l) => !l.summary), ...(summary ? { summary: { failed: summary.failed ?? [] } } : {}) };
}
