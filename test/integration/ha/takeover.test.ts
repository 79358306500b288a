// The distributor dies and the backup takes over: no handed-off connection notices. n1 is the
// active distributor, n2 its backup (keepalived on both, n1 preferred); 200 connections handed
// off to n2 and n3 stream both ways through n1's XDP program. First n2's batond is restarted
// while connections come and go: its replica catches up (a new snapshot). Then every process in
// n1's namespace is SIGKILLed and its link set down, without a word to anyone: keepalived on n2
// stops hearing adverts and takes the DVIPA (gratuitous ARP), n2's steering program forwards
// every connection with the replica n1 streamed to it, and n2's batond takes the table over.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { RoutingTable } from '../../../controller/agent/routing-table.js';
import { connectionId } from '../../../controller/flow.js';
import { LINE_PORT, labProcesses } from '../../../controller/lab/cluster.js';
import { startProcess, stopProcess } from '../../../controller/lab/processes.js';
import { inClient, lineClient, readLog } from '../../../controller/lab/demo.js';
import { killNode } from '../../../controller/lab/lab.js';
import { repoRoot } from '../../../controller/paths.js';
import { useLab } from '../../helpers/lab.js';
import { expectAllCarriedOn, type StreamResult, streamsClient } from '../../helpers/streams.js';
import { until } from '../../helpers/wait.js';

const running = useLab({ backup: true });

const CONNECTIONS = 200;
/** Each connection, every 100 ms: GET and PUT of 16 KiB. */
const ROUND_BYTES = 16384;
/** How long the streams go on after the takeover. */
const AFTER_MS = 3000;
const ACTIVE = "active distributor: the routing table is this node's";
/** New connections a second while n1 dies (handoff-load.py). */
const LOAD_RATE = 50;

interface LoadResult {
  summary?: boolean;
  conn?: number;
  start_ms?: number;
  outcome?: string;
  connections?: number;
  [outcome: string]: unknown;
}

let n2Table: RoutingTable | undefined;
afterAll(() => n2Table?.close());

/** The keys of a pinned table, with each entry's state and the node it names. */
function keysOf(table: RoutingTable): Map<string, string> {
  return new Map([...table.entries()].map(([k, e]) => [connectionId(k), `${e.state} ${e.targetNode}`]));
}

/** Waits until n2's replica equals n1's table key by key (state and node included); returns how long that took. */
async function replicaEqual(n2: RoutingTable, n1: RoutingTable, atLeast: number): Promise<number> {
  const t0 = Date.now();
  let diff = '';
  await until(
    () => `n2's replica equal to n1's table (${n2.size()} vs ${n1.size()} entries; ${diff})`,
    () => {
      const active = keysOf(n1);
      const replica = keysOf(n2);
      const missing = [...active].filter(([k, v]) => replica.get(k) !== v);
      const extra = [...replica.keys()].filter((k) => !active.has(k));
      diff = `${missing.length} missing or different, ${extra.length} extra`;
      return active.size >= atLeast && missing.length === 0 && extra.length === 0;
    },
    10_000,
    50,
  );
  return Date.now() - t0;
}

/** The p-th percentile (0–100) of values, nearest rank. */
function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

describe('the active distributor dies', () => {
  it(`the backup's batond restarted catches up; then, n1 dead, ${CONNECTIONS} handed-off connections streaming both ways carry on through n2, byte-exact, no reset; a new client is served by n2`, { timeout: 150_000 }, async () => {
    const { lab } = running;
    await until('n1 active', () => readLog(lab, 'n1-batond').some((l) => l.msg === ACTIVE), 10_000, 50);
    n2Table = RoutingTable.openPinned(`/sys/fs/bpf/baton/${lab.prefix}-n2`);
    const stopFile = path.join(lab.runDir, 'streams.stop');
    const client = inClient(lab, streamsClient(lab, ['--connections', String(CONNECTIONS), '--get', String(ROUND_BYTES), '--put', String(ROUND_BYTES), '--interval', '0.1', '--until-file', stopFile, '--seconds', '90', '--timeout', '20']), 110_000);
    let killAt = 0;
    let takeoverAt = 0;
    let replicaLag = 0;
    let caughtUp = 0;
    let newClient: { code: number; stdout: string; stderr: string } | undefined;
    let load: Promise<{ code: number; stdout: string; stderr: string }> | undefined;
    try {
      const handedOff = () => readLog(lab, 'n1-line-router').filter((l) => l.event === 'handed-off').length;
      await until(() => `${CONNECTIONS} handoffs (${handedOff()} so far)`, () => handedOff() >= CONNECTIONS, 60_000, 100);
      // The backup's replica holds every entry of the active table, key by key.
      replicaLag = await replicaEqual(n2Table, running.routes, CONNECTIONS);

      // The backup's batond restarts; meanwhile connections come and go (handed off to n3, closed,
      // their entries released, finished, removed on n1): the new batond's replica must catch up.
      const sessions = () => readLog(lab, 'n1-batond').filter((l) => l.msg === 'replication stream attached: snapshot starts' && l.backup === 'n2').length;
      const sessionsBefore = sessions();
      const n2Batond = labProcesses(lab).find((p) => p.name === 'n2-batond')!;
      await stopProcess(lab.runDir, 'n2-batond', lab.prefix);
      const meanwhile = await Promise.all([0, 1, 2, 3, 4].map(() => inClient(lab, lineClient(lab, ['--user', 'bob', '--expect-node', 'n3', '--get', '10000']), 20_000)));
      expect(meanwhile.map((r) => (JSON.parse(r.stdout) as { ok: boolean }).ok)).toEqual([true, true, true, true, true]);
      await startProcess(n2Batond, { runDir: lab.runDir, lab: lab.prefix });
      await until('n2-batond ready again', () => readLog(lab, 'n2-batond').some((l) => l.msg === 'batond ready'), 20_000, 50);
      await until('a new replication stream to n2', () => sessions() > sessionsBefore, 10_000, 50);
      caughtUp = await replicaEqual(n2Table, running.routes, CONNECTIONS);
      // New connections keep coming, 50 a second, from before n1 dies to after n2 took over.
      load = inClient(lab, ['python3', path.join(repoRoot(), 'test/helpers/handoff-load.py'), '--host', lab.dvipa.address, '--port', String(LINE_PORT),
        '--user', 'bob', '--rate', String(LOAD_RATE), '--seconds', '4', '--timeout', '5'], 60_000);
      await sleep(1500);
      killAt = Date.now();
      await killNode(lab, 'n1');
      await until('n2 active', () => readLog(lab, 'n2-batond').some((l) => l.msg === ACTIVE), 10_000, 20);
      takeoverAt = readLog(lab, 'n2-batond').find((l) => l.msg === ACTIVE)!.time as number;
      // A new client, after the takeover: accepted by n2's routing application and handed off to n3.
      newClient = await inClient(lab, lineClient(lab, ['--user', 'bob', '--expect-node', 'n3', '--get', '100000']), 20_000);
      await sleep(AFTER_MS);
    } finally {
      fs.writeFileSync(stopFile, '');
    }
    const out = await client;
    const results = expectAllCarriedOn(out, CONNECTIONS, ROUND_BYTES);
    // Every connection did rounds after the takeover: it was carried on, not merely not reset.
    const after = (r: StreamResult) => (r.round_ms ?? []).filter(([s]) => s > takeoverAt).length;
    expect(results.filter((r) => after(r) === 0).map((r) => r.conn), 'connections with no round after the takeover').toEqual([]);
    // The stall: per connection, the longest round that was under way when n1 died.
    const stalls = results.map((r) => Math.max(0, ...(r.round_ms ?? []).filter(([s, e]) => e >= killAt && s <= takeoverAt + 1000).map(([s, e]) => e - s)));
    expect(JSON.parse(newClient!.stdout), newClient!.stderr).toMatchObject({ ok: true, served_by: 'n3' });
    const newAccepted = readLog(lab, 'n2-line-router').filter((l) => l.event === 'handed-off');
    expect(newAccepted.length).toBeGreaterThanOrEqual(1);

    // The handoffs under way when n1 died: none left FROZEN (n2 recovered them within a step
    // timeout of taking over); every client was served, or reset, or (its connection in the
    // routing phase on n1, waiting for an answer) timed out: none got wrong bytes. Every one that
    // started once n2 was active was served.
    const loadOut = await load!;
    const attempts = loadOut.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as LoadResult);
    const loadSummary = attempts.find((a) => a.summary)!;
    const loadResults = attempts.filter((a) => !a.summary);
    expect(loadResults.length, loadOut.stderr.slice(-2000)).toBeGreaterThanOrEqual(LOAD_RATE * 3);
    expect(loadResults.filter((a) => !['ok', 'reset', 'closed', 'timeout'].includes(a.outcome!))).toEqual([]);
    expect(loadResults.filter((a) => a.start_ms! > takeoverAt + 500 && a.outcome !== 'ok')).toEqual([]);
    const frozen = [...n2Table.entries()].filter(([, e]) => e.state === 'frozen').map(([k]) => connectionId(k));
    expect(frozen, 'entries left FROZEN after the takeover').toEqual([]);
    console.log(
      `takeover: replica equal ${replicaLag} ms after the last handoff, again ${caughtUp} ms after n2's batond restarted; n2 active ${takeoverAt - killAt} ms after n1 died; ` +
        `stall per connection p50 ${percentile(stalls, 50)} ms, p99 ${percentile(stalls, 99)} ms, max ${Math.max(...stalls)} ms; ` +
        `first new connection handed off by n2 ${(newAccepted[0]!.time as number) - killAt} ms after n1 died; ` +
        `${loadSummary.connections} new connections at ${LOAD_RATE}/s across it: ${['ok', 'reset', 'closed', 'timeout'].map((o) => `${loadSummary[o] ?? 0} ${o}`).join(', ')}`,
    );
  });

  it('n1 returns: it stands by (n2 keeps the DVIPA), and n2 streams it the table: its stale replica becomes equal to n2\'s', { timeout: 60_000 }, async () => {
    const { lab } = running;
    const n1 = lab.nodes.find((n) => n.name === 'n1')!;
    const n1Table = RoutingTable.openPinned(`/sys/fs/bpf/baton/${lab.prefix}-n1`);
    try {
      // What n1 held when it died is stale by now: the streams ended, their entries went.
      expect(keysOf(n1Table)).not.toEqual(keysOf(n2Table!));
      execFileSync('ip', ['-n', n1.ns, 'link', 'set', n1.interface, 'up']);
      const specs = labProcesses(lab, { examples: false });
      for (const name of ['n1-batond', 'n1-keepalived']) await startProcess(specs.find((p) => p.name === name)!, { runDir: lab.runDir, lab: lab.prefix });
      await until('n1-batond ready', () => readLog(lab, 'n1-batond').some((l) => l.msg === 'batond ready'), 20_000, 50);
      const caughtUp = await replicaEqual(n1Table, n2Table!, 0);
      // Standing by, after keepalived and the announcements have had their say.
      await sleep(3000);
      expect(readLog(lab, 'n1-batond').filter((l) => l.msg === ACTIVE)).toEqual([]);
      expect(readLog(lab, 'n2-batond').filter((l) => /standby distributor/.test(String(l.msg)))).toEqual([]);
      const vipOnN1 = execFileSync('ip', ['-n', n1.ns, '-br', 'address', 'show', 'dev', n1.interface], { encoding: 'utf8' });
      expect(vipOnN1).not.toContain(`${lab.dvipa.address}/32`);
      // And n2 still serves: a new client is handed off through it.
      const r = await inClient(lab, lineClient(lab, ['--user', 'bob', '--expect-node', 'n3', '--get', '10000']), 20_000);
      expect(JSON.parse(r.stdout), r.stderr).toMatchObject({ ok: true, served_by: 'n3' });
      console.log(`n1 returned: its replica equal to n2's table ${caughtUp} ms after its batond was ready`);
    } finally {
      n1Table.close();
    }
  });
});
