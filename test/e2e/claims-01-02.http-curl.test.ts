// Claims 1, 5, 28, 29 with an unmodified client: curl authenticates with the routing application
// over several exchanges on one connection, is handed off to the user's node, and a stock
// http.Server there answers this request and the next one on the same keep-alive connection.
import { describe, expect, it } from 'vitest';
import { curlDigest, inClient, readLog } from '../../controller/lab/demo.js';
import { useLab } from '../helpers/lab.js';

const running = useLab();

function parse(stdout: string) {
  return {
    bodies: stdout.split('\n').filter((l) => l.startsWith('hello')),
    statuses: [...stdout.matchAll(/^(\d{3}) connects=(\d+)$/gm)].map((m) => ({ code: m[1], newConnections: Number(m[2]) })),
  };
}

describe('HTTP example through curl --digest', () => {
  it.each([
    ['alice', 'wonderland', 'n2'],
    ['bob', 'builder', 'n3'],
  ])('%s is served by %s twice on one keep-alive connection', async (user, password, node) => {
    const r = await inClient(running.lab, curlDigest(running.lab, user, password, ['/first', '/second']));
    expect(r.stderr).toBe('');
    const { bodies, statuses } = parse(r.stdout);
    expect(bodies).toEqual([`hello ${user}, served by ${node} for GET /first`, `hello ${user}, served by ${node} for GET /second`]);
    // One TCP connection for both transfers: the second request rode the transferred socket.
    expect(statuses).toEqual([{ code: '200', newConnections: 1 }, { code: '200', newConnections: 0 }]);
    const handed = readLog(running.lab, 'n1-http-router').filter((l) => l.event === 'handed-off' && l.user === user);
    expect(handed.length).toBeGreaterThanOrEqual(1);
  });

  it('wrong password: the routing node keeps answering 401 and never hands off', async () => {
    const before = readLog(running.lab, 'n1-http-router').filter((l) => l.event === 'handed-off').length;
    const r = await inClient(running.lab, curlDigest(running.lab, 'alice', 'not-her-password', ['/']));
    expect(parse(r.stdout).statuses.map((s) => s.code)).toEqual(['401']);
    expect(readLog(running.lab, 'n1-http-router').filter((l) => l.event === 'handed-off').length).toBe(before);
  });
});
