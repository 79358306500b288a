// `make demo`: bring the lab up, drive the examples with unmodified clients from the client
// namespace (curl for HTTP, a plain-Python client for the line protocol), print a timeline of each
// handoff, tear everything down. Succeeds only if every check held.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { repoRoot } from '../paths.js';
import { endpointText, type Family, hostPort } from '../flow.js';
import { HTTP_PORT, HTTPS_PORT, LINE_PORT, labCaFile, labProcesses, waitUntilReady } from './cluster.js';
import type { LabDescription } from './description.js';
import { killNode, labDown, labUp } from './lab.js';

const run = promisify(execFile);

interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

interface LogLine {
  time: number;
  msg: string;
  event?: string;
  client?: string | { address: string; port: number };
  connId?: string;
  line?: string;
  request?: string;
  target?: string;
  user?: string;
  timings?: Record<string, number>;
  [k: string]: unknown;
}

/**
 * A lab process's log lines so far. Whole lines only: a process still writing may have put part of
 * its last line in the file (an asynchronous logger writes a batch of lines, and a batch can
 * reach the file in more than one write).
 */
export function readLog(lab: LabDescription, name: string): LogLine[] {
  const file = path.join(lab.runDir, `${name}.log`);
  if (!fs.existsSync(file)) return [];
  const text = fs.readFileSync(file, 'utf8');
  return text
    .slice(0, text.lastIndexOf('\n') + 1)
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as LogLine);
}

export async function inClient(lab: LabDescription, argv: string[], timeoutMs = 60_000): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    const { stdout, stderr } = await run('ip', ['netns', 'exec', lab.client.ns, ...argv], { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
    return { stdout, stderr, code: 0 };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; code?: number | string };
    return { stdout: e.stdout ?? '', stderr: e.stderr ?? String(err), code: typeof e.code === 'number' ? e.code : 1 };
  }
}

/** The lab's DVIPA address of a family. */
export function dvipaOf(lab: LabDescription, family: Family = 4): string {
  return family === 6 ? lab.dvipa.address6 : lab.dvipa.address;
}

export function lineClient(lab: LabDescription, args: string[], family: Family = 4): string[] {
  return ['python3', path.join(repoRoot(), 'examples/clients/line_client.py'), '--host', dvipaOf(lab, family), '--port', String(LINE_PORT), ...args];
}

/** curl with Digest authentication to the lab's DVIPA of a family (-6: over IPv6 only). */
export function curlDigest(lab: LabDescription, user: string, password: string, paths: string[], family: Family = 4): string[] {
  return [
    'curl', '-sS', `-${family}`, '--max-time', '10', '--digest', '-u', `${user}:${password}`,
    '-w', '\\n%{http_code} connects=%{num_connects}\\n',
    ...paths.map((p) => `http://${endpointText(family, dvipaOf(lab, family), HTTP_PORT)}${p}`),
  ];
}

/** The same over HTTPS (the lab's https option), checking the router's certificate against the lab's CA; HTTP/1.1, one connection. */
export function curlDigestTls(lab: LabDescription, user: string, password: string, paths: string[]): string[] {
  return [
    'curl', '-sS', '-4', '--http1.1', '--max-time', '10', '--cacert', labCaFile(lab), '--digest', '-u', `${user}:${password}`,
    '-w', '\\n%{http_code} connects=%{num_connects}\\n',
    ...paths.map((p) => `https://${lab.dvipa.address}:${HTTPS_PORT}${p}`),
  ];
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)]! : NaN;
};
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]! : NaN;
};

function clientKey(c: LogLine['client']): string {
  return typeof c === 'string' ? c : c ? hostPort(c.address, c.port) : '';
}

/** One readable block per handed-off connection, from the routers' and targets' structured logs. */
function timeline(lab: LabDescription, routerLog: string, clientAddr: string): string[] {
  const router = readLog(lab, routerLog).filter((l) => clientKey(l.client) === clientAddr);
  const out: string[] = [];
  const t0 = router[0]?.time ?? 0;
  const at = (t: number) => `+${String(t - t0).padStart(4)} ms`;
  for (const l of router) {
    if (l.event === 'accepted') out.push(`  ${at(l.time)}  accepted on ${lab.distributor} from ${clientAddr}`);
    if (l.event === 'exchange') out.push(`  ${at(l.time)}  exchange: ${l.line ?? l.request}${l.user ? ` (user ${l.user})` : ''}`);
    if (l.event === 'handed-off' && l.timings) {
      const t = l.timings;
      for (const a of (l.attempts as Array<{ target: { node: string }; outcome: string; reason?: string }> | undefined) ?? []) {
        if (a.outcome === 'failed') out.push(`             ${a.target.node} refused: ${String(a.reason).replace(/ \(.*$/, '')}`);
      }
      out.push(`  ${at(l.time)}  target chosen: ${l.target}; handed off as ${l.connId}`);
      out.push(
        `             export ${t.exportUs} µs | transfer ${Math.max(0, (t.offerRttUs ?? 0) - (t.importUs ?? 0))} µs | import ${t.importUs} µs | ` +
          `freeze ${t.freezeUs} µs + delta ${t.deltaUs} µs | ${t.commitRttUs ? `commit ${t.commitRttUs} µs` : 'nothing to commit'} | route install ${t.routeUs} µs | total ${t.totalUs} µs`,
      );
      for (const n of lab.nodes) {
        for (const app of ['http-target', 'line-target']) {
          for (const s of readLog(lab, `${n.name}-${app}`).filter((x) => x.connId === l.connId && x.event === 'resumed')) {
            out.push(`  ${at(s.time)}  served by ${n.name} (${app})`);
          }
        }
      }
    }
  }
  return out;
}

/**
 * The last act: n1 dies under 20 streaming connections (every process SIGKILLed, its link down),
 * keepalived makes n2 the distributor, and the clients never notice; a new client goes through n2.
 */
/** The streams' first failure as line_streams.py summed it up (its own words, cut short), or nothing; one summary per run of it. */
function firstFailure(lines: Array<{ summary?: boolean; failed?: unknown[] }>): string {
  const failed = lines.filter((l) => l.summary).flatMap((l) => l.failed ?? []);
  return failed.length ? `; ${failed.length} failed, first: ${JSON.stringify(failed[0]).slice(0, 200)}` : '';
}

async function backupTakesOver(lab: LabDescription, check: (name: string, ok: boolean, detail?: string) => void): Promise<void> {
  const CONNECTIONS = 20;
  console.log(`\n== Backup distributor: ${CONNECTIONS} connections (half IPv4, half IPv6) streaming through n1; n1 dies (SIGKILL of every process, link down); n2 takes over`);
  const stopFile = path.join(lab.runDir, 'demo-streams.stop');
  // Left by an earlier demo in the same run directory, it would stop the streams before they start.
  fs.rmSync(stopFile, { force: true });
  const handed = () => readLog(lab, `${lab.distributor}-line-router`).filter((l) => l.event === 'handed-off').length;
  const before = handed();
  const streams = ([4, 6] as const).map((family) =>
    inClient(lab, ['python3', path.join(repoRoot(), 'examples/clients/line_streams.py'), '--host', dvipaOf(lab, family), '--port', String(LINE_PORT),
      '--connections', String(CONNECTIONS / 2), '--get', '16384', '--put', '16384', '--interval', '0.1', '--until-file', stopFile, '--seconds', '60', '--timeout', '20'], 90_000));
  const active = (node: string) => readLog(lab, `${node}-batond`).find((l) => l.msg === "active distributor: the routing table is this node's");
  let killAt = 0;
  let fresh: { code: number; stdout: string; stderr: string } | undefined;
  try {
    for (let waited = 0; handed() < before + CONNECTIONS && waited < 30_000; waited += 100) await sleep(100);
    await sleep(1000);
    killAt = Date.now();
    await killNode(lab, 'n1');
    for (let waited = 0; !active('n2') && waited < 10_000; waited += 20) await sleep(20);
    fresh = await inClient(lab, lineClient(lab, ['--user', 'bob', '--expect-node', 'n3', '--get', '100000']), 20_000);
    await sleep(2000);
  } finally {
    fs.writeFileSync(stopFile, '');
  }
  const outs = await Promise.all(streams);
  const lines = outs.flatMap((out) => out.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { summary?: boolean; ok?: boolean; failed?: unknown[]; round_ms?: Array<[number, number]> }));
  const results = lines.filter((l) => !l.summary);
  const took = active('n2') ? Number(active('n2')!.time) - killAt : NaN;
  const stall = Math.max(0, ...results.flatMap((r) => (r.round_ms ?? []).filter(([s, e]) => e >= killAt && s <= killAt + 5000).map(([s, e]) => e - s)));
  check(`${CONNECTIONS} connections streaming through n1 carry on through n2, byte-exact, none reset`, outs.every((o) => o.code === 0) && results.length === CONNECTIONS && results.every((r) => r.ok),
    `n2 active ${took} ms after n1 died; longest round of a connection across it ${stall} ms${firstFailure(lines)}`);
  const freshResult = fresh?.stdout.trim() ? (JSON.parse(fresh.stdout.trim()) as { ok?: boolean; served_by?: string }) : {};
  check('a new client after the takeover: accepted by n2, handed off to n3', freshResult.ok === true && freshResult.served_by === 'n3', fresh?.stderr.trim() ?? '');
}

export async function runDemo(opts: { prefix: string; dir: string; handoffs: number }): Promise<boolean> {
  const checks: Check[] = [];
  const check = (name: string, ok: boolean, detail = '') => {
    checks.push({ name, ok, detail });
    console.log(`${ok ? 'PASS' : 'FAIL'}  ${name}${detail ? `  — ${detail}` : ''}`);
  };
  await labDown({ prefix: opts.prefix, dir: opts.dir });
  let specs: ReturnType<typeof labProcesses> = [];
  const lab = await labUp({
    prefix: opts.prefix,
    dir: opts.dir,
    // n2 is a backup distributor: the demo ends with n1's death.
    backup: true,
    // n3's HTTP target takes one connection at a time, so the demo can show a refusal and a retry.
    // The routers log each accept and exchange at debug level: the timelines below are made of them.
    // The demo reads a process's log as soon as the client has its answer: lines are written
    // synchronously, not buffered (controller/log.ts).
    processes: (l) =>
      (specs = labProcesses(l, { extraArgs: { 'n3-http-target': ['--capacity', '1'] } }).map((s) => ({
        ...s,
        env: { ...s.env, BATON_LOG_SYNC: '1', ...(s.name.endsWith('-router') ? { BATON_LOG_LEVEL: 'debug' } : {}) },
      }))),
  });
  try {
    await waitUntilReady(lab, specs);
    console.log(`\nlab ${lab.prefix}: DVIPA ${lab.dvipa.address} and ${lab.dvipa.address6} ports ${lab.dvipa.ports.join(',')}; distributor ${lab.distributor}; client ${lab.client.address} and ${lab.client.address6}\n`);

    console.log('== HTTP: curl --digest, two requests on one keep-alive connection');
    for (const [user, password, node] of [['alice', 'wonderland', 'n2'], ['bob', 'builder', 'n3']] as const) {
      const r = await inClient(lab, curlDigest(lab, user, password, ['/', '/again']));
      const bodies = r.stdout.split('\n').filter((l) => l.startsWith('hello'));
      const codes = [...r.stdout.matchAll(/^(\d{3}) connects=(\d+)$/gm)].map((m) => `${m[1]}/${m[2]}`);
      check(
        `curl as ${user}: both answered by ${node} on one connection`,
        r.code === 0 && bodies.length === 2 && bodies.every((b) => b.includes(`served by ${node}`)) && codes.join(' ') === '200/1 200/0',
        r.code === 0 ? `${bodies.map((b) => b.trim()).join(' | ')} [status/new connections: ${codes.join(' ')}]` : r.stderr.trim(),
      );
      const handed = readLog(lab, `${lab.distributor}-http-router`).filter((l) => l.event === 'handed-off' && l.user === user).pop();
      if (handed) for (const line of timeline(lab, `${lab.distributor}-http-router`, clientKey(handed.client))) console.log(line);
    }

    console.log(`\n== IPv6: the same through the DVIPA's IPv6 address, ${lab.dvipa.address6}`);
    const v6 = await inClient(lab, curlDigest(lab, 'alice', 'wonderland', ['/', '/again'], 6));
    const v6Bodies = v6.stdout.split('\n').filter((l) => l.startsWith('hello'));
    const v6Codes = [...v6.stdout.matchAll(/^(\d{3}) connects=(\d+)$/gm)].map((m) => `${m[1]}/${m[2]}`);
    check(
      'curl -6 as alice: both answered by n2 on one connection',
      v6.code === 0 && v6Bodies.length === 2 && v6Bodies.every((b) => b.includes('served by n2')) && v6Codes.join(' ') === '200/1 200/0',
      v6.code === 0 ? `${v6Bodies.map((b) => b.trim()).join(' | ')} [status/new connections: ${v6Codes.join(' ')}]` : v6.stderr.trim(),
    );
    const v6Handed = readLog(lab, `${lab.distributor}-http-router`).filter((l) => l.event === 'handed-off' && l.user === 'alice').pop();
    if (v6Handed) for (const line of timeline(lab, `${lab.distributor}-http-router`, clientKey(v6Handed.client))) console.log(line);
    const v6Line = await inClient(lab, lineClient(lab, ['--user', 'bob', '--expect-node', 'n3', '--get', '1000000', '--put', '1000000'], 6), 60_000);
    const v6LineResult = v6Line.stdout.trim() ? JSON.parse(v6Line.stdout.trim()) : { ok: false, error: v6Line.stderr };
    check('python over IPv6: GET/PUT 1 MB byte-exact, served by n3', v6LineResult.ok === true, v6LineResult.ok ? `from ${v6LineResult.local}` : JSON.stringify(v6LineResult));

    console.log('\n== HTTP: n3 is busy (capacity 1, one slow request in progress): bob is refused there and retried on n2');
    const slow = inClient(lab, curlDigest(lab, 'bob', 'builder', ['/hold?ms=1500']));
    await sleep(600);
    const retried = await inClient(lab, curlDigest(lab, 'bob', 'builder', ['/']));
    const slowDone = await slow;
    const retryLog = readLog(lab, `${lab.distributor}-http-router`).filter((l) => l.event === 'handed-off' && l.user === 'bob').pop();
    const attempts = (retryLog?.attempts as Array<{ target: { node: string }; outcome: string; code?: string }> | undefined) ?? [];
    check(
      'refused by n3 (at capacity), served by n2 on the same connection',
      retried.stdout.includes('hello bob, served by n2') && slowDone.stdout.includes('served by n3') && attempts.map((a) => `${a.target.node}:${a.code ?? a.outcome}`).join(' ') === 'n3:E_REJECTED n2:done',
      `attempts: ${attempts.map((a) => `${a.target.node} ${a.code ?? a.outcome}`).join(', then ')}`,
    );
    if (retryLog) for (const line of timeline(lab, `${lab.distributor}-http-router`, clientKey(retryLog.client))) console.log(line);

    console.log('\n== Line protocol: transfer again — served by n2, moved to n3, moved back to n2');
    const moved = await inClient(lab, lineClient(lab, ['--user', 'alice', '--expect-node', 'n2', '--move', 'n3,n2', '--get', '100000', '--put', '100000']), 60_000);
    const movedResult = moved.stdout.trim() ? JSON.parse(moved.stdout.trim()) : { ok: false, error: moved.stderr };
    check('n2 → n3 → n2 on one connection, GET and PUT byte-exact after every move', movedResult.ok === true && movedResult.moves_ok === true,
      movedResult.ok ? `answers: ${(movedResult.moves as string[]).join(', ')}` : JSON.stringify(movedResult));
    for (const node of ['n2', 'n3']) {
      for (const l of readLog(lab, `${node}-line-target`).filter((x) => x.event === 'handed-off')) {
        const t = l.timings as Record<string, number>;
        console.log(`  ${node} moved ${l.connId} on to ${l.target}: export ${t.exportUs} µs | offer ${t.offerRttUs} µs | freeze (at n1) ${t.freezeUs} µs | ${t.commitRttUs ? `commit ${t.commitRttUs} µs` : 'nothing to commit'} | route (at n1) ${t.routeUs} µs | total ${t.totalUs} µs`);
      }
    }

    console.log('\n== Line protocol: python client, GET and PUT of 10,000,000 bytes after the handoff');
    const big = await inClient(lab, lineClient(lab, ['--user', 'alice', '--expect-node', 'n2', '--get', '10000000', '--put', '10000000']), 120_000);
    const bigResult = big.stdout.trim() ? JSON.parse(big.stdout.trim().split('\n').pop()!) : { ok: false, error: big.stderr };
    check('python GET/PUT 10 MB byte-exact, served by n2, clean close', bigResult.ok === true,
      bigResult.ok ? `GET ${bigResult.get_mbps} Mb/s, PUT ${bigResult.put_mbps} Mb/s` : JSON.stringify(bigResult));
    if (bigResult.local) for (const line of timeline(lab, `${lab.distributor}-line-router`, bigResult.local)) console.log(line);

    console.log(`\n== ${opts.handoffs} handoffs in a row (line protocol, alternating alice→n2 and bob→n3)`);
    const before = readLog(lab, `${lab.distributor}-line-router`).filter((l) => l.event === 'handed-off').length;
    const half = Math.ceil(opts.handoffs / 2);
    const runs = [
      await inClient(lab, lineClient(lab, ['--user', 'alice', '--expect-node', 'n2', '--get', '1000', '--put', '1000', '--repeat', String(half)]), 120_000),
      await inClient(lab, lineClient(lab, ['--user', 'bob', '--expect-node', 'n3', '--get', '1000', '--put', '1000', '--repeat', String(opts.handoffs - half)]), 120_000),
    ];
    const results = runs.flatMap((r) => r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { ok: boolean; first_reply_ms: number }));
    const okCount = results.filter((r) => r.ok).length;
    check(`${opts.handoffs} handoffs, all byte-exact`, okCount === opts.handoffs, `${okCount}/${opts.handoffs} ok`);
    const done = readLog(lab, `${lab.distributor}-line-router`).filter((l) => l.event === 'handed-off').slice(before);
    const series = (k: string) => done.map((l) => l.timings?.[k] ?? NaN).filter((x) => Number.isFinite(x));
    console.log(`   per step over ${done.length} handoffs (µs)     median      p99`);
    for (const [label, key] of [['export (snapshot)', 'exportUs'], ['offer round trip', 'offerRttUs'], ['  of which import', 'importUs'], ['freeze (map update)', 'freezeUs'], ['delta read', 'deltaUs'], ['commit (0: nothing to)', 'commitRttUs'], ['route install', 'routeUs'], ['total handoff()', 'totalUs']] as const) {
      const xs = series(key);
      console.log(`   ${label.padEnd(28)} ${String(median(xs)).padStart(8)} ${String(pct(xs, 99)).padStart(8)}`);
    }
    console.log(`   first reply after USER (client view, ms): median ${median(results.map((r) => r.first_reply_ms))}`);

    console.log('\n== Operating it: batonctl against the distributor\'s REST API, with four clients connected');
    const batonctl = async (...args: string[]) =>
      (await run(process.execPath, [path.join(repoRoot(), 'dist/controller/bin/batonctl.js'), ...args, '--lab', lab.prefix, '--dir', opts.dir], { timeout: 60_000 })).stdout.trimEnd();
    const probing = ['alice', 'alice', 'bob', 'bob'].map((user) => inClient(lab, lineClient(lab, ['--user', user, '--probe-for', '5']), 60_000));
    type Row = { id: string; node: string };
    const live = async () => (JSON.parse(await batonctl('connections', '--state', 'forward', '--json')) as { connections: Row[] }).connections;
    for (let waited = 0; (await live()).length < 4 && waited < 10_000; waited += 200) await sleep(200);
    console.log(`$ batonctl status\n${await batonctl('status')}\n`);
    console.log(`$ batonctl connections\n${await batonctl('connections', '--state', 'forward')}\n`);
    const onN2 = (await live()).find((c) => c.node === 'n2');
    if (onN2) console.log(`$ batonctl move ${onN2.id} n3\n${await batonctl('move', onN2.id, 'n3')}\n`);
    console.log(`$ batonctl connections\n${await batonctl('connections', '--state', 'forward')}`);
    const probes = (await Promise.all(probing)).map((r) => JSON.parse(r.stdout || '{}') as { ok?: boolean; probe_nodes?: string[] });
    const movedOne = probes.filter((p) => p.probe_nodes?.join(',') === 'n2,n3').length === 1;
    check('batonctl move: one live connection n2 → n3, its client never noticed', probes.every((p) => p.ok) && movedOne, probes.map((p) => (p.probe_nodes ?? []).join('→')).join(', '));

    await backupTakesOver(lab, check);
  } finally {
    await labDown({ prefix: opts.prefix, dir: opts.dir });
  }
  const failed = checks.filter((c) => !c.ok).length;
  console.log(`\n${checks.length - failed} passed, ${failed} failed`);
  return failed === 0;
}
