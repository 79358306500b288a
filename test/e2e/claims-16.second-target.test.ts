// Claim 16: when the chosen target refuses, the routing application picks a second target and
// the connection moves there. alice belongs to n2, whose HTTP target is at capacity.
import { describe, expect, it } from 'vitest';
import { curlDigest, inClient, readLog } from '../../controller/lab/demo.js';
import { useLab } from '../helpers/lab.js';

const running = useLab({ extraArgs: { 'n2-http-target': ['--capacity', '0'] } });

describe('a refused handoff goes to a second target', () => {
  it('alice is refused by n2 and served by n3, on one connection', async () => {
    const r = await inClient(running.lab, curlDigest(running.lab, 'alice', 'wonderland', ['/a', '/b']));
    expect(r.stdout).toContain('hello alice, served by n3 for GET /a');
    expect(r.stdout).toContain('hello alice, served by n3 for GET /b');
    expect(r.stdout).toMatch(/^200 connects=1$/m);
    expect(r.stdout).toMatch(/^200 connects=0$/m);
    const handed = readLog(running.lab, 'n1-http-router').find((l) => l.event === 'handed-off');
    expect(handed?.attempts).toMatchObject([
      { target: { node: 'n2' }, outcome: 'failed', code: 'E_REJECTED' },
      { target: { node: 'n3' }, outcome: 'done' },
    ]);
  });
});
