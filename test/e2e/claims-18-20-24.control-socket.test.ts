// Claims 18–20, 24: an application opens a UDP control socket to its node's stack and registers,
// saying whether it is a routing or a target application. Only the node's own processes reach it
// (bound to the node's loopback) and only with proof of the node's secret (an HMAC tag: the secret
// itself is never sent); anything forged, malformed or replayed is dropped and counted, and
// changes nothing. The client is the plain-Python one (examples/clients/control_client.py).
// Issue 11: the datagram that once killed batond, sent by an unprivileged user, is dropped unread.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readLog } from '../../controller/lab/demo.js';
import { metricsOf, sampleOf } from '../helpers/api.js';
import { useLab } from '../helpers/lab.js';
import { controlClient, summary } from '../helpers/control.js';

const running = useLab();

/** batond counts every drop (its log shows only some): read the count where operators do. */
const drops = (reason: string) => sampleOf(metricsOf(running.lab, 'n1'), 'baton_control_dropped_total', { reason });
const settle = () => new Promise((r) => setTimeout(r, 100));
const NONCE = '0'.repeat(64);
const ID = '0123456789abcdef';

describe('the control socket', () => {
  it('is a UDP socket on the node\'s loopback only', () => {
    const ns = running.lab.nodes.find((n) => n.name === 'n1')!.ns;
    const ss = execFileSync('ip', ['netns', 'exec', ns, 'ss', '-Hunl', 'sport = :4701']).toString();
    expect(ss.trim().split(/\s+/)).toContain('127.0.0.1:4701');
  });

  it('registers a routing application through a challenge, answered with its id and the target list', async () => {
    const heard = await controlClient(running.lab, 'n1', ['--role', 'router', '--app', 'py-router'], 0.5);
    expect(heard.map((h) => h.type)).toEqual(['registered', 'targets']);
    expect(heard[0]).toMatchObject({ type: 'registered', node: 'n1', heartbeatMs: 1000, expiryMs: 3000, nonce: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect(heard[1]).toMatchObject({ type: 'targets', id: heard[0]!.id, n: 1 });
    expect(readLog(running.lab, 'n1-batond').some((l) => l.msg === 'application registered' && l.app === 'py-router' && l.role === 'router')).toBe(true);
  });

  it('registers a target application under its role, and the distributor\'s routing applications learn of it', async () => {
    const target = controlClient(running.lab, 'n2', ['--role', 'target', '--app', 'py-target', '--ports', '7000'], 2.5);
    await new Promise((r) => setTimeout(r, 200));
    const router = await controlClient(running.lab, 'n1', ['--role', 'router', '--app', 'py-router-2'], 1.5);
    const registered = (await target).find((h) => h.type === 'registered');
    expect(registered).toMatchObject({ type: 'registered', node: 'n2' });
    expect(router.filter((h) => h.type === 'targets').some((h) => summary(h).includes('n2/py-target@7000 0/0'))).toBe(true);
    expect(readLog(running.lab, 'n2-batond').some((l) => l.msg === 'application registered' && l.role === 'target' && l.app === 'py-target')).toBe(true);
  });

  it('a client with a guessed secret cannot believe batond\'s challenge, and registers nothing', async () => {
    const heard = await controlClient(running.lab, 'n1', ['--token', 'f'.repeat(64), '--app', 'py-forger'], 0.5);
    expect(heard).toEqual([expect.objectContaining({ dropped: 'bad-mac' })]);
    expect(readLog(running.lab, 'n1-batond').some((l) => l.msg === 'application registered' && l.app === 'py-forger')).toBe(false);
  });

  it.each([
    ['a datagram tagged with a guessed secret', ['--token', 'f'.repeat(64), '--body', `{"v":2,"type":"heartbeat","id":"${ID}","n":1}`], 'bad-mac'],
    ['bytes without a tag', ['--raw', '{nope'], 'bad-mac'],
    ['a tagged body that is not JSON', ['--body', '{nope'], 'not-json'],
    ['a registration with an unknown role', ['--body', `{"v":2,"type":"register","nonce":"${NONCE}","role":"admin","app":"x","ports":[80]}`], 'schema'],
    ['a message type applications may not send', ['--body', `{"v":2,"type":"targets","id":"${ID}","n":1,"seq":1,"targets":[]}`], 'unexpected-type'],
    ['a registration with a nonce batond never issued', ['--body', `{"v":2,"type":"register","nonce":"${NONCE}","role":"router","app":"x","ports":[80]}`], 'bad-nonce'],
  ])('drops %s without an answer, and counts it', async (_what, args, reason) => {
    const before = drops(reason);
    const heard = await controlClient(running.lab, 'n1', args, 0.5);
    expect(heard).toEqual([]);
    await settle();
    expect(drops(reason)).toBe(before + 1);
  });

  it('refuses a registration for a port the DVIPA does not serve', async () => {
    const before = drops('port');
    const heard = await controlClient(running.lab, 'n1', ['--ports', '22'], 0.5);
    expect(heard).toEqual([]);
    await settle();
    expect(drops('port')).toBe(before + 1);
  });

  it('the datagram that once killed batond, sent by an unprivileged user, is dropped unread and batond goes on', async () => {
    const pid = Number(fs.readFileSync(path.join(running.lab.runDir, 'n1-batond.pid'), 'utf8').trim());
    const before = drops('bad-mac');
    const datagram = `{"type":${'['.repeat(30_700)}${']'.repeat(30_700)}}`;
    expect(await controlClient(running.lab, 'n1', ['--raw', datagram], 0.5, { uid: 65534 })).toEqual([]);
    await settle();
    expect(drops('bad-mac')).toBe(before + 1);
    expect(() => process.kill(pid, 0)).not.toThrow();
    expect(readLog(running.lab, 'n1-batond').filter((l) => l.msg === 'input handler failed: link closed')).toEqual([]);
    const heard = await controlClient(running.lab, 'n1', ['--app', 'py-after'], 0.5);
    expect(heard.map((h) => h.type)).toEqual(['registered', 'targets']);
  });

  it('leaves the target list unchanged after all of that', async () => {
    const heard = await controlClient(running.lab, 'n1', [], 0.5);
    expect(summary(heard.find((h) => h.type === 'targets'))).toEqual([
      'n2/http-target@80 0/1000', 'n2/line-target@7000 0/1000', 'n3/http-target@80 0/1000', 'n3/line-target@7000 0/1000',
    ]);
  });
});
