// Faults at the target node before it acknowledges a transfer (issue 6): its batond unreachable
// (stopped), killed mid-offer, or its import failing (a port conflict). Each time the routing node
// keeps the connection (rolled back, repair mode left), the routing application tells the client,
// and the same connection is then served elsewhere: 100 repetitions per fault, 0 connections lost.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { agentSocket, labProcesses } from '../../../controller/lab/cluster.js';
import { inClient, lineClient, readLog } from '../../../controller/lab/demo.js';
import { startProcess, stopProcess } from '../../../controller/lab/processes.js';
import { repoRoot } from '../../../controller/paths.js';
import { useLab } from '../../helpers/lab.js';

const running = useLab();
const pidOf = (name: string) => Number(fs.readFileSync(path.join(running.lab.runDir, `${name}.pid`), 'utf8'));
const node = (name: string) => running.lab.nodes.find((n) => n.name === name)!;

/**
 * `workers` Python processes, `each` connections in turn: bob's node is n3; alice (n2) is the
 * fallback. Every other worker connects to the IPv6 DVIPA: each fault is met over both families.
 */
async function bobThenAlice(workers: number, each: number, extra: string[] = []): Promise<Array<Record<string, unknown>>> {
  const runs = await Promise.all(
    Array.from({ length: workers }, (_, i) =>
      inClient(running.lab, lineClient(running.lab, ['--user', 'bob', '--fallback-user', 'alice', '--expect-node', 'n2', '--get', '20000', '--put', '20000', '--repeat', String(each), ...extra], i % 2 === 0 ? 4 : 6), 120_000),
    ),
  );
  return runs.flatMap((r) => r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>));
}

function expectAllRescued(results: Array<Record<string, unknown>>, firstGreeting: RegExp): void {
  expect(results).toHaveLength(100);
  expect(results.filter((r) => String(r.local).startsWith('[')).length, 'connections over IPv6').toBeGreaterThanOrEqual(40);
  const lost = results.filter((r) => !(r.ok === true && r.served_by === 'n2' && r.get_ok === true && r.put_ok === true && r.clean_close === true && firstGreeting.test(String(r.first_greeting))));
  expect(lost).toEqual([]);
  // Nothing left frozen: every failed attempt restored the entry (there was none).
  expect([...running.routes.entries()].filter(([, e]) => e.state === 'frozen')).toEqual([]);
}

async function restart(name: string): Promise<void> {
  await stopProcess(running.lab.runDir, name, running.lab.prefix);
  await startProcess(labProcesses(running.lab).find((s) => s.name === name)!, { runDir: running.lab.runDir, lab: running.lab.prefix });
  for (let waited = 0; !readLog(running.lab, name).some((l) => l.msg === 'batond ready') && waited < 15_000; waited += 100) await sleep(100);
  // Its target applications re-register over their reconnected links.
  await sleep(1500);
}

describe('target faults before the acknowledgement', () => {
  it('target batond unreachable (stopped): 100 handoffs time out, roll back, and the same connections are served by n2', async () => {
    const pid = pidOf('n3-batond');
    process.kill(pid, 'SIGSTOP');
    try {
      expectAllRescued(await bobThenAlice(25, 4), /^ERR cannot reach n3: E_TIMEOUT at offer/);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    const failures = readLog(running.lab, 'n1-line-router').filter((l) => l.event === 'handoff' && l.outcome === 'failed' && l.code === 'E_TIMEOUT');
    expect(failures.length).toBeGreaterThanOrEqual(100);
  });

  it('target batond killed while offers wait on it: each fails at once (link closed), rolls back, served by n2', async () => {
    const pid = pidOf('n3-batond');
    process.kill(pid, 'SIGSTOP');
    // Offers pile up on the stopped agent's link; then it dies without answering any of them.
    const clients = bobThenAlice(25, 4);
    for (let waited = 0; readLog(running.lab, 'n1-line-router').filter((l) => l.msg === 'handed off' || l.event === 'handoff').length === 0 && waited < 1000; waited += 50) await sleep(50);
    await sleep(300);
    process.kill(pid, 'SIGKILL');
    expectAllRescued(await clients, /^ERR cannot reach n3: E_(PEER|TIMEOUT)/);
    await restart('n3-batond');
    const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'bob', '--expect-node', 'n3', '--get', '1000']), 30_000);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, served_by: 'n3' });
  });

  it('import fails on the target (the 4-tuple is taken there): clear reject, rolled back, served by n2', async () => {
    // A socket on n3 already holds DVIPA:7000 ↔ client:port (made in repair mode, like an import),
    // so the next import of that very tuple cannot bind. The client uses that source port.
    const clientPort = 45123;
    const holder = spawn('ip', ['netns', 'exec', node('n3').ns, process.execPath, '--input-type=module', '-e', `
      import { importConnection } from '${path.join(repoRoot(), 'dist/native/repair.js')}';
      importConnection({ family: 4, local: { address: '${running.lab.dvipa.address}', port: 7000 }, remote: { address: '${running.lab.client.address}', port: ${clientPort} },
        sendSeq: 1, recvSeq: 1, sendQueue: Buffer.alloc(0), unsentLength: 0, recvQueue: Buffer.alloc(0), mss: 1448,
        options: { timestamps: true, sack: true, windowScale: true }, sndWscale: 7, rcvWscale: 7, timestamp: 1,
        window: { sndWl1: 1, sndWnd: 65535, maxWindow: 65535, rcvWnd: 65535, rcvWup: 1 } });
      console.log('holding'); setInterval(() => {}, 1000);`], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout.once('data', () => resolve());
        holder.once('exit', (code) => reject(new Error(`holder exited ${code}`)));
      });
      const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'bob', '--fallback-user', 'alice', '--expect-node', 'n2', '--get', '20000', '--source-port', String(clientPort)]), 30_000);
      const res = JSON.parse(r.stdout);
      expect(res).toMatchObject({ ok: true, served_by: 'n2', get_ok: true });
      expect(res.first_greeting).toMatch(/^ERR cannot reach n3: E_REJECTED at offer/);
      const refusal = readLog(running.lab, 'n3-batond').find((l) => l.msg === 'transfer refused: socket could not be reinstated');
      expect(String(refusal?.err)).toMatch(/connect\(remote\) failed: EADDRNOTAVAIL|EADDRINUSE/);
    } finally {
      holder.kill('SIGKILL');
    }
  });

  it('target application dies after its batond accepted: the commit is refused, the routing node rolls back and answers on the same connection', async () => {
    // The only application on n3's port 7000 decides to accept, stops n1's batond (SIGSTOP) and
    // dies; n1's batond is resumed once it is gone. The client streams through the move, so n1
    // has a delta to commit, and n3, whose application is gone, refuses it. (A move with nothing
    // to commit switches the route at once and 'live' then finds no application: n3 releases the
    // flow, unit-tested in test/unit/transfer/target-relay.test.ts.)
    await stopProcess(running.lab.runDir, 'n3-line-target', running.lab.prefix);
    const routingAgent = pidOf('n1-batond');
    await startProcess(
      { name: 'n3-crashing-target', ns: node('n3').ns, argv: [process.execPath, path.join(repoRoot(), 'test/fixtures/crash-after-ready.mjs'), repoRoot(), agentSocket(running.lab, 'n3'), '7000', String(routingAgent)] },
      { runDir: running.lab.runDir, lab: running.lab.prefix },
    );
    for (let waited = 0; !readLog(running.lab, 'n3-batond').some((l) => l.msg === 'target application registered' && l.app === 'crash-after-ready') && waited < 10_000; waited += 100) await sleep(100);
    const crashing = pidOf('n3-crashing-target');
    const clientPort = 45200;
    const flow = { family: 4 as const, clientAddress: running.lab.client.address, clientPort, vipAddress: running.lab.dvipa.address, vipPort: 7000 };
    let res: Record<string, unknown>;
    try {
      const client = inClient(running.lab, lineClient(running.lab, ['--user', 'bob', '--source-port', String(clientPort), '--timeout', '10', '--stream-during-handoff', '--put', '100000']), 30_000);
      for (let waited = 0; fs.existsSync(`/proc/${crashing}`) && waited < 10_000; waited += 20) await sleep(20);
      await sleep(300);
      process.kill(routingAgent, 'SIGCONT');
      res = JSON.parse((await client).stdout);
    } finally {
      process.kill(routingAgent, 'SIGCONT');
    }
    // Answered by n1 on the connection it kept: no reset, no lost connection.
    expect(res.greeting).toMatch(/^ERR cannot reach n3: E_REJECTED at commit/);
    const failure = readLog(running.lab, 'n1-batond').filter((l) => l.event === 'handoff' && l.outcome === 'failed').pop();
    expect(failure).toMatchObject({ step: 'commit', code: 'E_REJECTED', err: expect.stringContaining('crash-after-ready went away') });
    // Nothing frozen, nothing routed to n3 for this flow.
    expect(running.routes.get(flow)).toBeUndefined();
    expect([...running.routes.entries()].filter(([, e]) => e.state === 'frozen')).toEqual([]);
  });
});
