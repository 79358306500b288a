// Claims 6, 7, 13: state the routing application determined (who the client is, where the
// conversation stands) travels with the connection, and the target resumes from it without
// asking the client again.
import { describe, expect, it } from 'vitest';
import { curlDigest, inClient, lineClient, readLog } from '../../controller/lab/demo.js';
import { useLab } from '../helpers/lab.js';

const running = useLab();

describe('application state travels with the connection', () => {
  it('line protocol: the target answers the pending USER and knows the user', async () => {
    const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'bob', '--expect-node', 'n3', '--whoami']), 30_000);
    // The router read USER bob and never answered it; n3 answers from the state it was given.
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, greeting: 'OK n3', whoami: 'YOU bob ON n3' });
    const resumed = readLog(running.lab, 'n3-line-target').find((l) => l.event === 'resumed');
    expect(resumed).toMatchObject({ user: 'bob', from: 'n1' });
  });

  it('HTTP: the target knows the authenticated user without any credentials of its own', async () => {
    const r = await inClient(running.lab, curlDigest(running.lab, 'alice', 'wonderland', ['/']));
    expect(r.stdout).toContain('hello alice, served by n2');
  });
});
