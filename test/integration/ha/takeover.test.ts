// The distributor dies and the backup takes over: no handed-off connection notices. n1 is the
// active distributor, n2 its backup (keepalived on both, n1 preferred); 200 connections (a quarter over IPv6) handed
// off to n2 and n3 stream both ways through n1's XDP program. First n2's batond is restarted
// while connections come and go: its replica catches up (a new snapshot). Then every process in
// n1's namespace is SIGKILLed and its link set down, without a word to anyone: keepalived on n2
// stops hearing adverts and takes the DVIPA (gratuitous ARP), n2's steering program forwards
// every connection with the replica n1 streamed to it, and n2's batond takes the table over.
// Ten idle connections' entries are taken out of n2's replica and twenty entries nobody serves
// put in before n1 dies: n2's reconciliation with what the nodes' kernels serve (ha/served.ts)
// puts the first back (the connections then close cleanly through n2) and removes the others.
// n1 then returns as a backup, and `batonctl dvipa move` gives it the DVIPA back while 100
// connections (served by n2 itself and by n3) stream: none notices.
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { RoutingTable } from '../../../controller/agent/routing-table.js';
import { readClusterConfig } from '../../../controller/config/cluster.js';
import { connectionId, type FlowKey } from '../../../controller/flow.js';
import { clusterConfigPath, LINE_PORT, labProcesses } from '../../../controller/lab/cluster.js';
import { startProcess, stopProcess } from '../../../controller/lab/processes.js';
import { inClient, lineClient, readLog } from '../../../controller/lab/demo.js';
import { killNode } from '../../../controller/lab/lab.js';
import { repoRoot } from '../../../controller/paths.js';
import { extraClientAddress, useLab } from '../../helpers/lab.js';
import { expectAllCarriedOn, type StreamResult, streamsClient } from '../../helpers/streams.js';
import { until } from '../../helpers/wait.js';

const run = promisify(execFile);
const running = useLab({ backup: true });

const CONNECTIONS = 200;
/** Of which over IPv6. */
const CONNECTIONS_V6 = 50;
/** Each connection, every 100 ms: GET and PUT of 16 KiB. */
const ROUND_BYTES = 16384;
/** How long the streams go on after the takeover. */
const AFTER_MS = 3000;
const ACTIVE = "active distributor: the routing table is this node's";
/** New connections a second while n1 dies (handoff-load.py). */
const LOAD_RATE = 50;
/** Idle connections whose entries n2's replica is made to lack. */
const HELD = 10;
const RECONCILED = 'routing table reconciled with the connections the nodes serve';
/** Streaming connections (served by n3) while the DVIPA moves back. */
const MOVE_CONNECTIONS = 100;
/** Connections in their routing phase on n2 while the DVIPA moves back. */
const ROUTING = 20;

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
    // A quarter of them over IPv6: the IPv6 DVIPA follows the takeover too (keepalived's
    // unsolicited neighbour advertisements), and so do their entries.
    const clients = ([[4, CONNECTIONS - CONNECTIONS_V6], [6, CONNECTIONS_V6]] as const).map(([family, n]) =>
      inClient(lab, streamsClient(lab, ['--connections', String(n), '--get', String(ROUND_BYTES), '--put', String(ROUND_BYTES), '--interval', '0.1', '--until-file', stopFile, '--seconds', '90', '--timeout', '20'], family), 110_000));
    let killAt = 0;
    let takeoverAt = 0;
    let replicaLag = 0;
    let caughtUp = 0;
    let newClient: { code: number; stdout: string; stderr: string } | undefined;
    let load: Promise<{ code: number; stdout: string; stderr: string }> | undefined;
    let held: Promise<{ code: number; stdout: string; stderr: string }> | undefined;
    const releaseFile = path.join(lab.runDir, 'held.release');
    let heldFlows: FlowKey[] = [];
    const planted: FlowKey[] = [];
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
      // Ten connections from a second client address, handed off to n3 and idle: their entries
      // leave n2's replica, as if n1 had died before streaming them; twenty entries for flows
      // nobody serves go in, as if their removal had been lost.
      const source = await extraClientAddress(lab, 0);
      held = inClient(lab, ['python3', path.join(repoRoot(), 'test/helpers/hold-connections.py'), '--host', lab.dvipa.address, '--port', String(LINE_PORT), '--source', source,
        '--user', 'bob', '--connections', String(HELD), '--hold', '90', '--until-file', releaseFile, '--report-close', '--timeout', '10'], 120_000);
      const fromSource = (t: RoutingTable) => [...t.entries()].filter(([f, e]) => f.clientAddress === source && e.state === 'forward');
      await until(() => `${HELD} held connections in n2's replica (${fromSource(n2Table!).length})`, () => fromSource(n2Table!).length === HELD, 20_000, 50);
      heldFlows = fromSource(n2Table).map(([f]) => f);
      for (const f of heldFlows) n2Table.remove(f);
      const n3 = readClusterConfig(clusterConfigPath(lab)).nodes.find((n) => n.name === 'n3')!;
      for (let i = 0; i < 20; i++) {
        const f = { ...heldFlows[0]!, clientPort: 61000 + i };
        n2Table.forward(f, { node: n3.id, mac: n3.mac });
        planted.push(f);
      }
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
      // n2 asked every node what its kernel serves: the held connections' entries are back, the planted ones gone.
      const reconciled = await until(() => 'n2 reconciled its table with the nodes', () => readLog(lab, 'n2-batond').some((l) => l.msg === RECONCILED), 20_000, 50).then(
        () => readLog(lab, 'n2-batond').find((l) => l.msg === RECONCILED)!,
      );
      expect(reconciled.answered).toEqual(expect.arrayContaining(['n2', 'n3']));
      expect(reconciled.pointed).toBeGreaterThanOrEqual(HELD);
      expect(reconciled.dropped).toBeGreaterThanOrEqual(planted.length);
      for (const f of heldFlows) expect(n2Table.get(f)?.state, `entry of held ${connectionId(f)}`).toBe('forward');
      for (const f of planted) expect(n2Table.get(f), `planted ${connectionId(f)}`).toBeUndefined();
    } finally {
      fs.writeFileSync(stopFile, '');
      fs.writeFileSync(releaseFile, '');
    }
    // The held connections close through n2, each answered by its target (a missing entry: a reset by n2's kernel).
    const heldOut = await held!;
    const heldLines = heldOut.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { greeting?: string; bye?: string; close_error?: string });
    expect(heldLines.filter((l) => l.greeting !== undefined).map((l) => l.greeting), heldOut.stderr).toEqual(Array(HELD).fill('OK n3'));
    expect(heldLines.filter((l) => l.bye !== undefined || l.close_error !== undefined)).toEqual(Array(HELD).fill({ conn: expect.any(Number), bye: 'BYE' }));
    const [out4, out6] = await Promise.all(clients);
    const results = [...expectAllCarriedOn(out4!, CONNECTIONS - CONNECTIONS_V6, ROUND_BYTES), ...expectAllCarriedOn(out6!, CONNECTIONS_V6, ROUND_BYTES)];
    // The client's neighbour entry for the IPv6 DVIPA now names n2.
    const n2Mac = lab.nodes.find((n) => n.name === 'n2')!.mac;
    const neighbour = JSON.parse(execFileSync('ip', ['-n', lab.client.ns, '-j', 'neigh', 'show', lab.dvipa.address6], { encoding: 'utf8' })) as Array<{ lladdr?: string }>;
    expect(neighbour[0]?.lladdr).toBe(n2Mac);
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
      const specs = labProcesses(lab);
      for (const name of ['n1-batond', 'n1-keepalived', 'n1-line-router']) await startProcess(specs.find((p) => p.name === name)!, { runDir: lab.runDir, lab: lab.prefix });
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

  it(`batonctl dvipa move gives n1 the DVIPA back while ${MOVE_CONNECTIONS} connections stream and ${ROUTING} are in their routing phase on n2: none notices, stall p99 < 100 ms`, { timeout: 120_000 }, async () => {
    const { lab } = running;
    const n1 = lab.nodes.find((n) => n.name === 'n1')!;
    const n2 = lab.nodes.find((n) => n.name === 'n2')!;
    const stopFile = path.join(lab.runDir, 'move-streams.stop');
    const resumedOnN3 = () => readLog(lab, 'n3-line-target').filter((l) => l.event === 'resumed').length;
    const resumedBefore = resumedOnN3();
    const client = inClient(lab, streamsClient(lab, ['--connections', String(MOVE_CONNECTIONS), '--users', 'bob=n3', '--get', String(ROUND_BYTES), '--put', String(ROUND_BYTES), '--interval', '0.05', '--until-file', stopFile, '--seconds', '60', '--timeout', '20']), 90_000);
    let moveAt = 0;
    let movedAt = 0;
    let moved: { from: string; to: string; ownEntries: number; ms: number } | undefined;
    let routing: Promise<{ code: number; stdout: string; stderr: string }> | undefined;
    const loginFile = path.join(lab.runDir, 'routing.login');
    try {
      // And connections in their routing phase on n2 (HELLO said, no USER yet): n2's kernel serves
      // them, its table has no entry for them. They log in once the DVIPA is on n1.
      await until(() => `${MOVE_CONNECTIONS} streams on n3 (${resumedOnN3() - resumedBefore})`, () => resumedOnN3() - resumedBefore >= MOVE_CONNECTIONS, 60_000, 100);
      const source = await extraClientAddress(lab, 1);
      routing = inClient(lab, ['python3', path.join(repoRoot(), 'test/helpers/hold-connections.py'), '--host', lab.dvipa.address, '--port', String(LINE_PORT), '--source', source,
        '--user', 'bob', '--connections', String(ROUTING), '--login-late', '--hold', '60', '--until-file', loginFile, '--report-close', '--timeout', '10'], 90_000);
      const inRoutingOnN2 = () => execFileSync('ip', ['netns', 'exec', n2.ns, 'ss', '-Htn', 'state', 'established', 'src', `${lab.dvipa.address}:${LINE_PORT}`, 'dst', source], { encoding: 'utf8' }).trim().split('\n').filter(Boolean).length;
      await until(() => `${ROUTING} connections in their routing phase on n2 (${inRoutingOnN2()})`, () => inRoutingOnN2() === ROUTING, 20_000, 50);
      await sleep(500);
      moveAt = Date.now();
      const { stdout } = await run(process.execPath, [path.join(repoRoot(), 'dist/controller/bin/batonctl.js'), 'dvipa', 'move', lab.dvipa.address, 'n1', '--json', '--lab', lab.prefix, '--dir', path.dirname(lab.runDir)], { timeout: 30_000 });
      movedAt = Date.now();
      moved = JSON.parse(stdout) as typeof moved;
      expect(moved).toMatchObject({ address: lab.dvipa.address, from: 'n2', to: 'n1' });
      await sleep(AFTER_MS);
    } finally {
      fs.writeFileSync(stopFile, '');
      fs.writeFileSync(loginFile, '');
    }
    const out = await client;
    // Every connection n2 served itself got an entry naming it, so that n1 steers it there: each
    // logs in now, through n1, and n2's routing application hands it off to n3 (n1 the distributor).
    expect(moved!.ownEntries).toBeGreaterThanOrEqual(ROUTING);
    const routed = await routing!;
    const lines = routed.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { greeting?: string; bye?: string; close_error?: string; error?: string });
    expect(lines.filter((l) => l.error !== undefined || l.close_error !== undefined), routed.stderr).toEqual([]);
    expect(lines.filter((l) => l.greeting !== undefined).map((l) => l.greeting)).toEqual(Array(ROUTING).fill('OK n3'));
    expect(lines.filter((l) => l.bye !== undefined).map((l) => l.bye)).toEqual(Array(ROUTING).fill('BYE'));
    const results = expectAllCarriedOn(out, MOVE_CONNECTIONS, ROUND_BYTES);
    expect(results.filter((r) => !(r.round_ms ?? []).some(([st]) => st > movedAt)).map((r) => r.conn), 'connections with no round after the move').toEqual([]);
    const stalls = results.map((r) => Math.max(0, ...(r.round_ms ?? []).filter(([st, e]) => e >= moveAt && st <= movedAt + 1000).map(([st, e]) => e - st)));
    // n1 holds the DVIPA and is the active distributor; n2 stands by with the DVIPA off its interface.
    expect(readLog(lab, 'n1-batond').some((l) => l.msg === ACTIVE)).toBe(true);
    expect(execFileSync('ip', ['-n', n1.ns, '-br', 'address', 'show', 'dev', n1.interface], { encoding: 'utf8' })).toContain(`${lab.dvipa.address}/32`);
    expect(execFileSync('ip', ['-n', n2.ns, '-br', 'address', 'show', 'dev', n2.interface], { encoding: 'utf8' })).not.toContain(`${lab.dvipa.address}/32`);
    // The IPv6 address moved with it (keepalived holds the cluster file's addresses together).
    expect(execFileSync('ip', ['-n', n1.ns, '-br', 'address', 'show', 'dev', n1.interface], { encoding: 'utf8' })).toContain(`${lab.dvipa.address6}/128`);
    expect(execFileSync('ip', ['-n', n2.ns, '-br', 'address', 'show', 'dev', n2.interface], { encoding: 'utf8' })).not.toContain(`${lab.dvipa.address6}/128`);
    await until('n2 standing by', () => readLog(lab, 'n2-batond').some((l) => /standby distributor/.test(String(l.msg))), 5000, 50);
    // A new client lands on n1 and is handed off to n2 (a target again: it is no longer the distributor).
    const r = await inClient(lab, lineClient(lab, ['--user', 'alice', '--expect-node', 'n2', '--get', '10000']), 20_000);
    expect(JSON.parse(r.stdout), r.stderr).toMatchObject({ ok: true, served_by: 'n2' });
    const r6 = await inClient(lab, lineClient(lab, ['--user', 'alice', '--expect-node', 'n2', '--get', '10000'], 6), 20_000);
    expect(JSON.parse(r6.stdout), r6.stderr).toMatchObject({ ok: true, served_by: 'n2' });
    console.log(
      `dvipa move n2 → n1 in ${moved!.ms} ms (batonctl ${movedAt - moveAt} ms), ${moved!.ownEntries} of n2's own connections given entries; ` +
        `stall per connection p50 ${percentile(stalls, 50)} ms, p99 ${percentile(stalls, 99)} ms, max ${Math.max(...stalls)} ms`,
    );
    expect(percentile(stalls, 99)).toBeLessThan(100);
  });
});
