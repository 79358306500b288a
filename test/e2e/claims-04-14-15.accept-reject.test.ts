// Claims 4, 14, 15: the target application is told of the transfer and accepts or refuses it;
// the routing node closes its socket only after an acceptance. n2's line target is at capacity
// (it refuses everything); n3's decides on each offer itself (--decide) and accepts.
import { describe, expect, it } from 'vitest';
import { inClient, lineClient, readLog } from '../../controller/lab/demo.js';
import { useLab } from '../helpers/lab.js';

const running = useLab({ extraArgs: { 'n2-line-target': ['--capacity', '0'], 'n3-line-target': ['--decide'] } });

describe('the target application accepts or refuses a transfer', () => {
  it('accepted: the connection moves and the target serves it', async () => {
    const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'bob', '--expect-node', 'n3', '--get', '1000']), 30_000);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, served_by: 'n3' });
    // n3's application was asked (it registered as one that decides), not just its batond.
    expect(readLog(running.lab, 'n3-batond').find((l) => l.msg === 'target application registered' && l.app === 'line-target')).toMatchObject({ decides: true });
  });

  it('refused: the target was asked, said why, and the routing node kept serving the same connection', async () => {
    const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'alice', '--fallback-user', 'bob', '--expect-node', 'n3', '--get', '1000']), 30_000);
    const res = JSON.parse(r.stdout);
    // Refused by n2's application: the routing node still owned the socket and answered on it;
    // the client then asked for bob on the very same connection and was moved to n3.
    expect(res.first_greeting).toMatch(/^ERR cannot reach n2: E_REJECTED/);
    expect(res).toMatchObject({ ok: true, served_by: 'n3' });
    const refusal = readLog(running.lab, 'n2-line-target').find((l) => l.msg === 'transfer refused by the application');
    expect(refusal).toMatchObject({ reason: 'at capacity (0 connections)' });
    const failed = readLog(running.lab, 'n1-line-router').filter((l) => l.event === 'handoff' && l.outcome === 'failed').pop();
    expect(String(failed?.err)).toContain('at capacity');
    // The refused attempt left nothing frozen behind.
    expect([...running.routes.entries()].filter(([, e]) => e.state === 'frozen')).toEqual([]);
  });
});
