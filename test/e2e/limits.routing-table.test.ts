// Routing-table quotas, seen by unmodified clients: one client address cannot take more than
// limits.entriesPerSource handed-off connections, nor all clients together more than
// limits.handedOffEntries, so the table never fills (a full table would refuse every handoff, and
// one client could make that happen). A refused handoff leaves the connection with the routing
// application, which answers the client itself on the same socket; the refusal is counted. And a
// handed-off connection cannot be held idle for ever: its socket on the target has keepalive on.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { LINE_PORT } from '../../controller/lab/cluster.js';
import { inClient } from '../../controller/lab/demo.js';
import type { LabDescription } from '../../controller/lab/description.js';
import { repoRoot } from '../../controller/paths.js';
import { metricsOf, sampleOf } from '../helpers/api.js';
import { extraClientAddress, useLab } from '../helpers/lab.js';

const PER_SOURCE = 20;
const TOTAL = 30;
const running = useLab({ limits: { entriesPerSource: PER_SOURCE, handedOffEntries: TOTAL } });

interface Held {
  conn: number;
  greeting?: string;
  error?: string;
}

/** Opens n connections from source and holds them holdS seconds; resolves with each one's greeting. */
function hold(lab: LabDescription, source: string, n: number, holdS: number): Promise<Held[]> {
  const argv = ['python3', path.join(repoRoot(), 'test/helpers/hold-connections.py'), '--host', lab.dvipa.address, '--port', String(LINE_PORT), '--source', source, '--user', 'alice', '--connections', String(n), '--hold', String(holdS)];
  return inClient(lab, argv, 60_000).then((r) => {
    if (r.code !== 0) throw new Error(`hold-connections failed: ${r.stderr}`);
    return r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Held);
  });
}

const fromSource = (source: string) => [...running.routes.entries()].filter(([f]) => f.clientAddress === source).length;

describe('routing-table quotas', () => {
  it(`one client address gets ${PER_SOURCE} handed-off connections, then its handoffs are refused and answered by the router; all clients together stop at ${TOTAL}; the table never fills`, { timeout: 90_000 }, async () => {
    const { lab } = running;
    const a = lab.client.address;
    const b = await extraClientAddress(lab, 0);
    let most = 0;
    let watching = true;
    const watch = (async () => {
      while (watching) {
        most = Math.max(most, running.routes.size());
        await sleep(50);
      }
    })();
    try {
      const first = hold(lab, a, PER_SOURCE + 5, 8);
      // Until A's connections are all opened, the table holds at most A's quota.
      for (let waited = 0; fromSource(a) < PER_SOURCE && waited < 30_000; waited += 50) await sleep(50);
      // Each connection reinstated on n2 is bounded in idleness (limits.idle): a keepalive timer
      // runs. ss shows one timer a socket, the retransmission timer while data is unacknowledged
      // (a greeting just sent): asked again until those are acknowledged.
      const n2 = lab.nodes.find((n) => n.name === 'n2')!;
      const idleOnN2 = () =>
        execFileSync('ip', ['netns', 'exec', n2.ns, 'ss', '-tnoH', 'state', 'established', `( sport = :${LINE_PORT} )`], { encoding: 'utf8' })
          .split('\n')
          .filter((l) => l.includes(`${a}:`));
      let lines = idleOnN2();
      for (let waited = 0; lines.some((l) => !/timer:\(keepalive,/.test(l)) && waited < 5000; waited += 100) {
        await sleep(100);
        lines = idleOnN2();
      }
      expect(lines.length).toBeGreaterThanOrEqual(PER_SOURCE);
      expect(lines.filter((l) => !/timer:\(keepalive,/.test(l)), 'handed-off sockets without a keepalive timer').toEqual([]);
      const second = hold(lab, b, 15, 4);
      const [heldA, fromB] = await Promise.all([first, second]);

      const served = (h: Held[]) => h.filter((x) => x.greeting === 'OK n2').length;
      const refused = (h: Held[]) => h.filter((x) => /^ERR cannot reach n2: E_QUOTA at admit/.test(x.greeting ?? '')).length;
      expect(heldA.filter((x) => x.error), 'connections that failed outright').toEqual([]);
      expect(fromB.filter((x) => x.error), 'connections that failed outright').toEqual([]);
      expect([served(heldA), refused(heldA)]).toEqual([PER_SOURCE, 5]);
      expect([served(fromB), refused(fromB)]).toEqual([TOTAL - PER_SOURCE, 15 - (TOTAL - PER_SOURCE)]);
    } finally {
      watching = false;
      await watch;
    }
    expect(most, 'entries at any moment').toBeLessThanOrEqual(TOTAL);
    // Counted where operators look (the log shows only some of a flood of refusals).
    const metrics = metricsOf(lab, 'n1');
    expect(sampleOf(metrics, 'baton_routing_quota_refused_total', { quota: 'per-source' })).toBe(5);
    expect(sampleOf(metrics, 'baton_routing_quota_refused_total', { quota: 'total' })).toBe(5);
    // Closed, the connections leave the table, and the quota is free again.
    for (let waited = 0; running.routes.size() > 0 && waited < 30_000; waited += 200) await sleep(200);
    expect(running.routes.size()).toBe(0);
    const again = await hold(lab, a, 1, 0);
    expect(again[0]?.greeting).toBe('OK n2');
  });
});
