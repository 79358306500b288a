// The measurement harness of `make bench`: statistics, the interleaved A/B schedule, and the
// machine-readable results. Pure functions (no lab, no clock) so that test/unit/bench can check
// them on known input.
//
// Definitions used everywhere in the suite:
//   percentile(p)  nearest rank: the smallest sample with at least p % of the samples at or below
//                  it (sorted[ceil(p/100 · n) − 1]); always an observed value, never interpolated,
//                  so a p99 over 500 handoffs is the 5th-worst handoff, not a blend of two;
//   median         the middle sample, or the mean of the two middle ones for an even count;
//   ratio          baton / baseline, for the metric's own unit (a throughput ratio above 1 and a
//                  latency ratio below 1 both mean Baton did better).
import fs from 'node:fs';
import path from 'node:path';

function finiteSorted(xs: readonly number[]): number[] {
  const s = xs.filter((x) => Number.isFinite(x));
  return s.sort((a, b) => a - b);
}

export function percentile(xs: readonly number[], p: number): number {
  if (!(p >= 0 && p <= 100)) throw new RangeError(`percentile ${p} is outside 0..100`);
  const s = finiteSorted(xs);
  if (s.length === 0) return NaN;
  if (p === 0) return s[0]!;
  return s[Math.min(s.length, Math.ceil((p / 100) * s.length)) - 1]!;
}

export function median(xs: readonly number[]): number {
  const s = finiteSorted(xs);
  const n = s.length;
  if (n === 0) return NaN;
  const mid = Math.floor(n / 2);
  return n % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export function mean(xs: readonly number[]): number {
  const s = finiteSorted(xs);
  return s.length ? s.reduce((a, b) => a + b, 0) / s.length : NaN;
}

export interface Summary {
  n: number;
  min: number;
  median: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

export function summarize(xs: readonly number[]): Summary {
  const s = finiteSorted(xs);
  return { n: s.length, min: s[0] ?? NaN, median: median(s), p90: percentile(s, 90), p99: percentile(s, 99), max: s[s.length - 1] ?? NaN, mean: mean(s) };
}

/** baton / baseline; undefined when the baseline is missing or zero (no honest ratio exists). */
export function ratio(baton: number, baseline: number): number | undefined {
  if (!Number.isFinite(baton) || !Number.isFinite(baseline) || baseline === 0) return undefined;
  return baton / baseline;
}

/**
 * The order in which to measure variants: every run visits every variant once, A B C A B C …,
 * so a slow drift of the machine (thermal, page cache, a background job) lands on all variants
 * alike instead of on whichever ran last.
 */
export function interleave<V>(variants: readonly V[], runs: number): Array<{ run: number; variant: V }> {
  if (!Number.isInteger(runs) || runs < 0) throw new RangeError(`runs must be a non-negative integer, got ${runs}`);
  const order: Array<{ run: number; variant: V }> = [];
  for (let run = 0; run < runs; run++) for (const variant of variants) order.push({ run, variant });
  return order;
}

/**
 * Runs measure(variant, run) in the interleaved order and collects each variant's results by run.
 * Sequential on purpose: two measurements at once would share the two cores.
 */
export async function runInterleaved<V extends string, R>(variants: readonly V[], runs: number, measure: (variant: V, run: number) => Promise<R>): Promise<Record<V, R[]>> {
  const out = Object.fromEntries(variants.map((v) => [v, [] as R[]])) as Record<V, R[]>;
  for (const { run, variant } of interleave(variants, runs)) out[variant].push(await measure(variant, run));
  return out;
}

// ---- results.json -------------------------------------------------------------------------------

export interface Comparison {
  /** What Baton is compared with: "direct", "haproxy", "kernel forwarding", "1k entries"… */
  against: string;
  median: number;
  p99: number | null;
  /** The baseline's value in each run (same statistic as the metric's runs). */
  runs: number[];
  /** Baton's median / this median; null when undefined. */
  ratio: number | null;
}

export interface Goal {
  /** As the issue states it, e.g. "p50 ≤ 100 µs, p99 ≤ 300 µs". */
  text: string;
  met: boolean;
}

export interface MetricResult {
  id: string;
  title: string;
  unit: string;
  better: 'lower' | 'higher';
  /** Median over every sample (latencies) or over the runs (rates, throughput). */
  median: number;
  /** 99th percentile over every sample; null where a run yields one number (rates, throughput). */
  p99: number | null;
  /** Baton's value in each run: the run's median for latencies, the run's rate otherwise. */
  runs: number[];
  /** How many individual observations the median is taken over. */
  samples: number;
  /** The first comparison's ratio: the one the goal is stated against; null without one. */
  ratio: number | null;
  comparisons: Comparison[];
  goal: Goal;
  /** Sizes used where the suite had to shrink the (and why), measurement method. */
  method: string;
  /** Anything else worth keeping: per-step timings, failure counts, CPU split. */
  details?: Record<string, unknown>;
}

export interface BenchResults {
  version: 1;
  generatedAt: string;
  durationS: number;
  machine: {
    kernel: string;
    cpus: number;
    cpuModel: string;
    memoryMiB: number;
    node: string;
    haproxy: string;
    /** Sampled for 2 s before the suite started: other work on the machine skews every number. */
    backgroundAtStart?: { busyPct: number; loadAverage1m: number; otherNetworkNamespaces: number };
    /** CPU time the hypervisor took away while the suite ran, % of all CPUs. */
    stealPctDuringRun?: number;
  };
  metrics: MetricResult[];
  /** Groups that could not be measured in this run, and why. */
  failures?: Array<{ group: string; error: string }>;
}

/** Rounds to a few significant digits so results.json stays readable and diffs stay small. */
export function round(x: number, digits = 4): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const scale = 10 ** (digits - 1 - Math.floor(Math.log10(Math.abs(x))));
  return Math.round(x * scale) / scale;
}

/** A metric from Baton's samples (grouped by run) and its baselines', with the ratio filled in. */
export function latencyMetric(
  base: Omit<MetricResult, 'median' | 'p99' | 'runs' | 'samples' | 'ratio' | 'comparisons'>,
  baton: number[][],
  baselines: Array<{ against: string; runs: number[][] }> = [],
): MetricResult {
  const all = baton.flat();
  const med = median(all);
  const comparisons = baselines.map((b) => {
    const bAll = b.runs.flat();
    const bMed = median(bAll);
    return { against: b.against, median: round(bMed), p99: round(percentile(bAll, 99)), runs: b.runs.map((r) => round(median(r))), ratio: roundOrNull(ratio(med, bMed)) };
  });
  return { ...base, median: round(med), p99: round(percentile(all, 99)), runs: baton.map((r) => round(median(r))), samples: all.length, ratio: comparisons[0]?.ratio ?? null, comparisons };
}

/** A metric whose runs each give one number (a rate, a throughput). */
export function rateMetric(
  base: Omit<MetricResult, 'median' | 'p99' | 'runs' | 'samples' | 'ratio' | 'comparisons'>,
  baton: number[],
  baselines: Array<{ against: string; runs: number[] }> = [],
): MetricResult {
  const med = median(baton);
  const comparisons = baselines.map((b) => ({ against: b.against, median: round(median(b.runs)), p99: null, runs: b.runs.map((x) => round(x)), ratio: roundOrNull(ratio(med, median(b.runs))) }));
  return { ...base, median: round(med), p99: null, runs: baton.map((x) => round(x)), samples: baton.length, ratio: comparisons[0]?.ratio ?? null, comparisons };
}

function roundOrNull(x: number | undefined): number | null {
  return x === undefined ? null : round(x);
}

export function writeResults(file: string, results: BenchResults): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, `${JSON.stringify(results, null, 2)}\n`);
  fs.renameSync(tmp, file);
}
