// Reads of a large routing table must not stop handoffs. The kernel keeps no element count and a
// walk of the BPF map costs two syscalls an entry: a listing or a scrape that walked 200,000
// entries blocked batond's event loop for about a second each, and twenty of them at once held up
// every handoff behind them past its step timeout. batond now keeps the table's counts and an
// index as the table changes (table-index.ts), and lists it a bounded page at a time. Here: a
// distributor with 200,000 entries, twenty listings of the whole table at once (with /metrics and
// /v1/stats every tenth page), and handoffs during them that must complete well within their step
// timeout.
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import type { FlowKey } from '../../../controller/flow.js';
import { apiReadTokenFile, labCaFile, labProcesses, LINE_PORT } from '../../../controller/lab/cluster.js';
import { inClient, lineClient, readLog } from '../../../controller/lab/demo.js';
import { startProcess, stopProcess } from '../../../controller/lab/processes.js';
import { repoRoot } from '../../../controller/paths.js';
import { apiUrl } from '../../helpers/api.js';
import { useLab } from '../../helpers/lab.js';

const running = useLab();

const ENTRIES = 200_000;
const LISTINGS = 20;
const HANDOFFS = 10;
const STEP_TIMEOUT_US = 2_000_000; // the lab's handoffStepTimeoutMs

/** The i-th synthetic flow: clients in 10.98.0.0/16 nobody uses, to the DVIPA's line port. */
const synthetic = (i: number, vip: string): FlowKey => ({ family: 4, clientAddress: `10.98.${(i >> 8) & 255}.${i & 255}`, clientPort: 1024 + (i >> 16), vipAddress: vip, vipPort: LINE_PORT });

describe('a routing table of 200,000 entries', () => {
  it(`${LISTINGS} listings of the whole table at once, with scrapes between them: handoffs during them complete within their step timeout`, { timeout: 180_000 }, async () => {
    const { lab } = running;
    const n2 = lab.nodes.find((n) => n.name === 'n2')!;
    for (let i = 0; i < ENTRIES; i++) running.routes.forward(synthetic(i, lab.dvipa.address), { node: 2, mac: n2.mac });
    // A batond that adopts the table learns it once, at start (a restart, as after an upgrade).
    const spec = labProcesses(lab).find((s) => s.name === 'n1-batond')!;
    await stopProcess(lab.runDir, 'n1-batond', lab.prefix);
    await startProcess(spec, { runDir: lab.runDir, lab: lab.prefix });
    const ready = () => readLog(lab, 'n1-batond').some((l) => l.msg === 'batond ready');
    for (let waited = 0; !ready() && waited < 30_000; waited += 50) await sleep(50);
    expect(ready()).toBe(true);
    // The routing application's link comes back on its own: wait for it before handing off.
    for (let waited = 0; readLog(lab, 'n1-line-router').filter((l) => l.msg === 'link to batond re-established').length === 0 && waited < 20_000; waited += 100) await sleep(100);

    const listings = inClient(
      lab,
      ['python3', path.join(repoRoot(), 'test/helpers/list-connections.py'), '--api', apiUrl(lab, 'n1', ''), '--cafile', labCaFile(lab), '--token-file', apiReadTokenFile(lab), '--parallel', String(LISTINGS), '--metrics-every', '10'],
      170_000,
    );
    const handedBefore = readLog(lab, 'n1-line-router').filter((l) => l.event === 'handed-off').length;
    // Time for the listings to start; that the handoffs fell inside them is checked below.
    await sleep(500);
    const clients = [];
    for (let i = 0; i < HANDOFFS; i++) {
      clients.push(JSON.parse((await inClient(lab, lineClient(lab, ['--user', 'alice', '--expect-node', 'n2', '--get', '10000']), 30_000)).stdout.trim() || '{}'));
      await sleep(200);
    }
    const out = await listings;
    expect(out.code, out.stderr.slice(-2000)).toBe(0);
    const report = JSON.parse(out.stdout.trim()) as { seconds: number; results: Array<{ pages: number; entries: number; distinct: number; slowest_ms: number; start_ms: number; end_ms: number }> };

    expect(clients.map((c) => c.ok)).toEqual(Array(HANDOFFS).fill(true));
    const handoffs = readLog(lab, 'n1-line-router').filter((l) => l.event === 'handed-off').slice(handedBefore);
    expect(handoffs).toHaveLength(HANDOFFS);
    const totals = handoffs.map((l) => (l.timings as { totalUs: number }).totalUs);
    expect(Math.max(...totals), `handoff totals µs: ${totals.join(', ')}`).toBeLessThan(STEP_TIMEOUT_US);
    // Every handoff, from its start (its log line's time less its total) to its end, ran while all
    // the listings did: after the last one started and before the first one ended.
    const allListing = { from: Math.max(...report.results.map((r) => r.start_ms)), to: Math.min(...report.results.map((r) => r.end_ms)) };
    const spans = handoffs.map((l) => ({ from: Math.floor(l.time - (l.timings as { totalUs: number }).totalUs / 1000), to: l.time }));
    const outside = spans.filter((h) => h.from < allListing.from || h.to > allListing.to);
    expect(outside, `handoffs (epoch ms) outside the ${LISTINGS} listings' common window ${JSON.stringify(allListing)}`).toEqual([]);
    for (const r of report.results) expect(r.distinct).toBeGreaterThanOrEqual(ENTRIES);
    console.log(`${LISTINGS} listings of ${ENTRIES} entries in ${report.seconds} s (${report.results[0]!.pages} pages each, slowest page ${Math.max(...report.results.map((r) => r.slowest_ms))} ms); handoffs during them: ${totals.map((t) => Math.round(t / 1000)).join(', ')} ms`);
  });
});
