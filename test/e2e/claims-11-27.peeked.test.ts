// Claims 11, 27: what the routing application peeked (read but did not consume) travels in the
// transfer and reaches the target before any new byte from the client, in order. The client sends
// USER and a whole PUT in one go: the router reads past the USER line, and those bytes, plus
// whatever was still queued, must reach n2's application first and byte-exact.
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { inClient, lineClient, readLog } from '../../controller/lab/demo.js';
import { useLab } from '../helpers/lab.js';

const running = useLab();

describe('peeked bytes are delivered first', () => {
  it('the bytes after USER that the router already read arrive at the target first, in order', async () => {
    const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'alice', '--expect-node', 'n2', '--put', '2000000', '--stream-during-handoff']), 30_000);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, put_ok: true, served_by: 'n2' });
    const handoff = readLog(running.lab, 'n1-line-router').find((l) => l.event === 'handed-off');
    expect(Number(handoff?.peeked)).toBeGreaterThan(0);
  });

  it('HTTP: the authenticated request the router read is the first request the target answers', async () => {
    const r = await inClient(running.lab, ['curl', '-sS', '--max-time', '10', '--digest', '-u', 'bob:builder', `http://${running.lab.dvipa.address}/the-peeked-one`]);
    expect(r.stdout.trim()).toBe('hello bob, served by n3 for GET /the-peeked-one');
    // pino writes asynchronously: the target's log line may reach the file after curl has the answer.
    const served = () => readLog(running.lab, 'n3-http-target').filter((l) => l.event === 'request');
    for (let waited = 0; served().length === 0 && waited < 2000; waited += 50) await sleep(50);
    expect(served().map((l) => l.url)).toEqual(['/the-peeked-one']);
  });
});
