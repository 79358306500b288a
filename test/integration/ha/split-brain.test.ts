// Split brain: n1's VRRP adverts stop reaching n2 (the bridge stops flooding multicast to n2's
// port), so keepalived makes n2 MASTER too while n1 stays MASTER: both distributors are active.
// n1 still hears n2's adverts and answers each with gratuitous ARP, so the clients' side stays on
// n1 (docs/operations.md, "Limits"). What Baton promises meanwhile: the connections handed off
// before keep streaming, byte-exact, none reset (n2 took over a replica fed the same stream, and
// n1 never stopped steering); when the adverts pass again n2 steps down, stands by, and n1's stream
// makes its replica equal to n1's table again.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { RoutingTable } from '../../../controller/agent/routing-table.js';
import { connectionId } from '../../../controller/flow.js';
import { inClient, readLog } from '../../../controller/lab/demo.js';
import { useLab } from '../../helpers/lab.js';
import { expectAllCarriedOn, streamsClient } from '../../helpers/streams.js';
import { until } from '../../helpers/wait.js';

const running = useLab({ backup: true });

const CONNECTIONS = 100;
const ROUND_BYTES = 16384;
/** How long both distributors are active. */
const SPLIT_MS = 3000;
const ACTIVE = "active distributor: the routing table is this node's";

let n2Table: RoutingTable | undefined;
afterAll(() => n2Table?.close());

const keysOf = (table: RoutingTable) => new Map([...table.entries()].map(([k, e]) => [connectionId(k), `${e.state} ${e.targetNode}`]));
const equal = (a: Map<string, string>, b: Map<string, string>) => a.size === b.size && [...a].every(([k, v]) => b.get(k) === v);

/** Multicast flooding to n2's bridge port: off, n2 hears no adverts (n1 still hears n2's). */
function floodToN2(on: boolean): void {
  const { lab } = running;
  const port = lab.nodes.find((n) => n.name === 'n2')!.bridgePort;
  execFileSync('ip', ['-n', lab.bridge.ns, 'link', 'set', 'dev', port, 'type', 'bridge_slave', 'mcast_flood', on ? 'on' : 'off']);
}

describe('split brain: both distributors active', () => {
  it(`${CONNECTIONS} handed-off connections keep streaming, none reset; then n2 steps down and its replica is n1's table again`, { timeout: 120_000 }, async () => {
    const { lab } = running;
    await until('n1 active', () => readLog(lab, 'n1-batond').some((l) => l.msg === ACTIVE), 10_000, 50);
    n2Table = RoutingTable.openPinned(`/sys/fs/bpf/baton/${lab.prefix}-n2`);
    const stopFile = path.join(lab.runDir, 'streams.stop');
    const client = inClient(lab, streamsClient(lab, ['--connections', String(CONNECTIONS), '--get', String(ROUND_BYTES), '--put', String(ROUND_BYTES),
      '--interval', '0.1', '--until-file', stopFile, '--seconds', '90', '--timeout', '20']), 110_000);
    let splitAt = 0;
    let healedAt = 0;
    try {
      const handedOff = () => readLog(lab, 'n1-line-router').filter((l) => l.event === 'handed-off').length;
      await until(() => `${CONNECTIONS} handoffs (${handedOff()} so far)`, () => handedOff() >= CONNECTIONS, 60_000, 100);
      await until('n2\'s replica equal to n1\'s table', () => keysOf(running.routes).size >= CONNECTIONS && equal(keysOf(running.routes), keysOf(n2Table!)), 10_000, 50);

      splitAt = Date.now();
      floodToN2(false);
      await until('n2 active too', () => readLog(lab, 'n2-batond').some((l) => l.msg === ACTIVE), 10_000, 20);
      await sleep(SPLIT_MS);
      // n1 never stood down: it kept steering all along.
      expect(readLog(lab, 'n1-batond').filter((l) => /standby distributor/.test(String(l.msg)))).toEqual([]);

      floodToN2(true);
      healedAt = Date.now();
      await until('n2 standing by again', () => readLog(lab, 'n2-batond').some((l) => /standby distributor/.test(String(l.msg))), 10_000, 20);
      // n1's next attach gives n2 a fresh snapshot: its replica is n1's table again.
      await until(
        () => `n2's replica equal to n1's table again (${n2Table!.size()} vs ${running.routes.size()})`,
        () => equal(keysOf(running.routes), keysOf(n2Table!)),
        10_000,
        50,
      );
      await sleep(1000);
    } finally {
      floodToN2(true);
      fs.writeFileSync(stopFile, '');
    }
    const out = await client;
    const results = expectAllCarriedOn(out, CONNECTIONS, ROUND_BYTES);
    // Rounds during the split and after it: carried on, not merely not reset.
    const during = (r: (typeof results)[number]) => (r.round_ms ?? []).filter(([s, e]) => s >= splitAt && e <= healedAt).length;
    const after = (r: (typeof results)[number]) => (r.round_ms ?? []).filter(([s]) => s > healedAt).length;
    expect(results.filter((r) => during(r) === 0).map((r) => r.conn), 'connections with no round during the split').toEqual([]);
    expect(results.filter((r) => after(r) === 0).map((r) => r.conn), 'connections with no round after it').toEqual([]);
    const n2Active = readLog(lab, 'n2-batond').find((l) => l.msg === ACTIVE)!;
    const longest = Math.max(...results.map((r) => Math.max(0, ...(r.round_ms ?? []).filter(([s]) => s >= splitAt).map(([s, e]) => e - s))));
    console.log(`split brain: n2 active ${(n2Active.time as number) - splitAt} ms after its adverts stopped; ${SPLIT_MS} ms with both active; longest round of a connection from then on ${longest} ms`);
  });
});
