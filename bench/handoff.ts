// Handoff benchmarks: latency (one at a time, per step), rate (many clients at once), and the stall
// a client sees when it keeps sending while its connection moves.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { RoutingTable } from '../controller/agent/routing-table.js';
import { readLog } from '../controller/lab/demo.js';
import type { HopClock } from '../controller/transfer/messages.js';
import { type MetricResult, latencyMetric, median, percentile, rateMetric, round, runInterleaved, summarize } from './harness.js';
import { type BenchLab, LINE_PORT, logsFlushed, PLAIN_LINE_PORT, REF_DISTRIBUTOR, REF_PORT } from './lab.js';
import { processCpuNs, procStat } from './system.js';

interface HandoffsOut {
  trace?: Array<[number, number, number]>;
  ok: number;
  failed: number;
  errors: Record<string, number>;
  elapsedMs: number;
  nodes: Record<string, number>;
  handoffUs: number[];
}

type Timings = Record<'exportUs' | 'deltaUs' | 'offerRttUs' | 'importUs' | 'freezeUs' | 'commitRttUs' | 'routeUs' | 'totalUs', number> & { clock?: Hops };

/** The readings a done carries (liveTx only when live went with done), with the routing application's (the SDK's HandoffTimings). */
type Hops = Required<Omit<HopClock, 'liveTx'>> & Pick<HopClock, 'liveTx'> & { handoffTx: number; doneRx: number };

/** The line router's per-handoff timings (its 'handed-off' log lines), from index `from` on, with the client's address:port. */
function routerTimings(b: BenchLab, from: number): Array<Timings & { client: string }> {
  return readLog(b.lab, `${b.lab.distributor}-line-router`)
    .filter((l) => l.event === 'handed-off' && l.timings)
    .slice(from)
    .map((l) => ({ ...(l.timings as Timings), client: String(l.client) }));
}

/** The end of a trace, from the line targets' 'resumed' log lines, by client address:port. */
type TargetClock = { liveRx: number; transferredTx: number; transferredRx: number };
function targetClocks(b: BenchLab): Map<string, TargetClock> {
  const out = new Map<string, TargetClock>();
  for (const n of b.lab.nodes.filter((x) => x.name !== b.lab.distributor)) {
    for (const l of readLog(b.lab, `${n.name}-line-target`)) {
      const c = l.client as { address: string; port: number } | undefined;
      if (l.event === 'resumed' && c && l.clock) out.set(`${c.address}:${c.port}`, l.clock as TargetClock);
    }
  }
  return out;
}

/** One handoff's monotonic clock readings, every process's (one machine, one clock): the client's USER sent and OK received, and the messages' (HopClock, TargetClock). */
type Trace = Hops & TargetClock & { userTx: number; okRx: number };

/**
 * The critical path hop by hop, from the clock readings: each row is the time between two
 * consecutive readings, so the rows add up to the client's view (USER sent → OK received).
 */
export const HOPS: Array<[string, (t: Trace) => number]> = [
  ['client → routing application (USER), its work until handoff() sends', (t) => t.handoffTx - t.userTx],
  ['routing application → n1 batond: handoff (descriptor, then the message)', (t) => t.handoffRx - t.handoffTx],
  ['n1 batond: check, admit, export', (t) => t.offerTx - t.handoffRx],
  ['n1 batond → n2 batond: offer (TLS)', (t) => t.offerRx - t.offerTx],
  ['n2 batond: checks, import', (t) => t.acceptTx - t.offerRx],
  ['n2 batond → n1 batond: accept (TLS)', (t) => t.acceptRx - t.acceptTx],
  ['n1 batond: freeze, delta read, (commit round trip), route, final clock', (t) => (t.liveTx ?? t.doneTx) - t.acceptRx],
  ['n1 batond → n2 batond: live (TLS)', (t) => t.liveRx - (t.liveTx ?? t.doneTx)],
  ['n2 batond: leaves repair mode, passes the descriptor', (t) => t.transferredTx - t.liveRx],
  ['n2 batond → target application: transferred (descriptor, then the message)', (t) => t.transferredRx - t.transferredTx],
  ['target application: takes the socket, greets the client; → client (OK)', (t) => t.okRx - t.transferredRx],
];

/** The handoffs whose router log line and client trace name the same connection: their traces. */
function traces(logged: Array<Timings & { client: string }>, client: Array<[number, number, number]>, clientAddress: string, targets: Map<string, TargetClock>): Trace[] {
  const byPort = new Map(client.map(([port, userTx, okRx]) => [`${clientAddress}:${port}`, { userTx, okRx }]));
  const out: Trace[] = [];
  for (const l of logged) {
    const c = byPort.get(l.client);
    const t = targets.get(l.client);
    if (c && t && l.clock) out.push({ ...l.clock, ...t, ...c });
  }
  return out;
}

function handedOffCount(b: BenchLab): number {
  return readLog(b.lab, `${b.lab.distributor}-line-router`).filter((l) => l.event === 'handed-off').length;
}

type Variant = 'baton' | 'reference';

/**
 * The same client, to Baton's line router or to the reference distributor (bench/reference/handoff.c),
 * at the DVIPA's IPv4 address, or its IPv6 one (Baton only: the reference speaks IPv4).
 */
function handoffs(b: BenchLab, count: number, concurrency: number, timeoutMs: number, variant: Variant = 'baton', trace = false, family: 4 | 6 = 4): Promise<HandoffsOut> {
  const port = variant === 'baton' ? LINE_PORT : REF_PORT;
  const host = family === 6 ? b.lab.dvipa.address6 : b.lab.dvipa.address;
  return b.client<HandoffsOut>(['handoffs', '--host', host, '--port', String(port), '--count', String(count), '--concurrency', String(concurrency), ...(trace ? ['--trace'] : [])], timeoutMs);
}

function pidOf(b: BenchLab, name: string): number {
  return Number(fs.readFileSync(path.join(b.lab.runDir, `${name}.pid`), 'utf8'));
}

/**
 * The reference distributor's handoff times since the last call: it prints them as one JSON line
 * on SIGUSR1 (USER read → routing-table entry written, µs) and starts a new list.
 */
async function referenceSamples(b: BenchLab): Promise<{ samplesUs: number[]; failed: number }> {
  const log = path.join(b.lab.runDir, `${REF_DISTRIBUTOR}.log`);
  // Whole lines only: a long line can reach the file in more than one write.
  const lines = () => {
    const text = fs.readFileSync(log, 'utf8');
    return text.slice(0, text.lastIndexOf('\n') + 1).split('\n').filter((l) => l.startsWith('{"samplesUs"'));
  };
  const before = lines().length;
  process.kill(pidOf(b, REF_DISTRIBUTOR), 'SIGUSR1');
  for (let i = 0; i < 100; i++) {
    const all = lines();
    if (all.length > before) return JSON.parse(all[all.length - 1]!) as { samplesUs: number[]; failed: number };
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${REF_DISTRIBUTOR} printed no samples within 2 s of SIGUSR1`);
}

export const LOCAL_STEP = 'router ↔ its batond: 2 messages (handoff, done) and the work between steps (rest of total)';

/** Steps as the issue names them, from the SDK's timings; what is left of the total is messaging between the router and its batond. */
const STEPS: Array<[string, (t: Timings) => number]> = [
  ['export (snapshot, n1 batond)', (t) => t.exportUs],
  ['transfer message (offer round trip minus import)', (t) => t.offerRttUs - t.importUs],
  ['import (n2 batond)', (t) => t.importUs],
  ['freeze (map update)', (t) => t.freezeUs],
  ['delta read', (t) => t.deltaUs],
  ['commit round trip (0 when there was nothing to commit)', (t) => t.commitRttUs],
  ['route install (map update)', (t) => t.routeUs],
  [LOCAL_STEP, (t) => t.totalUs - t.exportUs - t.offerRttUs - t.freezeUs - t.deltaUs - t.commitRttUs - t.routeUs],
  ['total handoff()', (t) => t.totalUs],
];

export async function handoffLatency(b: BenchLab, opts: { runs: number; perRun: number; warmup: number }, log: (s: string) => void): Promise<MetricResult[]> {
  // The first handoffs of each process run code V8 has not optimised yet: not what is measured.
  // 50 sequential ones were not enough (the five runs after them fell from 3.6 to 2.5 ms, one
  // after the other); a thousand, 16 at a time, take about a second.
  await handoffs(b, opts.warmup, 16, 60_000);
  await handoffs(b, opts.warmup / 2, 16, 60_000, 'baton', false, 6);
  await handoffs(b, opts.warmup, 16, 60_000, 'reference');
  await referenceSamples(b);
  const runs: Timings[][] = [];
  const client: number[][] = [];
  const traced: Trace[] = [];
  const refRuns: number[][] = [];
  const refClient: number[][] = [];
  const v6Runs: number[][] = [];
  const v6Client: number[][] = [];
  let failed = 0;
  let v6Failed = 0;
  let refFailed = 0;
  // Interleaved with the reference handoff (bench/reference/) and with Baton over IPv6: Baton,
  // Baton over IPv6, reference, Baton, …
  await runInterleaved(['baton', 'baton-ipv6', 'reference'] as const, opts.runs, async (variant) => {
    if (variant === 'baton-ipv6') {
      const before = handedOffCount(b);
      const out = await handoffs(b, opts.perRun, 1, 120_000, 'baton', false, 6);
      await logsFlushed();
      v6Failed += out.failed;
      v6Runs.push(routerTimings(b, before).map((t) => t.totalUs));
      v6Client.push(out.handoffUs);
      return;
    }
    if (variant === 'reference') {
      const out = await handoffs(b, opts.perRun, 1, 120_000, 'reference');
      const ref = await referenceSamples(b);
      refFailed += out.failed + ref.failed;
      refRuns.push(ref.samplesUs);
      refClient.push(out.handoffUs);
      return;
    }
    const before = handedOffCount(b);
    const out = await handoffs(b, opts.perRun, 1, 120_000, 'baton', true);
    await logsFlushed();
    failed += out.failed;
    const logged = routerTimings(b, before);
    runs.push(logged);
    client.push(out.handoffUs);
    traced.push(...traces(logged, out.trace ?? [], b.lab.client.address, targetClocks(b)));
  });
  const hops = Object.fromEntries(
    HOPS.map(([name, f]) => {
      const xs = traced.map(f);
      return [name, { median: round(median(xs)), p99: round(percentile(xs, 99)) }];
    }),
  );
  const all = runs.flat();
  const steps = Object.fromEntries(
    STEPS.map(([name, f]) => {
      const xs = all.map(f);
      return [name, { median: round(median(xs)), p99: round(percentile(xs, 99)) }];
    }),
  );
  const total = summarize(all.map((t) => t.totalUs));
  const ref = summarize(refRuns.flat());
  log(`handoff latency: ${all.length} handoffs, total median ${total.median} µs, p99 ${total.p99} µs; reference median ${ref.median} µs, p99 ${ref.p99} µs`);
  const m = latencyMetric(
    {
      id: 'handoff-latency',
      title: 'Handoff latency',
      unit: 'µs',
      better: 'lower',
      goal: { text: '≤ 2× the reference handoff: p50 ≤ 2× its p50, p99 ≤ 4× its p99', met: total.median <= 2 * ref.median && total.p99 <= 4 * ref.p99 },
      method: `${opts.runs} runs × ${opts.perRun} handoffs one after another (line protocol, users alice→n2 and bob→n3 in turn) after ${opts.warmup} unmeasured ones (16 at a time); time from the routing application's handoff() call until batond reports the route installed (done: the SDK's totalUs), with the per-step timings (n1's batond does every socket step and reports them in done) from the router's log. Not counted: the target going live, one more one-way message (live, sent just before done when the old socket can send nothing more; otherwise after the router reports its clock at the close: two more), and one that hands the socket to the target application; the hop-by-hop trace below follows the handoff to the client's OK. Reference: the same client and count, interleaved run by run, logging in to the reference handoff (bench/reference/handoff.c, two C processes: export on n1, one TCP round trip to an importer on n2 that reinstates the socket, the routing-table entry written on n1, then live; no TLS, JSON, checks or logging), timed from its USER line read to the entry written`,
      details: {
        hops,
        traced: traced.length,
        tracedClientViewUs: summarize(traced.map((t) => t.okRx - t.userTx)),
        p99Ratio: round(total.p99 / ref.p99),
        referenceFailed: refFailed,
        referenceClientViewUs: { note: 'USER sent → OK from n2 received, at the client, through the reference', ...summarize(refClient.flat()) },
        steps,
        failed,
        commitsSkipped: all.filter((t) => t.commitRttUs === 0).length,
        clientViewUs: { note: 'USER sent → OK from the target received, at the client', ...summarize(client.flat()) },
      },
    },
    runs.map((r) => r.map((t) => t.totalUs)),
    [{ against: 'reference', runs: refRuns }],
  );
  const v4Totals = runs.map((r) => r.map((t) => t.totalUs));
  const v6 = latencyMetric(
    {
      id: 'handoff-latency-ipv6',
      title: 'Handoff latency over IPv6',
      unit: 'µs',
      better: 'lower',
      goal: { text: 'as over IPv4: p50 ≤ 1.1× IPv4\'s in the same runs', met: false },
      method: `${opts.runs} runs × ${opts.perRun} handoffs one after another to the DVIPA's IPv6 address, interleaved run by run with the IPv4 runs of the handoff latency above (and the reference); the same client, routing application, span (handoff() until the route is installed) and steps; the reference handoff speaks IPv4 only`,
      details: {
        failed: v6Failed,
        clientViewUs: { note: 'USER sent → OK from the target received, at the client', ...summarize(v6Client.flat()) },
        ipv4ClientViewUs: summarize(client.flat()),
      },
    },
    v6Runs,
    [
      { against: 'IPv4, same runs', runs: v4Totals },
      { against: 'reference', runs: refRuns },
    ],
  );
  v6.goal.met = (v6.comparisons[0]?.ratio ?? Infinity) <= 1.1;
  log(`handoff latency over IPv6: median ${v6.median} µs, p99 ${v6.p99} µs (IPv4 ${m.median} µs)`);
  return [m, v6];
}

export async function handoffRate(b: BenchLab, opts: { runs: number; connections: number; concurrency: number }, log: (s: string) => void): Promise<MetricResult[]> {
  const rates: Record<Variant, number[]> = { baton: [], reference: [] };
  const failed: Record<Variant, number> = { baton: 0, reference: 0 };
  const errors: Record<string, number> = {};
  const latencies: Record<Variant, number[]> = { baton: [], reference: [] };
  const busy: Record<Variant, number[]> = { baton: [], reference: [] };
  // Where the CPU goes: each lab process (schedstat, all threads), the kernel's softirq work (every
  // namespace's packets), and the rest of the machine's busy time (the client, the kernel's work in
  // process context that schedstat does not charge to a lab process, anything else).
  const processes = labProcessPids(b);
  const blank = () => Object.fromEntries([...Object.keys(processes), 'softirq', 'machine'].map((k) => [k, 0])) as Record<string, number>;
  const cpuNs: Record<Variant, Record<string, number>> = { baton: blank(), reference: blank() };
  const handedOff: Record<Variant, number> = { baton: 0, reference: 0 };
  await handoffs(b, 1000, 16, 60_000, 'reference');
  await referenceSamples(b);
  // Interleaved with the reference handoff: Baton, reference, Baton, …
  await runInterleaved(['baton', 'reference'] as const, opts.runs, async (v, run) => {
    const s0 = procStat();
    const p0 = Object.fromEntries(Object.entries(processes).map(([name, pid]) => [name, processCpuNs([pid])]));
    const t0 = performance.now();
    const out = await handoffs(b, opts.connections, opts.concurrency, 180_000, v);
    const s1 = procStat();
    for (const [name, pid] of Object.entries(processes)) cpuNs[v][name]! += processCpuNs([pid]) - p0[name]!;
    cpuNs[v].softirq! += s1.softirqNs - s0.softirqNs;
    cpuNs[v].machine! += s1.busyNs - s0.busyNs;
    handedOff[v] += out.ok;
    busy[v].push((100 * (s1.busyNs - s0.busyNs)) / ((performance.now() - t0) * 1e6 * os.cpus().length));
    rates[v].push(out.ok / (out.elapsedMs / 1000));
    failed[v] += out.failed;
    if (v === 'baton') for (const [k, x] of Object.entries(out.errors)) errors[k] = (errors[k] ?? 0) + x;
    else failed.reference += (await referenceSamples(b)).failed;
    latencies[v].push(...out.handoffUs);
    log(`handoff rate run ${run + 1} (${v}): ${out.ok} ok, ${out.failed} failed in ${Math.round(out.elapsedMs)} ms = ${Math.round(rates[v][run]!)}/s`);
  });
  const rate = rateMetric(
    {
      id: 'handoff-rate',
      title: 'Handoff rate',
      unit: 'handoffs/s',
      better: 'higher',
      goal: { text: '≥ 5,000/s, 0 failures', met: median(rates.baton) >= 5000 && failed.baton === 0 },
      method: `${opts.runs} runs × ${opts.connections} connections, ${opts.concurrency} in flight at once from the client namespace; each connects, logs in (one handoff), waits for the target's OK and closes; rate = successful handoffs / wall time of the run. Reference: the same client, interleaved run by run, logging in to the reference handoff (bench/reference/handoff.c)`,
      details: {
        failed: failed.baton,
        errors,
        referenceFailed: failed.reference,
        connectionsPerRun: opts.connections,
        concurrency: opts.concurrency,
        clientViewUnderLoadUs: summarize(latencies.baton),
        referenceClientViewUnderLoadUs: summarize(latencies.reference),
        machineBusyPct: round(median(busy.baton), 3),
        referenceMachineBusyPct: round(median(busy.reference), 3),
        cpus: os.cpus().length,
      },
    },
    rates.baton,
    [{ against: 'reference', runs: rates.reference }],
  );
  const perHandoff = { baton: cpuPerHandoff(cpuNs.baton, handedOff.baton), reference: cpuPerHandoff(cpuNs.reference, handedOff.reference) };
  const cpu = rateMetric(
    {
      id: 'handoff-cpu',
      title: 'CPU per handoff, every process',
      unit: 'µs CPU',
      better: 'lower',
      goal: { text: '≤ 300 µs', met: perHandoff.baton.total! <= 300 },
      method: `the rate runs above: the machine's busy time (/proc/stat) over each variant's runs divided by its successful handoffs, split by lab process (each one's threads' schedstat), the kernel's softirq work (every namespace's packets) and the rest (the bench client, which connects, logs in and closes in Node.js for both variants, and kernel work outside these processes)`,
      details: { baton: perHandoff.baton, reference: perHandoff.reference },
    },
    [perHandoff.baton.total!],
    [{ against: 'reference', runs: [perHandoff.reference.total!] }],
  );
  return [rate, cpu];
}

/** Every process the lab started (batonds, routers, targets, the suite's baselines), by name. */
function labProcessPids(b: BenchLab): Record<string, number> {
  const out: Record<string, number> = {};
  for (const f of fs.readdirSync(b.lab.runDir)) {
    if (!f.endsWith('.pid')) continue;
    const pid = Number(fs.readFileSync(path.join(b.lab.runDir, f), 'utf8'));
    if (Number.isInteger(pid) && fs.existsSync(`/proc/${pid}`)) out[f.slice(0, -'.pid'.length)] = pid;
  }
  return out;
}

/** µs of CPU per handoff: each process that did any work, softirq, and what the machine spent besides. */
function cpuPerHandoff(cpuNs: Record<string, number>, handedOff: number): Record<string, number> {
  const { softirq = 0, machine = 0, ...byProcess } = cpuNs;
  const us = (ns: number) => round(ns / 1000 / handedOff, 3);
  const out: Record<string, number> = {};
  for (const [name, ns] of Object.entries(byProcess).sort((a, b) => b[1] - a[1])) if (us(ns) >= 1) out[name] = us(ns);
  const processes = Object.values(byProcess).reduce((a, x) => a + x, 0);
  out['kernel softirq (every namespace\'s packets)'] = us(softirq);
  out['the rest: the client, kernel work outside these processes'] = us(Math.max(0, machine - processes - softirq));
  out.total = us(machine);
  return out;
}

interface StallOut {
  results: Array<{ firstByteUs: number; longestWaitUs: number; handoffUs: number; putsDuringHandoff: number; stallUs: number }>;
}

async function clientRetransmits(b: BenchLab): Promise<number> {
  const out = await b.exec(b.lab.client.ns, ['nstat', '-asz', 'TcpRetransSegs']);
  return Number(/TcpRetransSegs\s+(\d+)/.exec(out)?.[1] ?? NaN);
}

export async function stall(b: BenchLab, opts: { runs: number; perRun: number; puts: number; measured: number }, log: (s: string) => void): Promise<MetricResult> {
  const n2 = b.node('n2');
  const routes = RoutingTable.openPinned(`/sys/fs/bpf/baton/${b.lab.prefix}-${b.lab.distributor}`);
  const frozenDrops = () => Number(routes.stats().droppedFrozen.packets);
  const counters = { baton: { retransmits: 0, frozenDrops: 0 }, direct: { retransmits: 0, frozenDrops: 0 } };
  try {
    const results = await runInterleaved(['baton', 'direct'] as const, opts.runs, async (variant) => {
      const r0 = await clientRetransmits(b);
      const d0 = frozenDrops();
      const args =
        variant === 'baton'
          ? ['--host', b.lab.dvipa.address, '--port', String(LINE_PORT), '--login', '--user', 'alice']
          : ['--host', n2.address, '--port', String(PLAIN_LINE_PORT)];
      const out = await b.client<StallOut>(['stall', ...args, '--count', String(opts.perRun), '--puts', String(opts.puts), '--measured', String(opts.measured)], 120_000);
      counters[variant].retransmits += (await clientRetransmits(b)) - r0;
      counters[variant].frozenDrops += frozenDrops() - d0;
      return out.results;
    });
    const ms = (v: 'baton' | 'direct', f: (r: StallOut['results'][number]) => number) => results[v].map((run) => run.map((r) => f(r) / 1000));
    const stalls = ms('baton', (r) => r.stallUs);
    const m = latencyMetric(
      {
        id: 'in-flight-stall',
        title: 'Stall of in-flight data',
        unit: 'ms',
        better: 'lower',
        goal: { text: 'p99 ≤ 20 ms', met: percentile(stalls.flat(), 99) <= 20 },
        method: `${opts.runs} runs × ${opts.perRun} connections, one after another; each sends USER and, without waiting, a 1 KiB PUT every ~1 ms (${opts.puts} in all), so PUTs reach n1 before, during and after the handoff, and the freeze drops those arriving in its window. The handoff is over for the client when the target's OK greeting arrives; per connection, the stall is the time from that greeting until the last PUT sent before it has its SHA256 answer: close to nothing when every in-flight byte was carried over, a retransmission timeout (200 ms or more) when a frozen segment has to wait for one`,
        details: {
          stallMs: summarize(stalls.flat()),
          longestWaitOfAPutMs: {
            note: `any of the first ${opts.measured} PUTs, from its sending to its answer; for Baton it includes the handoff itself. direct: the same client on a direct connection to a plain server on n2, in interleaved runs`,
            baton: summarize(ms('baton', (r) => r.longestWaitUs).flat()),
            direct: summarize(ms('direct', (r) => r.longestWaitUs).flat()),
          },
          firstAnswerAfterUserMs: summarize(ms('baton', (r) => r.firstByteUs).flat()),
          handoffClientViewMs: summarize(ms('baton', (r) => r.handoffUs).flat()),
          putsSentDuringHandoff: summarize(results.baton.flat().map((r) => r.putsDuringHandoff)),
          clientRetransmittedSegments: { baton: counters.baton.retransmits, direct: counters.direct.retransmits },
          packetsDroppedByFreeze: counters.baton.frozenDrops,
        },
      },
      stalls,
    );
    log(`stall: median ${m.median} ms, p99 ${m.p99} ms; freeze drops ${counters.baton.frozenDrops}, client retransmits ${counters.baton.retransmits}`);
    return m;
  } finally {
    routes.close();
  }
}
