// Applications need no capability: batond does every TCP_REPAIR step on the socket descriptors
// they pass it, and hands them live ones. The line router and both line targets run with an empty
// capability set (setpriv empties the bounding set before node starts); connections are handed
// off, moved on by their target (a routing application in turn) and back, byte-exact.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { inClient, lineClient } from '../../controller/lab/demo.js';
import { useLab } from '../helpers/lab.js';

const APPS = ['n1-line-router', 'n2-line-target', 'n3-line-target'];
const running = useLab({ unprivileged: APPS });

/** A process's capability sets as /proc shows them (hex masks). */
function capabilities(name: string): Record<'CapPrm' | 'CapEff' | 'CapBnd', bigint> {
  const pid = fs.readFileSync(path.join(running.lab.runDir, `${name}.pid`), 'utf8').trim();
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const get = (key: string) => BigInt(`0x${new RegExp(`^${key}:\\s*([0-9a-f]+)$`, 'm').exec(status)![1]}`);
  return { CapPrm: get('CapPrm'), CapEff: get('CapEff'), CapBnd: get('CapBnd') };
}

describe('applications without any capability', () => {
  it('run with empty capability sets (batond keeps its own)', () => {
    for (const app of APPS) expect(capabilities(app)).toEqual({ CapPrm: 0n, CapEff: 0n, CapBnd: 0n });
    const CAP_NET_ADMIN = 12n;
    expect((capabilities('n1-batond').CapEff >> CAP_NET_ADMIN) & 1n).toBe(1n);
  });

  it('hand a connection off, move it on and back, every byte checked', async () => {
    const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'alice', '--expect-node', 'n2', '--move', 'n3,n2', '--get', '1000000', '--put', '1000000', '--whoami']), 60_000);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, served_by: 'n2', moves: ['OK n3', 'OK n2'], moves_ok: true, get_ok: true, put_ok: true, clean_close: true });
  });

  it('a refused handoff still leaves the connection with the routing application, reading', async () => {
    // n1 runs no line target: the move is refused and n3 keeps serving on the same socket. The
    // rollback (repair mode off) is batond's, so it needs no privilege here either.
    const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'bob', '--expect-node', 'n3', '--move', 'n1', '--get', '1000']), 30_000);
    const res = JSON.parse(r.stdout);
    expect(res.moves).toEqual([expect.stringMatching(/^ERR cannot move to n1: E_REJECTED/)]);
    expect(res.get_ok).toBe(true);
  });
});
