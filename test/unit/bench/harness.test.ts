// The benchmark harness's statistics on known input: percentiles, medians, ratios, the
// interleaved order, and the metric objects results.json is made of. No timing here.
import { describe, expect, it } from 'vitest';
import { interleave, latencyMetric, median, percentile, rateMetric, ratio, round, runInterleaved, summarize } from '../../../bench/harness.js';

const base = { id: 'm', title: 'M', unit: 'ms', better: 'lower' as const, goal: { text: 'g', met: false }, method: 'known input' };

describe('percentile (nearest rank)', () => {
  const oneToHundred = Array.from({ length: 100 }, (_, i) => i + 1);

  it('is the smallest sample with at least p % of the samples at or below it', () => {
    expect(percentile(oneToHundred, 50)).toBe(50);
    expect(percentile(oneToHundred, 90)).toBe(90);
    expect(percentile(oneToHundred, 99)).toBe(99);
    expect(percentile(oneToHundred, 99.5)).toBe(100);
    expect(percentile(oneToHundred, 100)).toBe(100);
    expect(percentile(oneToHundred, 0)).toBe(1);
  });

  it('never interpolates: p99 of 500 samples is the 5th-largest', () => {
    const xs = Array.from({ length: 500 }, (_, i) => (i + 1) * 10);
    expect(percentile(xs, 99)).toBe(4950);
    // 495 of 500 samples are ≤ 4950; one fewer would not be 99 %.
    expect(xs.filter((x) => x <= 4950).length / xs.length).toBeGreaterThanOrEqual(0.99);
    expect(xs.filter((x) => x <= 4940).length / xs.length).toBeLessThan(0.99);
  });

  it('does not depend on the input order and leaves the input alone', () => {
    const xs = [5, 3, 9, 1, 7];
    const copy = [...xs];
    expect(percentile(xs, 50)).toBe(5);
    expect(percentile(xs, 80)).toBe(7);
    expect(percentile(xs, 81)).toBe(9);
    expect(xs).toEqual(copy);
  });

  it('handles small and degenerate inputs', () => {
    expect(percentile([42], 99)).toBe(42);
    expect(percentile([], 50)).toBeNaN();
    expect(percentile([1, Number.NaN, 3, Number.POSITIVE_INFINITY], 100)).toBe(3);
    expect(() => percentile([1, 2], 101)).toThrow(RangeError);
    expect(() => percentile([1, 2], -1)).toThrow(RangeError);
  });
});

describe('median', () => {
  it('is the middle sample for an odd count and the mean of the middle two for an even one', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([10])).toBe(10);
    expect(median([])).toBeNaN();
  });

  it('is not pulled by outliers', () => {
    expect(median([1, 2, 3, 4, 1e9])).toBe(3);
  });
});

describe('summarize', () => {
  it('reports count, extremes, median, p90, p99 and mean of the finite samples', () => {
    const xs = Array.from({ length: 200 }, (_, i) => 200 - i);
    expect(summarize([...xs, Number.NaN])).toEqual({ n: 200, min: 1, median: 100.5, p90: 180, p99: 198, max: 200, mean: 100.5 });
  });
});

describe('ratio', () => {
  it('is baton / baseline, undefined without a usable baseline', () => {
    expect(ratio(95, 100)).toBe(0.95);
    expect(ratio(3, 1.5)).toBe(2);
    expect(ratio(1, 0)).toBeUndefined();
    expect(ratio(Number.NaN, 1)).toBeUndefined();
  });
});

describe('round', () => {
  it('keeps four significant digits by default', () => {
    expect(round(3152.5)).toBe(3153);
    expect(round(0.123456)).toBe(0.1235);
    expect(round(1234567)).toBe(1235000);
    expect(round(0)).toBe(0);
    expect(round(2.5, 2)).toBe(2.5);
  });
});

describe('interleaving', () => {
  it('visits every variant once per run, in the same order each run: A B A B …', () => {
    expect(interleave(['A', 'B'], 3).map((o) => o.variant).join(' ')).toBe('A B A B A B');
    expect(interleave(['A', 'B', 'C'], 2)).toEqual([
      { run: 0, variant: 'A' },
      { run: 0, variant: 'B' },
      { run: 0, variant: 'C' },
      { run: 1, variant: 'A' },
      { run: 1, variant: 'B' },
      { run: 1, variant: 'C' },
    ]);
    expect(interleave(['A'], 0)).toEqual([]);
    expect(() => interleave(['A'], 1.5)).toThrow(RangeError);
  });

  it('runs the measurements one at a time in that order and groups results by variant', async () => {
    const calls: string[] = [];
    let running = 0;
    const out = await runInterleaved(['A', 'B'] as const, 3, async (v, run) => {
      running++;
      expect(running).toBe(1);
      calls.push(`${v}${run}`);
      await new Promise((r) => setTimeout(r, 1));
      running--;
      return `${v}:${run}`;
    });
    expect(calls).toEqual(['A0', 'B0', 'A1', 'B1', 'A2', 'B2']);
    expect(out).toEqual({ A: ['A:0', 'A:1', 'A:2'], B: ['B:0', 'B:1', 'B:2'] });
  });

  it('cancels a linear drift of the machine in the comparison', async () => {
    // Every measurement reads 1 more than the previous one, whatever the variant: B is truly 10 % slower.
    let clock = 0;
    const out = await runInterleaved(['A', 'B'] as const, 5, async (v) => 100 * (v === 'B' ? 1.1 : 1) + clock++);
    const r = ratio(median(out.B), median(out.A))!;
    expect(r).toBeGreaterThan(1.09);
    expect(r).toBeLessThan(1.11);
  });
});

describe('metric objects', () => {
  it('latencyMetric pools the samples for median and p99, keeps per-run medians, and fills the ratio', () => {
    const m = latencyMetric(base, [[1, 2, 3], [4, 5, 6]], [{ against: 'direct', runs: [[2, 4], [6, 8]] }]);
    expect(m.median).toBe(3.5);
    expect(m.p99).toBe(6);
    expect(m.runs).toEqual([2, 5]);
    expect(m.samples).toBe(6);
    expect(m.comparisons).toEqual([{ against: 'direct', median: 5, p99: 8, runs: [3, 7], ratio: 0.7 }]);
    expect(m.ratio).toBe(0.7);
  });

  it('rateMetric takes one number per run and has no p99', () => {
    const m = rateMetric({ ...base, better: 'higher' }, [9, 10, 11], [{ against: 'haproxy', runs: [4, 5, 6] }, { against: 'direct', runs: [10, 10, 10] }]);
    expect(m.median).toBe(10);
    expect(m.p99).toBeNull();
    expect(m.samples).toBe(3);
    expect(m.comparisons.map((c) => c.ratio)).toEqual([2, 1]);
    expect(m.ratio).toBe(2);
  });

  it('has a null ratio when there is nothing to compare with', () => {
    expect(latencyMetric(base, [[1]]).ratio).toBeNull();
    expect(rateMetric(base, [1], [{ against: 'zero', runs: [0] }]).ratio).toBeNull();
  });
});
