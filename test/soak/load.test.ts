// Load (issue 6): many transferred connections held open at once, each exchanging verified data
// in both directions the whole time, then all closed: 0 failures, 0 resets, and the routing table
// back to empty after the release grace (no entry leaks). Half of them reach the DVIPA over IPv4,
// half over IPv6. batond's memory is reported.
//
// `make test` runs the short version (1,000 connections for 10 s); `make soak` the full one
// (BATON_SOAK_CONNECTIONS=10000 BATON_SOAK_SECONDS=60). Both stop by themselves.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { LINE_PORT } from '../../controller/lab/cluster.js';
import { inClient, readLog } from '../../controller/lab/demo.js';
import { repoRoot } from '../../controller/paths.js';
import { useLab } from '../helpers/lab.js';

const CONNECTIONS = Number(process.env.BATON_SOAK_CONNECTIONS ?? 1000);
const HOLD_S = Number(process.env.BATON_SOAK_SECONDS ?? 10);
/** Each connection does one 4 KiB round each way this often: the load is many connections, not bandwidth. */
const INTERVAL_S = Math.max(0.5, CONNECTIONS / 1000);
const ROUND_BYTES = 4096;

// The example line targets refuse offers beyond 1,000 live connections each by default, and the
// distributor takes at most 4,096 handed-off connections from one client address (the lab's one
// client stands for all of them here).
const capacity = ['--capacity', String(CONNECTIONS)];
const running = useLab({ extraArgs: { 'n2-line-target': capacity, 'n3-line-target': capacity }, limits: { entriesPerSource: 2 * CONNECTIONS } });

function rssMiB(name: string): number {
  const pid = Number(fs.readFileSync(path.join(running.lab.runDir, `${name}.pid`), 'utf8'));
  const kb = Number(/^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
  return Math.round(kb / 1024);
}

describe(`load: ${CONNECTIONS} transferred connections held ${HOLD_S} s`, () => {
  it('every connection exchanges verified bytes the whole time, none fails; then the table empties', { timeout: (HOLD_S + CONNECTIONS / 50 + 120) * 1000 }, async () => {
    const { lab } = running;
    const agents = lab.nodes.map((n) => `${n.name}-batond`);
    const rssBefore = Object.fromEntries(agents.map((a) => [a, rssMiB(a)]));
    const stopFile = path.join(lab.runDir, 'soak.stop');
    const half = Math.floor(CONNECTIONS / 2);
    const clients = ([[lab.dvipa.address, CONNECTIONS - half], [lab.dvipa.address6, half]] as const).map(([host, n]) =>
      inClient(
        lab,
        ['python3', path.join(repoRoot(), 'examples/clients/line_streams.py'), '--host', host, '--port', String(LINE_PORT),
          '--connections', String(n), '--get', String(ROUND_BYTES), '--put', String(ROUND_BYTES), '--interval', String(INTERVAL_S),
          '--until-file', stopFile, '--seconds', String(HOLD_S + CONNECTIONS / 20 + 60), '--logins-at-once', '16', '--timeout', '30'],
        (HOLD_S + CONNECTIONS / 20 + 120) * 1000,
      ));
    let heldFrom = 0;
    let peakIpv6 = 0;
    let heldUntil = 0;
    let peakEntries = 0;
    const rssHeld: Record<string, number> = {};
    try {
      const routerLog = () => readLog(lab, 'n1-line-router');
      const handedOff = () => routerLog().filter((l) => l.event === 'handed-off').length;
      const failedHandoffs = () => routerLog().filter((l) => l.event === 'handoff' && l.outcome === 'failed');
      const t0 = Date.now();
      for (let waited = 0; handedOff() < CONNECTIONS && waited < CONNECTIONS * 50 + 30_000; waited += 1000) {
        expect(failedHandoffs().slice(0, 3)).toEqual([]);
        await sleep(1000);
      }
      const rate = Math.round(CONNECTIONS / ((Date.now() - t0) / 1000));
      expect(handedOff()).toBe(CONNECTIONS);
      heldFrom = Date.now();
      peakEntries = running.routes.size();
      peakIpv6 = [...running.routes.entries()].filter(([k]) => k.family === 6).length;
      await sleep(HOLD_S * 1000);
      heldUntil = Date.now();
      for (const a of agents) rssHeld[a] = rssMiB(a);
      console.log(`load: ${CONNECTIONS} handed off at ~${rate}/s; table ${peakEntries} entries; batond RSS MiB before/held: ${agents.map((a) => `${a} ${rssBefore[a]}/${rssHeld[a]}`).join(', ')}`);
    } finally {
      fs.writeFileSync(stopFile, '');
    }
    type Line = { summary?: boolean; ok?: boolean; failed?: unknown[]; conn?: number; round_ms?: Array<[number, number]>; rounds?: number };
    const results: Line[] = [];
    for (const out of await Promise.all(clients)) {
      const lines = out.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Line);
      const summary = lines.find((l) => l.summary);
      expect(summary, out.stderr.slice(-2000)).toBeDefined();
      expect(summary!.failed).toEqual([]);
      results.push(...lines.filter((l) => !l.summary));
    }
    expect(results).toHaveLength(CONNECTIONS);
    expect(peakEntries).toBeGreaterThanOrEqual(CONNECTIONS);
    expect(peakIpv6).toBe(half);
    // Held means exchanging: every connection completed rounds throughout the hold window.
    const roundsIn = (r: (typeof results)[number], from: number, to: number) => (r.round_ms ?? []).filter(([s, e]) => s >= from && e <= to).length;
    const quietHalf = results.filter((r) => roundsIn(r, heldFrom, heldFrom + (heldUntil - heldFrom) / 2) === 0 || roundsIn(r, heldFrom + (heldUntil - heldFrom) / 2, heldUntil) === 0);
    expect(quietHalf.map((r) => r.conn)).toEqual([]);
    // Every connection closed by the client: released, then gone after the grace. No entry leaks.
    for (let waited = 0; running.routes.size() > 0 && waited < 20_000; waited += 250) await sleep(250);
    expect(running.routes.size()).toBe(0);
  });
});
