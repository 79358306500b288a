// A routing-table entry lives as long as its connection: when the serving node's application sees
// the connection close, the entry becomes RELEASED (it still forwards: TCP's closing handshake goes
// on), and once the serving node's kernel is done with it too (no socket, or TIME_WAIT) it becomes
// FINISHED and is gone after the grace period (3 s in the lab). After many connections have come and gone, the table is
// empty again: nothing leaks.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { curlDigest, inClient, lineClient } from '../../../controller/lab/demo.js';
import { pidFileOf, readPidFile } from '../../../controller/lab/processes.js';
import { repoRoot } from '../../../controller/paths.js';
import { metricsOf } from '../../helpers/api.js';
import { useLab } from '../../helpers/lab.js';
import { until } from '../../helpers/wait.js';

const running = useLab();
const states = () => [...running.routes.entries()].map(([, e]) => e.state);

/** Waits for the routing table to reach a state; reading it is a walk of the BPF map, so not too often. */
const tableUntil = (what: string, cond: () => boolean, timeoutMs: number) => until(() => `${what}; table: ${JSON.stringify(states())}`, cond, timeoutMs, 100);

describe('routing-table entries end with their connections', () => {
  it('120 connections come and go; every entry is released, then removed: the table is empty again', async () => {
    const runs = await Promise.all([
      inClient(running.lab, lineClient(running.lab, ['--user', 'alice', '--expect-node', 'n2', '--get', '1000', '--repeat', '50']), 120_000),
      inClient(running.lab, lineClient(running.lab, ['--user', 'bob', '--expect-node', 'n3', '--put', '1000', '--repeat', '50']), 120_000),
    ]);
    for (let i = 0; i < 10; i++) await inClient(running.lab, curlDigest(running.lab, 'alice', 'wonderland', ['/']));
    const results = runs.flatMap((r) => r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { ok: boolean }));
    expect(results.filter((r) => r.ok)).toHaveLength(100);
    // Every client has closed: what is left is on its way out (RELEASED, or FINISHED once the
    // serving node's kernel is done too), none is still FORWARD.
    await tableUntil('every entry released', () => states().every((s) => s === 'released' || s === 'finished'), 2000);
    await tableUntil('the table to empty', () => running.routes.size() === 0, 3000 + 3000);
  });

  it('a connection still open keeps its entry FORWARD past the grace period', async () => {
    const held = inClient(running.lab, curlDigest(running.lab, 'bob', 'builder', ['/hold?ms=4000']));
    await tableUntil('the held connection\'s entry', () => states().includes('forward'), 3000);
    await sleep(3500);
    expect(states()).toContain('forward');
    expect((await held).stdout).toContain('served by n3');
    await tableUntil('the table to empty', () => running.routes.size() === 0, 3000 + 3000);
  });

  it('a client that closes long after the target did keeps its entry until its FIN is in: acknowledged by the target, no reset', async () => {
    const { lab } = running;
    const n1 = lab.nodes.find((n) => n.name === 'n1')!;
    const n2 = lab.nodes.find((n) => n.name === 'n2')!;
    const outRsts = () => Number(/TcpOutRsts\s+(\d+)/.exec(execFileSync('ip', ['netns', 'exec', n1.ns, 'nstat', '-az', 'TcpOutRsts'], { encoding: 'utf8' }))?.[1]);
    const rstsBefore = outRsts();
    // Connection: close: the target's HTTP server ends the response and destroys the socket, so
    // its kernel is left in FIN_WAIT2 on its own; this client reads to the end, then waits twice
    // the lab's grace (3 s) before it closes its side. Its FIN must still reach n2.
    const client = inClient(
      lab,
      ['python3', path.join(repoRoot(), 'test/helpers/http_late_close.py'), '--host', lab.dvipa.address, '--user', 'alice', '--password', 'wonderland', '--linger', '6'],
      30_000,
    );
    await tableUntil('the connection handed off', () => states().includes('forward') || states().includes('released'), 5000);
    await sleep(4500);
    // Past the grace since the application closed: the client has not, so TCP is not done.
    expect(states()).toEqual(['released']);
    const metrics = metricsOf(lab, 'n2');
    expect(metrics).toMatch(/^baton_connections_closing\{node="n2"\} 1$/m);
    const out = await client;
    expect(out.stdout, out.stderr).toMatch(/^HTTP\/1.1 200 OK \d+\nclosed$/m);
    const port = /^HTTP\/1.1 200 OK (\d+)/m.exec(out.stdout)![1];
    // The target received the client's FIN (FIN_WAIT2 → TIME_WAIT) and the distributor sent no RST.
    const onN2 = execFileSync('ip', ['netns', 'exec', n2.ns, 'ss', '-Htan', 'state', 'time-wait', 'dst', `${lab.client.address}:${port}`], { encoding: 'utf8' });
    expect(onN2.trim()).not.toBe('');
    expect(outRsts()).toBe(rstsBefore);
    await tableUntil('the table to empty', () => running.routes.size() === 0, 3000 + 3000);
  });

  it('a target application that dies releases every connection it served', async () => {
    const held = [1, 2, 3].map(() => inClient(running.lab, curlDigest(running.lab, 'bob', 'builder', ['/hold?ms=5000'])));
    await tableUntil('three held connections', () => states().filter((s) => s === 'forward').length === 3, 5000);
    const pid = readPidFile(pidFileOf(running.lab.runDir, 'n3-http-target'))!;
    process.kill(pid, 'SIGKILL');
    await Promise.all(held);
    await tableUntil('the table to empty', () => running.routes.size() === 0, 3000 + 3000);
  });
});
