// When a handoff fails before the route switch, the routing node still holds a working socket and
// the routing application is told why: the same client connection is then served elsewhere.
import { describe, expect, it } from 'vitest';
import { inClient, lineClient, readLog } from '../../../controller/lab/demo.js';
import { stopProcess } from '../../../controller/lab/processes.js';
import { useLab } from '../../helpers/lab.js';

const running = useLab();

const lastFailure = () => readLog(running.lab, 'n1-line-router').filter((l) => l.event === 'handoff' && l.outcome === 'failed').pop();

/** One connection to the DVIPA of a family: bob's node n3 first, alice's n2 on the same connection after. */
async function bobThenAlice(family: 4 | 6) {
  const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'bob', '--fallback-user', 'alice', '--expect-node', 'n2', '--get', '100000', '--put', '100000'], family), 30_000);
  return JSON.parse(r.stdout.trim()) as Record<string, unknown>;
}

describe('a failed handoff leaves the connection with the routing node', () => {
  it('target application gone: rejected, rolled back, the same connection is then handed to n2', async () => {
    await stopProcess(running.lab.runDir, 'n3-line-target', running.lab.prefix);
    // Over both families of the dual-stack DVIPA.
    for (const family of [4, 6] as const) {
      const res = await bobThenAlice(family);
      expect(res, `IPv${family}`).toMatchObject({ ok: true, served_by: 'n2', get_ok: true, put_ok: true, local: expect.stringMatching(family === 6 ? /^\[fd/ : /^10\./) });
      expect(String(res.first_greeting)).toMatch(/^ERR cannot reach n3: E_REJECTED at offer/);
      expect(lastFailure()).toMatchObject({ code: 'E_REJECTED', step: 'offer' });
      // The failed attempt left no entry behind: only the successful handoff to n2 added one.
      expect([...running.routes.entries()].filter(([, e]) => e.state === 'frozen')).toEqual([]);
    }
  });

  it('target node agent gone: the peer link fails, rolled back, served by n2 on the same connection', async () => {
    await stopProcess(running.lab.runDir, 'n3-batond', running.lab.prefix);
    for (const family of [4, 6] as const) {
      const res = await bobThenAlice(family);
      expect(res, `IPv${family}`).toMatchObject({ ok: true, served_by: 'n2', get_ok: true, put_ok: true });
      expect(String(res.first_greeting)).toMatch(/^ERR cannot reach n3: E_PEER/);
      expect(lastFailure()).toMatchObject({ code: 'E_PEER' });
    }
  });
});
