// HTTP example benchmarks: the first authenticated answer on a new connection (challenge, Digest
// request, handoff) and keep-alive requests after it, against HAProxy 'mode http' routing the
// same requests by header to plain node:http servers, and (for later requests) a direct
// connection to such a server.
import { type MetricResult, latencyMetric, median, runInterleaved } from './harness.js';
import { type BenchLab, HAPROXY_HTTP_PORT, HTTP_PORT, PLAIN_HTTP_PORT } from './lab.js';

interface SamplesOut {
  samples: number[];
  servedBy: Record<string, number> | string;
}

export async function httpLatency(b: BenchLab, opts: { runs: number; firstPerRun: number; laterPerRun: number }, log: (s: string) => void): Promise<MetricResult[]> {
  const n1 = b.node('n1');
  const n2 = b.node('n2');
  const addr = {
    baton: ['--host', b.lab.dvipa.address, '--port', String(HTTP_PORT)],
    haproxy: ['--host', n1.address, '--port', String(HAPROXY_HTTP_PORT)],
    direct: ['--host', n2.address, '--port', String(PLAIN_HTTP_PORT)],
  };
  const servedBy: Record<string, unknown> = {};

  const first = await runInterleaved(['baton', 'haproxy'] as const, opts.runs, async (v, run) => {
    const out = await b.client<SamplesOut>(['http-first', ...addr[v], '--count', String(opts.firstPerRun)], 120_000);
    servedBy[`first ${v} run ${run + 1}`] = out.servedBy;
    return out.samples.map((x) => x / 1000);
  });
  const firstMetric = latencyMetric(
    {
      id: 'http-first-request',
      title: 'HTTP first-request latency',
      unit: 'ms',
      better: 'lower',
      goal: { text: 'lower than HAProxy', met: false },
      method: `${opts.runs} runs × ${opts.firstPerRun} new connections one after another per path, interleaved; time from connect() to the first byte of the authenticated answer: request, 401 Digest challenge, request with credentials, and for Baton the handoff to n2's http target (node:http) that answers it; HAProxy 'mode http' on n1 routes by the user named in the Authorization header to plain node:http servers on n2/n3 that issue and check the challenge themselves`,
    },
    first.baton,
    [{ against: 'haproxy', runs: first.haproxy }],
  );
  firstMetric.goal.met = firstMetric.median < (firstMetric.comparisons[0]?.median ?? -Infinity);
  log(`http first request: median ${firstMetric.median} ms vs HAProxy ${firstMetric.comparisons[0]?.median} ms`);

  const later = await runInterleaved(['baton', 'direct', 'haproxy'] as const, opts.runs, async (v, run) => {
    const out = await b.client<SamplesOut>(['http-later', ...addr[v], '--requests', String(opts.laterPerRun)], 120_000);
    servedBy[`later ${v} run ${run + 1}`] = out.servedBy;
    return out.samples.map((x) => x / 1000);
  });
  const laterMetric = latencyMetric(
    {
      id: 'http-later-request',
      title: 'HTTP later-request latency (keep-alive)',
      unit: 'ms',
      better: 'lower',
      goal: { text: '≤ direct + 5 %', met: false },
      method: `${opts.runs} runs × 1 connection × ${opts.laterPerRun} keep-alive requests one after another per path, interleaved; each request timed from write to the complete answer; after the handoff for Baton; direct = a plain node:http server on n2; haproxy = HAProxy 'mode http' on n1 to that server`,
      details: { servedBy },
    },
    later.baton,
    [
      { against: 'direct', runs: later.direct },
      { against: 'haproxy', runs: later.haproxy },
    ],
  );
  laterMetric.goal.met = laterMetric.median <= 1.05 * median(later.direct.flat());
  log(`http later requests: median ${laterMetric.median} ms vs direct ${laterMetric.comparisons[0]?.median} ms, HAProxy ${laterMetric.comparisons[1]?.median} ms`);
  return [firstMetric, laterMetric];
}
