// Backup distributor benchmarks (docs/operations.md, "Backup distributor"), in labs of their own
// with n2 as backup (keepalived on n1 and n2, n1 preferred), since n1 dies in them:
//   takeover     200 handed-off connections stream both ways through n1; every process in n1's
//                namespace is SIGKILLed and its link set down; keepalived on n2 takes the DVIPA
//                and n2 steers with the replica n1 streamed to it. Per connection, the longest
//                round across it; the time until n2's batond is active and until n2 hands off a
//                new connection. A fresh lab per run.
//   replication  n1's table filled with synthetic entries; n2's batond restarted with an empty
//                replica, so that n1 streams it a snapshot of all of them: entries a second, and
//                n1's batond CPU per entry.
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { RECONCILE_EVERY_MS } from '../controller/agent/route-service.js';
import { RoutingTable } from '../controller/agent/routing-table.js';
import { connectionId, type FlowKey } from '../controller/flow.js';
import { LINE_PORT } from '../controller/lab/cluster.js';
import { inClient, readLog } from '../controller/lab/demo.js';
import { until } from '../controller/lab/wait.js';
import { intToIp, ipToInt } from '../controller/lab/description.js';
import { killNode } from '../controller/lab/lab.js';
import { startProcess, stopProcess } from '../controller/lab/processes.js';
import { repoRoot } from '../controller/paths.js';
import { type MetricResult, latencyMetric, median, percentile, rateMetric, round, summarize } from './harness.js';
import { type BenchLab, logsFlushed, startBenchLab } from './lab.js';
import { processCpuNs } from './system.js';

const ACTIVE = "active distributor: the routing table is this node's";
const ATTACHED = 'replication stream attached: snapshot starts';
const SYNCED = 'replica synced: the snapshot is applied';
/** The first-served client starts a new connection this often until one is served. */
const ATTEMPT_EVERY_MS = 20;

type LogLine = ReturnType<typeof readLog>[number];


/**
 * The lines a lab process's log gained since the last read: polled every few ms without parsing
 * the whole file each time. A log that shrank was truncated (the process started again): read
 * from its start.
 */
class LogTail {
  private offset = 0;
  private rest = Buffer.alloc(0);
  constructor(private readonly file: string) {}

  read(): LogLine[] {
    let fd: number;
    try {
      fd = fs.openSync(this.file, 'r');
    } catch {
      return [];
    }
    try {
      const size = fs.fstatSync(fd).size;
      if (size < this.offset) {
        this.offset = 0;
        this.rest = Buffer.alloc(0);
      }
      const buf = Buffer.alloc(size - this.offset);
      const n = fs.readSync(fd, buf, 0, buf.length, this.offset);
      this.offset += n;
      const text = Buffer.concat([this.rest, buf.subarray(0, n)]);
      const end = text.lastIndexOf(0x0a);
      this.rest = end < 0 ? text : text.subarray(end + 1);
      if (end < 0) return [];
      return text
        .subarray(0, end)
        .toString('utf8')
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as LogLine);
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Reads until a line matches; the first one that does. */
  async next(what: string, match: (l: LogLine) => boolean, timeoutMs: number, everyMs = 5): Promise<LogLine> {
    let found: LogLine | undefined;
    await until(what, () => (found = this.read().find(match)) !== undefined, timeoutMs, everyMs);
    return found!;
  }
}

const pinDir = (b: BenchLab, node: string) => `/sys/fs/bpf/baton/${b.lab.prefix}-${node}`;

function pidOf(b: BenchLab, name: string): number {
  const pid = Number(fs.readFileSync(path.join(b.lab.runDir, `${name}.pid`), 'utf8'));
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`no pid for ${name}`);
  return pid;
}

/** A table's entries as `connection → state node`, to compare two tables key by key. */
function keysOf(t: RoutingTable): Map<string, string> {
  return new Map([...t.entries()].map(([k, e]) => [connectionId(k), `${e.state} ${e.targetNode}`]));
}

// ---- takeover -----------------------------------------------------------------------------------

interface StreamResult {
  conn: number;
  ok: boolean;
  error?: string;
  rounds: number;
  get_bytes: number;
  put_bytes: number;
  round_ms?: Array<[number, number]>;
}

interface FirstServed {
  ok: boolean;
  startedAtMs: number;
  servedAtMs?: number;
  attemptStartedAtMs?: number;
  attempts: number;
  errors: Record<string, number>;
}

interface TakeoverRun {
  /** Per connection, ms: the longest round under way between n1's death and 1 s after n2 was active. */
  stallMs: number[];
  /** Per connection, ms: the longest round in a window as long, just before the kill. */
  beforeMs: number[];
  connections: number;
  failed: number;
  errors: string[];
  /** Connections that did no round after the takeover (carried on in name only). */
  noRoundAfter: number;
  /** ms after the kill: n2's batond active, n2's line router's first handoff, the client's greeting. */
  n2ActiveMs: number;
  firstHandoffMs: number;
  clientServedMs: number;
  attempts: number;
  attemptErrors: Record<string, number>;
  /** n2's replica equal to n1's table before the kill, ms after the last of the handoffs was seen. */
  replicaEqualMs: number;
  /** How long killNode took (link down, then SIGKILL to every process), ms. */
  killMs: number;
}

export interface TakeoverOptions {
  runs: number;
  connections: number;
  /** Bytes each way per round, one round every intervalS per connection. */
  roundBytes: number;
  intervalS: number;
  /** How long the streams go on once n2 is active. */
  afterMs: number;
}

async function takeoverRun(baseDir: string, run: number, opts: TakeoverOptions, log: (s: string) => void): Promise<TakeoverRun> {
  const b = await startBenchLab({ prefix: `btbtk${run + 1}`, dir: path.join(baseDir, `takeover-${run + 1}`), log, backup: true, baselines: false });
  let n1Table: RoutingTable | undefined;
  let n2Table: RoutingTable | undefined;
  try {
    const { lab } = b;
    await until('n1 active', () => readLog(lab, 'n1-batond').some((l) => l.msg === ACTIVE), 15_000, 50);
    n1Table = RoutingTable.openPinned(pinDir(b, 'n1'));
    n2Table = RoutingTable.openPinned(pinDir(b, 'n2'));
    const stopFile = path.join(lab.runDir, 'streams.stop');
    const startFile = path.join(lab.runDir, 'first-served.start');
    // The run directory is the previous run's: its signal files must not be taken for this one's.
    for (const f of [stopFile, startFile]) fs.rmSync(f, { force: true });
    const bytes = String(opts.roundBytes);
    // The takeover test's client (test/integration/ha/takeover.test.ts): one python process, every
    // connection logged in through n1's line router and handed off to n2 (alice) or n3 (bob).
    const streams = inClient(
      lab,
      ['python3', path.join(repoRoot(), 'examples/clients/line_streams.py'), '--host', lab.dvipa.address, '--port', String(LINE_PORT),
        '--connections', String(opts.connections), '--get', bytes, '--put', bytes, '--interval', String(opts.intervalS), '--until-file', stopFile, '--seconds', '60', '--timeout', '20'],
      90_000,
    );
    // A client that stops early (it cannot connect, a connection failed) ends the wait for its handoffs with its own words.
    let streamsEnded: Awaited<typeof streams> | undefined;
    void streams.then((r) => (streamsEnded = r));
    const streamsAlive = () => {
      if (streamsEnded) throw new Error(`the streams client ended early (exit ${streamsEnded.code}): ${(streamsEnded.stderr || streamsEnded.stdout).slice(-1500)}`);
      return true;
    };
    let killAt = 0;
    let killMs = 0;
    let n2ActiveAt = 0;
    let first: FirstServed | undefined;
    let replicaEqualMs = 0;
    try {
      const handedOff = () => readLog(lab, 'n1-line-router').filter((l) => l.event === 'handed-off').length;
      await until(() => `${opts.connections} handoffs (${handedOff()} so far)`, () => streamsAlive() && handedOff() >= opts.connections, 60_000, 100);
      // n2's replica holds every entry of n1's table, state and node included: what n2 will steer with.
      const t0 = Date.now();
      let diff = '';
      await until(
        () => `n2's replica equal to n1's table (${diff})`,
        () => {
          const [active, replica] = [keysOf(n1Table!), keysOf(n2Table!)];
          const differ = [...active].filter(([k, v]) => replica.get(k) !== v).length + [...replica.keys()].filter((k) => !active.has(k)).length;
          diff = `${active.size} entries on n1, ${replica.size} on n2, ${differ} missing, different or extra`;
          return active.size >= opts.connections && differ === 0;
        },
        10_000,
        50,
      );
      replicaEqualMs = Date.now() - t0;
      // A second of rounds in the steady state, for the window before the kill.
      await sleep(1000);
      // The client of the new connections is started before the kill (its own start, a Node
      // process, is not timed) and makes its first attempt once n1 is dead: once killNode has set
      // its link down and killed its processes, when the start file appears.
      const client = b.client<FirstServed>(
        ['first-served', '--host', lab.dvipa.address, '--port', String(LINE_PORT), '--user', 'bob', '--expect-node', 'n3', '--every-ms', String(ATTEMPT_EVERY_MS), '--attempt-timeout-ms', '3000', '--bound-ms', '10000', '--start-file', startFile],
        40_000,
      );
      client.catch(() => undefined); // awaited below; a failure before that must not go unhandled
      await sleep(500);
      killAt = Date.now();
      await killNode(lab, 'n1');
      killMs = Date.now() - killAt;
      fs.writeFileSync(startFile, '');
      const n2Log = new LogTail(path.join(lab.runDir, 'n2-batond.log'));
      n2ActiveAt = (await n2Log.next('n2 active', (l) => l.msg === ACTIVE, 10_000, 10)).time;
      // A client that failed leaves the run's other numbers standing: its own is missing (NaN).
      first = await client.catch((err: unknown) => {
        log(`takeover run ${run + 1}: the first-served client failed: ${(err as Error).message}`);
        return undefined;
      });
      await sleep(opts.afterMs);
    } finally {
      fs.writeFileSync(stopFile, '');
    }
    const out = await streams;
    const lines = out.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as StreamResult & { summary?: boolean });
    if (!lines.some((l) => l.summary)) throw new Error(`the streams client gave no summary (exit ${out.code}): ${out.stderr.slice(-1500)}`);
    const results = lines.filter((l) => !l.summary);
    // The takeover test's window: a round that ended after the kill and began before n2 had been
    // active for a second. Rounds are paced, so a connection between two rounds at the kill stalls
    // in the next one.
    const windowEnd = n2ActiveAt + 1000;
    const longest = (r: StreamResult, from: number, to: number) => Math.max(0, ...(r.round_ms ?? []).filter(([s, e]) => e >= from && s <= to).map(([s, e]) => e - s));
    const stallMs = results.map((r) => longest(r, killAt, windowEnd));
    // The same connections, a window as long, ending just before the kill: what a round takes anyway.
    const beforeMs = results.map((r) => longest(r, killAt - (windowEnd - killAt), killAt - 1));
    const firstHandoff = readLog(lab, 'n2-line-router').find((l) => l.event === 'handed-off' && l.time >= killAt);
    const failed = results.filter((r) => !r.ok || r.get_bytes + r.put_bytes !== r.rounds * 2 * opts.roundBytes);
    const r: TakeoverRun = {
      stallMs,
      beforeMs,
      connections: results.length,
      failed: failed.length + Math.max(0, opts.connections - results.length),
      errors: [...new Set(failed.map((f) => String(f.error ?? 'bytes')))].slice(0, 5),
      noRoundAfter: results.filter((x) => !(x.round_ms ?? []).some(([s]) => s > n2ActiveAt)).length,
      n2ActiveMs: n2ActiveAt - killAt,
      firstHandoffMs: firstHandoff ? firstHandoff.time - killAt : NaN,
      clientServedMs: first?.ok && first.servedAtMs ? first.servedAtMs - killAt : NaN,
      attempts: first?.attempts ?? 0,
      attemptErrors: first?.errors ?? {},
      replicaEqualMs,
      killMs,
    };
    log(
      `takeover run ${run + 1}: ${opts.connections - r.failed}/${opts.connections} connections carried on; n2 active after ${r.n2ActiveMs} ms, ` +
        `first new connection handed off by n2 after ${r.firstHandoffMs} ms (client greeted after ${r.clientServedMs} ms, attempt ${first?.attempts ?? 0}); ` +
        `stall per connection median ${median(stallMs)} ms, p99 ${percentile(stallMs, 99)} ms, max ${Math.max(...stallMs)} ms (before the kill: median ${median(beforeMs)} ms)`,
    );
    return r;
  } finally {
    n1Table?.close();
    n2Table?.close();
    await b.down();
  }
}

// ---- replication ---------------------------------------------------------------------------------

/** The i-th synthetic flow: clients in 198.18.0.0/15 (benchmarking addresses), 50,000 ports each. */
function syntheticFlow(i: number, vip: string): FlowKey {
  return { family: 4, clientAddress: intToIp(ipToInt('198.18.0.0') + Math.floor(i / 50_000)), clientPort: 1024 + (i % 50_000), vipAddress: vip, vipPort: LINE_PORT };
}

/** Removes every entry of a table (a few thousand keys at a time); how many. */
function clear(t: RoutingTable): number {
  let removed = 0;
  for (;;) {
    const { keys } = t.keysAfter(null, 4096);
    if (keys.length === 0) return removed;
    for (const k of keys) if (t.remove(k)) removed++;
  }
}

/** CPU time (ns) of a set of processes, sampled every few ms: read at any instant by interpolation. */
class CpuSampler {
  private readonly samples: Array<{ at: number; ns: number[] }> = [];
  private readonly timer: NodeJS.Timeout;
  constructor(private readonly pids: () => number[], everyMs = 5) {
    this.sample();
    this.timer = setInterval(() => this.sample(), everyMs);
  }

  sample(): void {
    this.samples.push({ at: Date.now(), ns: this.pids().map((p) => processCpuNs([p])) });
  }

  stop(): void {
    clearInterval(this.timer);
    this.sample();
  }

  /** Process i's CPU ns at epoch ms t, linear between the samples around it. */
  at(i: number, t: number): number {
    const s = this.samples;
    const j = s.findIndex((x) => x.at >= t);
    if (j <= 0) return (j === 0 ? s[0]! : s[s.length - 1]!).ns[i] ?? NaN;
    const [a, b] = [s[j - 1]!, s[j]!];
    const f = b.at === a.at ? 1 : (t - a.at) / (b.at - a.at);
    return a.ns[i]! + f * (b.ns[i]! - a.ns[i]!);
  }
}

interface ReplicationRun {
  entries: number;
  /** From n1's "stream attached" to n2's "replica synced", ms (log clocks: the same machine's). */
  ms: number;
  entriesPerS: number;
  n1CpuUsPerEntry: number;
  n2CpuUsPerEntry: number;
  /** n1's own count of the snapshot's duration (its last page sent), ms. */
  sentMs: number;
  /** n2's batond start until n1 attached its stream (n2's start, its ready, n1's next heartbeat), ms. */
  attachAfterStartMs: number;
  /** n2's batond start until its replica equalled n1's table in size, ms. */
  fromStartMs: number;
  /** Since n1's batond became active, s: its reconciler walks the table every 30 s. */
  sinceActiveS: number;
}

export interface ReplicationOptions {
  runs: number;
  entries: number;
}

async function replication(baseDir: string, opts: ReplicationOptions, log: (s: string) => void): Promise<{ runs: ReplicationRun[]; fillS: number; activateMs: number; equal: boolean }> {
  const b = await startBenchLab({ prefix: 'btbrep', dir: path.join(baseDir, 'replication'), log, backup: true, baselines: false, examples: false });
  const { lab } = b;
  let n1Table: RoutingTable | undefined;
  let n2Table: RoutingTable | undefined;
  try {
    await until('n1 active', () => readLog(lab, 'n1-batond').some((l) => l.msg === ACTIVE), 15_000, 50);
    const t1 = (n1Table = RoutingTable.openPinned(pinDir(b, 'n1')));
    const t2 = (n2Table = RoutingTable.openPinned(pinDir(b, 'n2')));
    const n3 = b.node('n3');
    const t0 = performance.now();
    for (let i = 0; i < opts.entries; i++) t1.forward(syntheticFlow(i, lab.dvipa.address), { node: 3, mac: n3.mac });
    const fillS = (performance.now() - t0) / 1000;
    // Written from outside batond, as a previous batond would have left them: n1's batond learns
    // them at its start (its reconciler would take them up within 30 s, and cost CPU while
    // measured), and streams them to n2 as it becomes active again.
    const restart = async (name: string) => {
      await stopProcess(lab.runDir, name, lab.prefix);
      return startProcess(b.specs.find((s) => s.name === name)!, { runDir: lab.runDir, lab: lab.prefix });
    };
    const n2Log = new LogTail(path.join(lab.runDir, 'n2-batond.log'));
    n2Log.read();
    await restart('n1-batond');
    const n1Active = await new LogTail(path.join(lab.runDir, 'n1-batond.log')).next('n1 active again', (l) => l.msg === ACTIVE, 20_000, 20);
    const activateMs = Number(n1Active.us) / 1000;
    await n2Log.next(`n2's replica synced with ${opts.entries} entries`, (l) => l.msg === SYNCED && Number(l.entries) >= opts.entries, 60_000, 50);

    const runs: ReplicationRun[] = [];
    let equal = true;
    for (let run = 0; run < opts.runs; run++) {
      await stopProcess(lab.runDir, 'n2-batond', lab.prefix);
      // The replica emptied, as on a backup that lost its table: the snapshot carries every entry.
      clear(t2);
      const n1Pid = pidOf(b, 'n1-batond');
      const n1Log = new LogTail(path.join(lab.runDir, 'n1-batond.log'));
      n1Log.read();
      let n2Pid = 0;
      const cpu = new CpuSampler(() => [n1Pid, n2Pid]);
      let synced: LogLine;
      let attached: LogLine;
      let startedAt: number;
      let equalAt: number;
      try {
        startedAt = Date.now();
        n2Pid = (await startProcess(b.specs.find((s) => s.name === 'n2-batond')!, { runDir: lab.runDir, lab: lab.prefix })).pid;
        const n2Tail = new LogTail(path.join(lab.runDir, 'n2-batond.log'));
        attached = await n1Log.next('n1 attaching a stream to n2', (l) => l.msg === ATTACHED && l.backup === 'n2', 20_000);
        synced = await n2Tail.next("n2's replica synced", (l) => l.msg === SYNCED, 60_000);
      } finally {
        cpu.stop();
      }
      // In size, then key by key once (both walks after the clock stopped).
      const sizes = () => [t1.size(), t2.size()] as const;
      let [a, c] = sizes();
      equalAt = synced.time;
      if (a !== c) {
        await until(() => `n2's replica as large as n1's table (${a} vs ${c})`, () => (([a, c] = sizes()), a === c), 10_000, 50);
        equalAt = Date.now();
      }
      if (run === opts.runs - 1) {
        const [k1, k2] = [keysOf(t1), keysOf(t2)];
        equal &&= k1.size === k2.size && [...k1].every(([k, v]) => k2.get(k) === v);
      }
      await logsFlushed();
      const sent = readLog(lab, 'n1-batond').filter((l) => l.msg === 'replication snapshot sent' && l.backup === 'n2').pop();
      const entries = Number(synced.entries);
      const ms = equalAt - attached.time;
      const r: ReplicationRun = {
        entries,
        ms,
        entriesPerS: entries / (ms / 1000),
        n1CpuUsPerEntry: (cpu.at(0, equalAt) - cpu.at(0, attached.time)) / 1000 / entries,
        n2CpuUsPerEntry: (cpu.at(1, equalAt) - cpu.at(1, attached.time)) / 1000 / entries,
        sentMs: Number(sent?.ms ?? NaN),
        attachAfterStartMs: attached.time - startedAt,
        fromStartMs: equalAt - startedAt,
        sinceActiveS: (Date.now() - n1Active.time) / 1000,
      };
      if (a !== entries) throw new Error(`n1's table holds ${a} entries, the snapshot carried ${entries}`);
      runs.push(r);
      log(
        `replication run ${run + 1}: ${entries} entries in ${ms} ms = ${Math.round(r.entriesPerS)}/s; n1's batond ${r.n1CpuUsPerEntry.toFixed(2)} µs CPU per entry, n2's ${r.n2CpuUsPerEntry.toFixed(2)}; ` +
          `stream attached ${r.attachAfterStartMs} ms after n2's batond started, replica equal ${r.fromStartMs} ms after it`,
      );
    }
    return { runs, fillS, activateMs, equal };
  } finally {
    n1Table?.close();
    n2Table?.close();
    await b.down();
  }
}

// ---- the group ------------------------------------------------------------------------------------

export async function takeover(baseDir: string, opts: TakeoverOptions & { replication: ReplicationOptions }, log: (s: string) => void): Promise<MetricResult[]> {
  const runs: TakeoverRun[] = [];
  for (let run = 0; run < opts.runs; run++) runs.push(await takeoverRun(baseDir, run, opts, log));
  const rep = await replication(baseDir, opts.replication, log);

  const failed = runs.reduce((a, r) => a + r.failed, 0);
  const noRoundAfter = runs.reduce((a, r) => a + r.noRoundAfter, 0);
  const perRun = <K extends keyof TakeoverRun>(k: K) => runs.map((r) => r[k]);
  const roundMs = Math.round((opts.intervalS * 1000));
  const stall = latencyMetric(
    {
      id: 'takeover-stall',
      title: 'Stall of streaming connections when the active distributor dies',
      unit: 'ms',
      better: 'lower',
      goal: { text: 'every connection carries on, byte-exact, none reset (a check, not a target)', met: failed === 0 && noRoundAfter === 0 },
      method:
        `${opts.runs} runs, each in a fresh namespace lab of its own (n1 active distributor, n2 its backup: keepalived on both, 100 ms adverts), since n1 dies in it; ` +
        `${opts.connections} connections (examples/clients/line_streams.py, as in test/integration/ha/takeover.test.ts) log in through n1's line router and are handed off to n2 and n3, then each does a round every ${roundMs} ms: GET and PUT of ${opts.roundBytes / 1024} KiB, both checked. ` +
        `Once n2's replica equals n1's table key by key, n1 dies: its link is set down and every process in its namespace SIGKILLed (killNode); keepalived on n2 stops hearing adverts and takes the DVIPA with gratuitous ARP, and n2's steering program forwards every connection with the replica. ` +
        `Per connection, the value is its longest round that was under way between the kill and 1 s after n2's batond logged that it is active (a connection between two rounds at the kill stalls in its next one); ` +
        `the comparison ("before the kill") is the same connections' longest round in a window as long, ending at the kill. The streams go on ${opts.afterMs / 1000} s after n2 is active`,
      details: {
        connectionsPerRun: opts.connections,
        failedConnections: failed,
        errors: runs.flatMap((r) => r.errors),
        connectionsWithNoRoundAfterTakeover: noRoundAfter,
        stallMs: summarize(runs.flatMap((r) => r.stallMs)),
        maxPerRunMs: runs.map((r) => Math.max(...r.stallMs)),
        p99PerRunMs: runs.map((r) => percentile(r.stallMs, 99)),
        beforeTheKillMs: summarize(runs.flatMap((r) => r.beforeMs)),
        // A segment lost before the move waits for a retransmission; one lost again (its first
        // retransmission also went to the dead node) for the next, twice as late: over 400 ms.
        over400MsPerRun: runs.map((r) => r.stallMs.filter((x) => x > 400).length),
        killNodeMs: perRun('killMs'),
        replicaEqualBeforeKillMs: perRun('replicaEqualMs'),
      },
    },
    runs.map((r) => r.stallMs),
    [{ against: 'before the kill', runs: runs.map((r) => r.beforeMs) }],
  );

  const firstHandoff = perRun('firstHandoffMs');
  const first = rateMetric(
    {
      id: 'takeover-first-connection',
      title: 'Time from the active distributor\'s death to the backup\'s first handoff',
      unit: 'ms',
      better: 'lower',
      goal: { text: 'a new client is handed off by the backup in every run (a check, not a target)', met: firstHandoff.every(Number.isFinite) },
      method:
        `the same ${opts.runs} runs: a client in the client namespace (bench/client.ts first-served), started before the kill and waiting for it, opens a new connection every ${ATTEMPT_EVERY_MS} ms from the moment n1 is dead (killNode returned), each logging in as bob (handed off to n3) and given up after 3 s, until one is greeted by n3 (bounded at 10 s). ` +
        `The value is the time from the kill to the first handoff n2's line router logs; alongside it, from the kill until n2's batond logs "${ACTIVE}" (keepalived's MASTER reached it through the notify FIFO), and until the client had n3's greeting. All three from epoch-millisecond clocks of one machine (the log lines' time, the client's Date.now())`,
      details: {
        n2ActiveMs: perRun('n2ActiveMs'),
        firstHandoffMs: firstHandoff,
        clientGreetedMs: perRun('clientServedMs'),
        attemptsUntilServed: perRun('attempts'),
        attemptErrors: runs.map((r) => r.attemptErrors),
      },
    },
    firstHandoff,
  );

  const rr = rep.runs;
  const cpuN1 = rr.map((r) => r.n1CpuUsPerEntry);
  const replica = rateMetric(
    {
      id: 'replication-throughput',
      title: `Routing-table replication to a backup (snapshot of ${(opts.replication.entries / 1000).toLocaleString('en-US')}k entries)`,
      unit: 'entries/s',
      better: 'higher',
      goal: { text: 'the replica equals the active table after every snapshot (a check, not a target)', met: rep.equal && rr.every((r) => Number.isFinite(r.entriesPerS)) },
      method:
        `a backup lab of its own (batond and keepalived only, no applications). ${opts.replication.entries.toLocaleString('en-US')} FORWARD entries (synthetic flows, all naming n3) are written into n1's pinned table from outside batond, and n1's batond is restarted so that it adopts them at its start. ` +
        `Then, ${opts.replication.runs} runs: n2's batond is stopped, its replica emptied, and started again; n1 attaches a replication stream to it at its next heartbeat and sends a snapshot (a page of ${1024} entries per turn of its event loop, at most 4,096 unacknowledged). ` +
        `The time is from n1's log line "${ATTACHED}" to n2's "${SYNCED}" (its sweep included), after which n2's table (RoutingTable.size() on n2's pin directory) holds as many entries as n1's; entries/s = entries / that time. ` +
        `CPU: n1's batond (and n2's) over the same interval, every thread's schedstat sampled every 5 ms and interpolated at the two log lines' times, divided by the entries`,
      details: {
        entries: opts.replication.entries,
        n1CpuUsPerEntry: cpuN1.map((x) => round(x, 3)),
        n1CpuUsPerEntryMedian: round(median(cpuN1), 3),
        n2CpuUsPerEntry: rr.map((r) => round(r.n2CpuUsPerEntry, 3)),
        snapshotMs: rr.map((r) => r.ms),
        n1SnapshotSentMs: rr.map((r) => r.sentMs),
        attachAfterN2StartMs: rr.map((r) => r.attachAfterStartMs),
        equalAfterN2StartMs: rr.map((r) => r.fromStartMs),
        secondsSinceN1Active: rr.map((r) => round(r.sinceActiveS, 3)),
        reconcilerMayHaveRun: rr.some((r) => r.sinceActiveS * 1000 >= RECONCILE_EVERY_MS),
        fillSeconds: round(rep.fillS, 3),
        n1ActivateMs: round(rep.activateMs, 3),
      },
    },
    rr.map((r) => r.entriesPerS),
  );
  return [stall, first, replica];
}
