// Claim 5: the target application is a web server. n2 runs a stock node:http server, n3 a fastify
// app; neither listens: each gets the transferred socket as if it had accepted it, with the
// peeked request replayed, and serves later keep-alive requests too.
import { describe, expect, it } from 'vitest';
import { inClient } from '../../controller/lab/demo.js';
import { useLab } from '../helpers/lab.js';

const running = useLab();

describe('web servers as targets', () => {
  it.each([
    ['alice', 'wonderland', 'n2', 'node'],
    ['bob', 'builder', 'n3', 'fastify'],
  ])('%s: %s answers through %s, twice on one connection', async (user, password, node, framework) => {
    const url = (p: string) => `http://${running.lab.dvipa.address}${p}`;
    const r = await inClient(running.lab, ['curl', '-sS', '--max-time', '10', '--digest', '-u', `${user}:${password}`, '-D', '-', '-w', 'connects=%{num_connects}\\n', url('/one'), url('/two?x=1')]);
    expect(r.code).toBe(0);
    const served = [...r.stdout.matchAll(/^X-Served-By: (\S+)\r?$/gim)].map((m) => m[1]);
    const frameworks = [...r.stdout.matchAll(/^X-Framework: (\S+)\r?$/gim)].map((m) => m[1]);
    expect(served).toEqual([node, node]);
    expect(frameworks).toEqual([framework, framework]);
    expect(r.stdout).toContain(`hello ${user}, served by ${node} for GET /one`);
    expect(r.stdout).toContain(`hello ${user}, served by ${node} for GET /two?x=1`);
    expect([...r.stdout.matchAll(/connects=(\d)/g)].map((m) => m[1])).toEqual(['1', '0']);
  });
});
