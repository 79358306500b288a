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

/** `workers` Python processes, `each` connections in turn: bob's node is n3; alice (n2) is the fallback. */
async function bobThenAlice(workers: number, each: number, extra: string[] = []): Promise<Array<Record<string, unknown>>> {
  const runs = await Promise.all(
    Array.from({ length: workers }, () =>
      inClient(running.lab, lineClient(running.lab, ['--user', 'bob', '--fallback-user', 'alice', '--expect-node', 'n2', '--get', '20000', '--put', '20000', '--repeat', String(each), ...extra]), 120_000),
    ),
  );
  return runs.flatMap((r) => r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>));
}

function expectAllRescued(results: Array<Record<string, unknown>>, firstGreeting: RegExp): void {
  expect(results).toHaveLength(100);
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

  it('target application dies after its batond said ready: the client sees a reset, the entry is released and removed', async () => {
    // The only application on n3's port 7000 is one that crashes between ready and live.
    // It holds the routing application (SIGSTOP) once it has accepted, so that it is dead when
    // 'live' comes: resumed below whatever happens.
    await stopProcess(running.lab.runDir, 'n3-line-target', running.lab.prefix);
    const router = pidOf('n1-line-router');
    await startProcess(
      { name: 'n3-crashing-target', ns: node('n3').ns, argv: [process.execPath, path.join(repoRoot(), 'test/fixtures/crash-after-ready.mjs'), repoRoot(), agentSocket(running.lab, 'n3'), '7000', String(router)] },
      { runDir: running.lab.runDir, lab: running.lab.prefix },
    );
    for (let waited = 0; !readLog(running.lab, 'n3-batond').some((l) => l.msg === 'target application registered' && l.app === 'crash-after-ready') && waited < 10_000; waited += 100) await sleep(100);
    const clientPort = 45200;
    const flow = { family: 4 as const, clientAddress: running.lab.client.address, clientPort, vipAddress: running.lab.dvipa.address, vipPort: 7000 };
    let res: { ok: boolean; error?: string };
    try {
      // Streaming through the handoff: its bytes reach n3 once the route points there, first the
      // reinstated socket (silent, in repair mode), then, once the application died with it, none.
      const args = ['--user', 'bob', '--source-port', String(clientPort), '--timeout', '10', '--stream-during-handoff', '--put', '4000000'];
      res = JSON.parse((await inClient(running.lab, lineClient(running.lab, args), 30_000)).stdout);
    } finally {
      process.kill(router, 'SIGCONT');
    }
    // 'live' comes after the routing node's step timeout (the router was held): n3 releases the flow then.
    const orphaned = () => readLog(running.lab, 'n3-batond').some((l) => l.msg === 'routed here after its target application died: releasing the flow (the client sees a reset)');
    for (let waited = 0; !orphaned() && waited < 8000; waited += 100) await sleep(100);
    expect(orphaned()).toBe(true);
    // The route switched to n3, where no socket exists: the kernel answers the client with a reset.
    expect(res.ok).toBe(false);
    expect(res.error).toMatch(/ConnectionResetError|reset/i);
    // Whether 'live' reached n3 before or after it noticed the application's death, n3 releases the flow.
    // Released at once, removed after the release grace (3 s in the lab): no entry leaks.
    expect(running.routes.get(flow)?.state).toBe('released');
    for (let waited = 0; running.routes.get(flow) && waited < 8000; waited += 100) await sleep(100);
    expect(running.routes.get(flow)).toBeUndefined();
  });
});
