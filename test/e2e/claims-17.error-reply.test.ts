// Claim 17: when no target accepts, the routing application sends the client an error over the
// connection it still owns. Both HTTP targets are at capacity: curl gets a 503 from n1.
import { describe, expect, it } from 'vitest';
import { inClient, readLog } from '../../controller/lab/demo.js';
import { useLab } from '../helpers/lab.js';
import { until } from '../helpers/wait.js';

const running = useLab({ extraArgs: { 'n2-http-target': ['--capacity', '0'], 'n3-http-target': ['--capacity', '0'] } });

describe('every target refuses', () => {
  it('the client gets a 503 with Retry-After on its connection, and a clean close', async () => {
    const r = await inClient(running.lab, ['curl', '-sS', '--max-time', '10', '--digest', '-u', 'alice:wonderland', '-D', '-', `http://${running.lab.dvipa.address}/`]);
    expect(r.code).toBe(0);
    // curl shows the 401 challenge, then the 503 answered by the routing node on the same socket.
    expect(r.stdout).toMatch(/HTTP\/1\.1 401 Unauthorized[\s\S]*HTTP\/1\.1 503 Service Unavailable/);
    expect(r.stdout).toMatch(/Retry-After: 1/);
    expect(r.stdout).toContain('no node can take this connection (E_REJECTED)');
    // The router logs it once the answer is on its way: wait for the line (bounded) rather than race it.
    await until('the router\'s all-refused line', () => readLog(running.lab, 'n1-http-router').some((l) => l.event === 'all-refused'));
  });
});
