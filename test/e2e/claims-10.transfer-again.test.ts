// Claim 10: a connection already transferred can be transferred again. The client is handed to
// n2, n2's application moves it on to n3 and n3's back to n2; the distributor's entry is repointed
// each time and the stream stays byte-exact on the one socket the client ever had.
import { describe, expect, it } from 'vitest';
import { inClient, lineClient, readLog } from '../../controller/lab/demo.js';
import { useLab } from '../helpers/lab.js';
import { until } from '../helpers/wait.js';

const running = useLab();

const mac = (name: string) => running.lab.nodes.find((n) => n.name === name)!.mac;

describe('transfer again', () => {
  it('n2 → n3 → n2 with GET and PUT after every move, byte-exact', async () => {
    const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'alice', '--expect-node', 'n2', '--move', 'n3,n2', '--get', '1000000', '--put', '1000000', '--whoami']), 60_000);
    const res = JSON.parse(r.stdout);
    expect(res).toMatchObject({ ok: true, served_by: 'n2', moves: ['OK n3', 'OK n2'], moves_ok: true, get_ok: true, put_ok: true, clean_close: true });
    const [addr, port] = String(res.local).split(':');
    const key = { family: 4 as const, clientAddress: addr!, clientPort: Number(port), vipAddress: running.lab.dvipa.address, vipPort: 7000 };
    // Closed: released (still forwarding for the grace period), pointing at the last owner, once
    // n2's release reaches the distributor, which may be a moment after the client has exited.
    await until('n2\'s release at the distributor', () => running.routes.get(key)?.state !== 'forward');
    expect(running.routes.get(key)).toMatchObject({ state: expect.stringMatching(/^(released|finished)$/), targetMac: mac('n2') });
    expect(readLog(running.lab, 'n2-line-target').filter((l) => l.event === 'handed-off' && l.target === 'n3')).toHaveLength(1);
    expect(readLog(running.lab, 'n3-line-target').filter((l) => l.event === 'handed-off' && l.target === 'n2')).toHaveLength(1);
  });

  it('a move to a node that refuses leaves the connection where it is, entry unchanged', async () => {
    const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'bob', '--expect-node', 'n3', '--move', 'n1', '--get', '1000']), 30_000);
    const res = JSON.parse(r.stdout);
    // n1 runs no line target: the offer is refused and n3 keeps serving on the same socket.
    expect(res.moves).toEqual([expect.stringMatching(/^ERR cannot move to n1: E_REJECTED/)]);
    expect(res.get_ok).toBe(true);
    const [addr, port] = String(res.local).split(':');
    const key = { family: 4 as const, clientAddress: addr!, clientPort: Number(port), vipAddress: running.lab.dvipa.address, vipPort: 7000 };
    await until('n3\'s release at the distributor', () => running.routes.get(key)?.state !== 'forward');
    expect(running.routes.get(key)).toMatchObject({ state: expect.stringMatching(/^(released|finished)$/), targetMac: mac('n3') });
  });
});
