// `make bench`: the whole benchmark suite in one bounded run. Builds its own lab (prefix btbench),
// measures, writes bench/results.json and regenerates BENCHMARKS.md with one SVG chart per metric
// under bench/charts/, and tears the lab down whatever happens.
//
//   node dist/bench/main.js [--only id,id] [--report-only]
//
// --only runs some groups (handoff, rate, stall, throughput, cpu, http, steering, table, takeover)
// and merges their metrics into the existing results.json; --report-only re-renders BENCHMARKS.md
// from it. takeover builds labs of its own (prefixes btbtk1…, btbrep: a node dies in them) under
// build/bench-takeover/, and the shared lab is only built for the groups that use it.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Command } from 'commander';
import { listNamespaces } from '../controller/lab/netns.js';
import { repoRoot } from '../controller/paths.js';
import { type BenchResults, type MetricResult, writeResults } from './harness.js';
import { handoffLatency, handoffRate, stall } from './handoff.js';
import { httpLatency } from './http.js';
import { type BenchLab, liveLabs, startBenchLab } from './lab.js';
import { renderReport } from './report.js';
import { machine, procStat } from './system.js';
import { takeover } from './takeover.js';
import { routerCpu, throughput } from './throughput.js';
import { steeringRate, tableScale } from './xdp.js';

const PREFIX = 'btbench';
/** The bound for the whole suite on a 2-core machine. */
const BUDGET_S = 600;

type Log = (s: string) => void;
/** A group measures in the shared lab, or (ownLabs) builds and removes labs of its own under dir. */
type Group = ((b: BenchLab, log: Log) => Promise<MetricResult[]>) | { ownLabs: (dir: string, log: Log) => Promise<MetricResult[]> };

/**
 * Sizes are the (500 handoffs, 5,000 connections per rate run, 1 GB per transfer) with
 * three or more runs each: about four minutes in all on the 2-core development VM, well inside the
 * bound, so nothing had to shrink. takeover: the takeover test's 200 streaming connections, a
 * fresh lab for each of its three runs; a 100k-entry snapshot for the replication.
 */
const GROUPS: Record<string, Group> = {
  handoff: (b, log) => handoffLatency(b, { runs: 5, perRun: 100, warmup: 1000 }, log),
  rate: (b, log) => handoffRate(b, { runs: 3, connections: 5000, concurrency: 128 }, log),
  stall: async (b, log) => [await stall(b, { runs: 3, perRun: 50, puts: 60, measured: 40 }, log)],
  throughput: (b, log) => throughput(b, { bytes: 1e9, runs: 3 }, log),
  cpu: async (b, log) => [await routerCpu(b, { bytes: 1e9, runs: 3 }, log)],
  http: (b, log) => httpLatency(b, { runs: 3, firstPerRun: 150, laterPerRun: 1000 }, log),
  steering: async (b, log) => [await steeringRate(b, { runs: 3, seconds: 3 }, log)],
  table: (b, log) => tableScale(b, { sizes: [1_000, 100_000, 1_000_000], rounds: 3, keysPerRound: 64, repeat: 20_000, lookups: 20_000, rssEntries: 100_000, rssRuns: 3, idleMs: 10_000 }, log),
  takeover: { ownLabs: (dir, log) => takeover(dir, { runs: 3, connections: 200, roundBytes: 16384, intervalS: 0.1, afterMs: 2000, replication: { runs: 3, entries: 100_000 } }, log) },
};

function haproxyVersion(): string {
  try {
    return /version (\S+)/.exec(execFileSync('haproxy', ['-v'], { encoding: 'utf8' }))?.[1] ?? 'unknown';
  } catch {
    return 'not installed';
  }
}

async function main(): Promise<void> {
  const opts = new Command()
    .option('--only <groups>', `comma-separated subset of ${Object.keys(GROUPS).join(', ')}`)
    .option('--report-only', 'only re-render BENCHMARKS.md from bench/results.json')
    .parse()
    .opts<{ only?: string; reportOnly?: boolean }>();
  const root = repoRoot();
  const resultsFile = path.join(root, 'bench', 'results.json');
  if (opts.reportOnly) {
    renderReport(JSON.parse(fs.readFileSync(resultsFile, 'utf8')) as BenchResults, root);
    return;
  }
  const groups = opts.only ? opts.only.split(',') : Object.keys(GROUPS);
  for (const g of groups) if (!GROUPS[g]) throw new Error(`unknown group ${g}; known: ${Object.keys(GROUPS).join(', ')}`);

  const t0 = Date.now();
  const elapsed = () => ((Date.now() - t0) / 1000).toFixed(1);
  const log = (s: string) => console.log(`[${elapsed().padStart(6)} s] ${s}`);
  // Under build/ (ignored by git): the lab's logs stay there for a post-mortem until the next run.
  const dir = path.join(root, 'build', 'bench-lab');
  const ownLabsDir = path.join(root, 'build', 'bench-takeover');
  let lab: BenchLab | undefined;
  let stopping = false;
  // An interrupted run still removes its labs (the shared one, and a group's own): namespaces, processes, pins.
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      if (stopping) return;
      stopping = true;
      console.error(`${sig}: tearing the bench labs down`);
      void Promise.allSettled([...liveLabs].map((l) => l.down())).finally(() => process.exit(130));
    });
  }

  // The suite cannot keep other work off the machine; it can say how busy it was when it started.
  const idle0 = procStat();
  await sleep(2000);
  const background = {
    busyPct: Math.round((100 * (procStat().busyNs - idle0.busyNs)) / (2e9 * os.cpus().length)),
    loadAverage1m: Math.round(os.loadavg()[0]! * 100) / 100,
    otherNetworkNamespaces: listNamespaces().filter((n) => !n.startsWith(`${PREFIX}-`)).length,
  };
  log(`before starting: machine ${background.busyPct} % busy, load average ${background.loadAverage1m}, ${background.otherNetworkNamespaces} other network namespaces`);

  const runStart = procStat();
  const runStartedAt = Date.now();
  const metrics: MetricResult[] = [];
  // A group that fails is reported and the others still run: one broken measurement should not
  // cost the other numbers; the run still fails at the end.
  const failures: Array<{ group: string; error: string }> = [];
  try {
    if (groups.some((g) => typeof GROUPS[g] === 'function')) lab = await startBenchLab({ prefix: PREFIX, dir, log });
    for (const g of groups) {
      const g0 = Date.now();
      const group = GROUPS[g]!;
      log(`== ${g}`);
      try {
        metrics.push(...(await (typeof group === 'function' ? group(lab!, log) : group.ownLabs(ownLabsDir, log))));
      } catch (err) {
        failures.push({ group: g, error: (err as Error).message });
        log(`   ${g} FAILED: ${(err as Error).message}`);
      }
      log(`   ${g} took ${((Date.now() - g0) / 1000).toFixed(1)} s`);
    }
  } finally {
    if (lab) log('tearing the bench lab down');
    await lab?.down();
  }

  // On a VM, CPU the hypervisor gives to others shows up as slower everything: say how much.
  const stealPct = Math.round((1000 * (procStat().stealNs - runStart.stealNs)) / ((Date.now() - runStartedAt) * 1e6 * os.cpus().length)) / 10;
  const previous = opts.only && fs.existsSync(resultsFile) ? (JSON.parse(fs.readFileSync(resultsFile, 'utf8')) as BenchResults) : undefined;
  const merged = previous ? [...previous.metrics.filter((m) => !metrics.some((n) => n.id === m.id)), ...metrics] : metrics;
  const order = (m: MetricResult) => ORDER.indexOf(m.id);
  merged.sort((a, b) => order(a) - order(b));
  const durationS = (Date.now() - t0) / 1000;
  const results: BenchResults = {
    version: 1,
    generatedAt: new Date().toISOString(),
    durationS: previous ? previous.durationS : Math.round(durationS),
    machine: { ...machine(haproxyVersion()), backgroundAtStart: previous?.machine.backgroundAtStart ?? background, stealPctDuringRun: previous?.machine.stealPctDuringRun ?? stealPct },
    metrics: merged,
    ...(failures.length ? { failures } : {}),
  };
  writeResults(resultsFile, results);
  renderReport(results, root);
  log(`done in ${durationS.toFixed(0)} s (bound ${BUDGET_S} s): ${path.relative(root, resultsFile)}, BENCHMARKS.md`);
  if (durationS > BUDGET_S) console.error(`warning: the suite took ${durationS.toFixed(0)} s, over its ${BUDGET_S} s bound`);
  if (failures.length) {
    console.error(`${failures.length} benchmark group(s) failed: ${failures.map((f) => f.group).join(', ')} (see BENCHMARKS.md; lab logs in ${path.relative(root, dir)}/run, and ${path.relative(root, ownLabsDir)}/*/run for the groups with labs of their own)`);
    process.exitCode = 1;
  }
}

const ORDER = [
  'handoff-latency',
  'handoff-latency-ipv6',
  'handoff-rate',
  'handoff-cpu',
  'throughput-download',
  'throughput-upload',
  'throughput-download-ipv6',
  'throughput-upload-ipv6',
  'router-cpu-per-gb',
  'http-first-request',
  'http-later-request',
  'in-flight-stall',
  'xdp-steering-rate',
  'table-lookup',
  'batond-rss',
  'takeover-stall',
  'takeover-first-connection',
  'replication-throughput',
];

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
