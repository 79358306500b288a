// Claims 1, 2, 12, 26 with an unmodified Python client: after HELLO/USER the connection moves to
// the user's node, which streams and receives 10 MB byte-exact; and 50 handoffs in a row all work.
import { describe, expect, it } from 'vitest';
import { inClient, lineClient, readLog } from '../../controller/lab/demo.js';
import { useLab } from '../helpers/lab.js';

const running = useLab();

const results = (stdout: string) => stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);

describe('line protocol through a plain Python client', () => {
  it('GET 10000000 and PUT 10000000 after the handoff, byte-exact, no reset', async () => {
    const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'alice', '--expect-node', 'n2', '--get', '10000000', '--put', '10000000']), 120_000);
    const [res] = results(r.stdout);
    expect(res, r.stderr).toMatchObject({ ok: true, served_by: 'n2', get_ok: true, put_ok: true, bye: true, clean_close: true });
  });

  it('50 handoffs in a row all succeed', async () => {
    const before = readLog(running.lab, 'n1-line-router').filter((l) => l.event === 'handed-off').length;
    const a = results((await inClient(running.lab, lineClient(running.lab, ['--user', 'alice', '--expect-node', 'n2', '--get', '1000', '--put', '1000', '--repeat', '25']), 120_000)).stdout);
    const b = results((await inClient(running.lab, lineClient(running.lab, ['--user', 'bob', '--expect-node', 'n3', '--get', '1000', '--put', '1000', '--repeat', '25']), 120_000)).stdout);
    const all = [...a, ...b];
    expect(all).toHaveLength(50);
    expect(all.filter((x) => x.ok !== true)).toEqual([]);
    const after = readLog(running.lab, 'n1-line-router').filter((l) => l.event === 'handed-off').length;
    expect(after - before).toBe(50);
  });
});
