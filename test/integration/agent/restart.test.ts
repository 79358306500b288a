// The distributor's batond can restart under live traffic: the XDP program stays attached and the
// routing table pinned while it is down, and the new batond adopts both (same map, entries kept,
// program replaced in one step). Connections already handed off keep streaming, byte-exact. (A
// smaller version of the 200-connection test the operations issue asks for.)
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { labProcesses } from '../../../controller/lab/cluster.js';
import { inClient, lineClient, readLog } from '../../../controller/lab/demo.js';
import { startProcess, stopProcess } from '../../../controller/lab/processes.js';
import { useLab } from '../../helpers/lab.js';

const running = useLab();

describe('restarting the distributor\'s batond', () => {
  it('20 transferred connections streaming both ways carry on through the restart, byte-exact', async () => {
    const clients = Array.from({ length: 20 }, (_, i) =>
      inClient(running.lab, lineClient(running.lab, ['--user', i % 2 ? 'alice' : 'bob', '--get', '60000000', '--put', '30000000']), 120_000),
    );
    // Let every connection be handed off and streaming, then restart n1's agent under the traffic.
    const handedOff = () => readLog(running.lab, 'n1-line-router').filter((l) => l.event === 'handed-off').length;
    for (let waited = 0; handedOff() < 20 && waited < 20_000; waited += 100) await sleep(100);
    expect(handedOff()).toBe(20);
    await sleep(200);
    const programBefore = readLog(running.lab, 'n1-batond').find((l) => l.msg === 'XDP steering attached')?.programId;
    const entriesBefore = running.routes.size();
    const spec = labProcesses(running.lab).find((s) => s.name === 'n1-batond')!;
    await stopProcess(running.lab.runDir, 'n1-batond', running.lab.prefix);
    // (Read before the new process truncates its log.)
    const logBefore = fs.readFileSync(`${running.lab.runDir}/n1-batond.log`, 'utf8');
    await startProcess(spec, { runDir: running.lab.runDir, lab: running.lab.prefix });
    const results = (await Promise.all(clients)).map((r) => JSON.parse(r.stdout.trim() || '{}') as Record<string, unknown>);
    expect(results.filter((r) => r.ok !== true)).toEqual([]);
    expect(results.every((r) => r.get_ok === true && r.put_ok === true)).toBe(true);
    // The old agent left steering attached; the new one adopted the pinned table with its entries.
    expect(logBefore).toContain('XDP steering left attached, routing table pinned');
    const attached = readLog(running.lab, 'n1-batond').find((l) => l.msg === 'XDP steering attached');
    expect(attached).toBeDefined();
    expect(attached!.programId).not.toBe(programBefore);
    expect(entriesBefore).toBeGreaterThanOrEqual(20);
  });

  it('applications reconnect to a restarted batond: new handoffs work from n1 and to n2 again', async () => {
    // Each application link that a restart cuts must come back: n1's line router; n2's line
    // target, which holds two links (as a target, and as a router that moves connections on).
    const relinks = (app: string) => readLog(running.lab, app).filter((l) => l.msg === 'link to batond re-established').length;
    const restart = async (name: string, apps: Record<string, number>) => {
      const before = Object.fromEntries(Object.keys(apps).map((a) => [a, relinks(a)]));
      const spec = labProcesses(running.lab).find((x) => x.name === name)!;
      await stopProcess(running.lab.runDir, name, running.lab.prefix);
      await startProcess(spec, { runDir: running.lab.runDir, lab: running.lab.prefix });
      const missing = () => Object.entries(apps).filter(([a, n]) => relinks(a) - before[a]! < n).map(([a]) => a);
      for (let waited = 0; missing().length && waited < 20_000; waited += 100) await sleep(100);
      expect(missing(), `applications that did not reconnect to the restarted ${name}`).toEqual([]);
    };
    await restart('n1-batond', { 'n1-line-router': 1 });
    await restart('n2-batond', { 'n2-line-target': 2 });
    const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'alice', '--expect-node', 'n2', '--get', '100000', '--move', 'n3']), 30_000);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, served_by: 'n2', moves: ['OK n3'] });
  });
});
