// Post-handoff throughput and the distributor's CPU per GB: bulk GET (download) and PUT (upload)
// through a transferred connection, a direct connection to n2, and HAProxy relaying on n1, in
// interleaved runs. The CPU pass repeats the Baton and HAProxy transfers with n1's packet work in
// a thread of its own (threadedNapi), so that it can be told apart from the rest of the machine's.
import { createHash } from 'node:crypto';
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { patternChunk } from '../examples/line/pattern.js';
import { type MetricResult, median, rateMetric, round, runInterleaved } from './harness.js';
import { type BenchLab, HAPROXY_LINE_PORT, LINE_PORT, PLAIN_LINE_PORT, threadedNapi } from './lab.js';
import { procStat, processCpuNs } from './system.js';

/** baton6: through Baton to the DVIPA's IPv6 address. */
type Path = 'baton' | 'baton6' | 'direct' | 'haproxy';
type Op = 'get' | 'put';
const PATHS: Path[] = ['baton', 'baton6', 'direct', 'haproxy'];

interface TransferOut {
  ok: boolean;
  ms: number;
  gbps: number;
  node?: string;
}

/** SHA-256 of what the client's PUT sends: its 1 MiB pattern block over and over. */
function putDigest(bytes: number): string {
  const block = patternChunk(0, 1 << 20);
  const h = createHash('sha256');
  for (let left = bytes; left > 0; left -= block.length) h.update(left >= block.length ? block : block.subarray(0, left));
  return h.digest('hex');
}

function targets(b: BenchLab): Record<Path, string[]> {
  return {
    baton: ['--host', b.lab.dvipa.address, '--port', String(LINE_PORT), '--user', 'alice'],
    baton6: ['--host', b.lab.dvipa.address6, '--port', String(LINE_PORT), '--user', 'alice'],
    direct: ['--host', b.node('n2').address, '--port', String(PLAIN_LINE_PORT)],
    haproxy: ['--host', b.node('n1').address, '--port', String(HAPROXY_LINE_PORT)],
  };
}

async function transfer(b: BenchLab, p: Path, op: Op, bytes: number, sha: string): Promise<TransferOut> {
  const out = await b.client<TransferOut>(['transfer', ...targets(b)[p], '--op', op, '--bytes', String(bytes), ...(op === 'put' ? ['--expect-sha', sha] : [])], 300_000);
  if (!out.ok) throw new Error(`${p} ${op} transfer did not end cleanly`);
  return out;
}

export async function throughput(b: BenchLab, opts: { bytes: number; runs: number }, log: (s: string) => void): Promise<MetricResult[]> {
  const sha = putDigest(opts.bytes);
  const variants = (['get', 'put'] as const).flatMap((op) => PATHS.map((p) => `${p}:${op}` as const));
  const cpus = os.cpus().length;
  const results = await runInterleaved(variants, opts.runs, async (variant, run) => {
    const [p, op] = variant.split(':') as [Path, Op];
    const s0 = procStat();
    const t0 = performance.now();
    const out = await transfer(b, p, op, opts.bytes, sha);
    // How much of the machine was busy meanwhile: near 100 % means the cores, not the path, set the rate.
    const busyPct = (100 * (procStat().busyNs - s0.busyNs)) / ((performance.now() - t0) * 1e6 * cpus);
    log(`throughput run ${run + 1} ${variant}: ${out.gbps.toFixed(2)} Gb/s (machine ${busyPct.toFixed(0)} % busy)`);
    return { gbps: out.gbps, busyPct };
  });
  const ipv4 = (['get', 'put'] as const).map((op) => {
    const rate = (p: Path) => results[`${p}:${op}`].map((r) => r.gbps);
    const busy = (p: Path) => round(median(results[`${p}:${op}`].map((r) => r.busyPct)), 3);
    const r = rateMetric(
      {
        id: op === 'get' ? 'throughput-download' : 'throughput-upload',
        title: `Post-handoff throughput, ${op === 'get' ? 'download (GET)' : 'upload (PUT)'}`,
        unit: 'Gb/s',
        better: 'higher',
        goal: { text: '≥ 0.95× direct, ≥ 2× HAProxy', met: false },
        details: { machineBusyPct: { baton: busy('baton'), direct: busy('direct'), haproxy: busy('haproxy') } },
        method: `${opts.runs} runs × ${opts.bytes / 1e9} GB per path, all eight path × direction pairs (the IPv6 ones below included) interleaved in each run; time from the client's ${op === 'get' ? 'GET to the last byte received' : 'PUT to the server\'s SHA256 answer (checked against what was sent)'}; baton = line protocol, HELLO/USER then handed off to n2's line target; direct = a plain server on n2's own address with the same GET/PUT code; haproxy = HAProxy 'mode tcp' on n1's address relaying to that plain server`,
      },
      rate('baton'),
      [
        { against: 'direct', runs: rate('direct') },
        { against: 'haproxy', runs: rate('haproxy') },
      ],
    );
    r.goal.met = (r.comparisons[0]?.ratio ?? 0) >= 0.95 && (r.comparisons[1]?.ratio ?? 0) >= 2;
    return r;
  });
  // The same transfers through Baton to the DVIPA's IPv6 address, in the same runs.
  const ipv6 = (['get', 'put'] as const).map((op) => {
    const rate = (p: Path) => results[`${p}:${op}`].map((r) => r.gbps);
    const r = rateMetric(
      {
        id: op === 'get' ? 'throughput-download-ipv6' : 'throughput-upload-ipv6',
        title: `Post-handoff throughput over IPv6, ${op === 'get' ? 'download (GET)' : 'upload (PUT)'}`,
        unit: 'Gb/s',
        better: 'higher',
        goal: { text: 'as over IPv4: ≥ 0.95× IPv4 through Baton in the same runs', met: false },
        details: { machineBusyPct: round(median(results[`baton6:${op}`].map((x) => x.busyPct)), 3) },
        method: `the same ${opts.runs} runs × ${opts.bytes / 1e9} GB as the IPv4 transfers above, interleaved with them: the client logs in at the DVIPA's IPv6 address and is handed off to n2 as over IPv4; direct is the plain server on n2 over IPv4`,
      },
      rate('baton6'),
      [
        { against: 'IPv4 through Baton', runs: rate('baton') },
        { against: 'direct', runs: rate('direct') },
      ],
    );
    r.goal.met = (r.comparisons[0]?.ratio ?? 0) >= 0.95;
    return r;
  });
  return [...ipv4, ...ipv6];
}

export async function routerCpu(b: BenchLab, opts: { bytes: number; runs: number }, log: (s: string) => void): Promise<MetricResult> {
  const sha = putDigest(opts.bytes);
  const gb = opts.bytes / 1e9;
  const napi = await threadedNapi(b, 'n1');
  type Cpu = { processesNs: number; packetNs: number; bridgePortNs: number };
  try {
    const variants = (['get', 'put'] as const).flatMap((op) => (['baton', 'haproxy'] as const).map((p) => `${p}:${op}` as const));
    const results = await runInterleaved(variants, opts.runs, async (variant, run) => {
      const [p, op] = variant.split(':') as [Path, Op];
      const pids = b.pids(b.node('n1').ns);
      const p0 = processCpuNs(pids);
      const t0 = processCpuNs([napi.node]);
      const x0 = processCpuNs([napi.peer]);
      const out = await transfer(b, p, op, opts.bytes, sha);
      const cpu: Cpu = { processesNs: processCpuNs(pids) - p0, packetNs: processCpuNs([napi.node]) - t0, bridgePortNs: processCpuNs([napi.peer]) - x0 };
      log(`n1 CPU run ${run + 1} ${variant}: ${out.gbps.toFixed(2)} Gb/s; n1 processes ${(cpu.processesNs / 1e6).toFixed(0)} ms + n1 packet work ${(cpu.packetNs / 1e6).toFixed(0)} ms`);
      return cpu;
    });
    const perGb = (p: 'baton' | 'haproxy') =>
      Array.from({ length: opts.runs }, (_, run) => (['get', 'put'] as const).reduce((a, op) => a + results[`${p}:${op}`][run]!.processesNs + results[`${p}:${op}`][run]!.packetNs, 0) / 1e6 / (2 * gb));
    const split = (p: 'baton' | 'haproxy') =>
      Object.fromEntries(
        (['get', 'put'] as const).map((op) => {
          const rs = results[`${p}:${op}`];
          return [
            op === 'get' ? 'download' : 'upload',
            {
              processesMsPerGb: round(median(rs.map((c) => c.processesNs / 1e6 / gb))),
              packetWorkMsPerGb: round(median(rs.map((c) => c.packetNs / 1e6 / gb))),
              bridgePortMsPerGb: round(median(rs.map((c) => c.bridgePortNs / 1e6 / gb))),
            },
          ];
        }),
      );
    const m = rateMetric(
      {
        id: 'router-cpu-per-gb',
        title: 'Distributor (n1) CPU per GB transferred',
        unit: 'ms CPU/GB',
        better: 'lower',
        goal: { text: 'Baton ≤ 0.1× HAProxy\'s', met: false },
        method: `a pass of its own after the throughput runs: ${opts.runs} runs × ${opts.bytes / 1e9} GB download and upload through Baton and through HAProxy, interleaved; n1's CPU = CPU time of every process in n1's namespace (per-thread schedstat: routers, batond, haproxy) + the CPU time of n1's packet work, which for this pass runs in its own kernel thread (threaded NAPI on n1's eth0; softirq time cannot be told apart per namespace otherwise). Download and upload together per run, divided by the bytes moved`,
        details: { baton: split('baton'), haproxy: split('haproxy'), note: 'bridgePortMsPerGb is the bridge-side veth of n1 (its pass program and the bridge): switch work, not counted as n1' },
      },
      perGb('baton'),
      [{ against: 'haproxy', runs: perGb('haproxy') }],
    );
    m.goal.met = m.ratio !== null && m.ratio <= 0.1;
    return m;
  } finally {
    await napi.off();
  }
}
