// Claims 18–20, 24: an application opens a UDP control socket to its node's stack and registers,
// saying whether it is a routing or a target application. Only the node's own processes reach it
// (bound to the node's loopback) and only with the node's secret; anything forged or malformed is
// dropped and counted, and changes nothing.
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { readLog } from '../../controller/lab/demo.js';
import { useLab } from '../helpers/lab.js';
import { controlClient, summary } from '../helpers/control.js';

const running = useLab();

const drops = (reason: string) => readLog(running.lab, 'n1-batond').filter((l) => l.msg === 'control datagram dropped' && l.reason === reason).length;

describe('the control socket', () => {
  it('is a UDP socket on the node\'s loopback only', () => {
    const ns = running.lab.nodes.find((n) => n.name === 'n1')!.ns;
    const ss = execFileSync('ip', ['netns', 'exec', ns, 'ss', '-Hunl', 'sport = :4701']).toString();
    expect(ss.trim().split(/\s+/)).toContain('127.0.0.1:4701');
  });

  it('registers a routing application, which is answered with its id and the target list', async () => {
    const heard = await controlClient(running.lab, 'n1', ['--role', 'router', '--app', 'py-router'], 0.5);
    expect(heard[0]).toMatchObject({ type: 'registered', node: 'n1', heartbeatMs: 1000, expiryMs: 3000 });
    expect(heard[1]?.type).toBe('targets');
    expect(readLog(running.lab, 'n1-batond').some((l) => l.msg === 'application registered' && l.app === 'py-router' && l.role === 'router')).toBe(true);
  });

  it('registers a target application under its role, and the distributor\'s routing applications learn of it', async () => {
    const target = controlClient(running.lab, 'n2', ['--role', 'target', '--app', 'py-target', '--ports', '7000'], 2.5);
    await new Promise((r) => setTimeout(r, 200));
    const router = await controlClient(running.lab, 'n1', ['--role', 'router', '--app', 'py-router-2'], 1.5);
    const [registered] = await target;
    expect(registered).toMatchObject({ type: 'registered', node: 'n2' });
    expect(router.filter((h) => h.type === 'targets').some((h) => summary(h).includes('n2/py-target@7000 0/0'))).toBe(true);
    expect(readLog(running.lab, 'n2-batond').some((l) => l.msg === 'application registered' && l.role === 'target' && l.app === 'py-target')).toBe(true);
  });

  it.each([
    ['a forged token', ['--token', 'f'.repeat(64)], 'bad-token'],
    ['a datagram that is not JSON', ['--raw', '{nope'], 'not-json'],
    ['a registration with an unknown role', ['--raw', '{"v":1,"type":"register","token":"' + '0'.repeat(64) + '","role":"admin","app":"x","ports":[80]}'], 'schema'],
    ['a message type applications may not send', ['--raw', '{"v":1,"type":"targets","seq":1,"targets":[]}'], 'unexpected-type'],
  ])('drops %s without an answer, and counts it', async (_what, args, reason) => {
    const before = drops(reason);
    const heard = await controlClient(running.lab, 'n1', args, 0.5);
    expect(heard).toEqual([]);
    await new Promise((r) => setTimeout(r, 100));
    expect(drops(reason)).toBe(before + 1);
  });

  it('refuses a registration for a port the DVIPA does not serve', async () => {
    const before = drops('port');
    const heard = await controlClient(running.lab, 'n1', ['--ports', '22'], 0.5);
    expect(heard).toEqual([]);
    await new Promise((r) => setTimeout(r, 100));
    expect(drops('port')).toBe(before + 1);
  });

  it('leaves the target list unchanged after all of that', async () => {
    const heard = await controlClient(running.lab, 'n1', [], 0.5);
    expect(summary(heard.find((h) => h.type === 'targets'))).toEqual([
      'n2/http-target@80 0/1000', 'n2/line-target@7000 0/1000', 'n3/http-target@80 0/1000', 'n3/line-target@7000 0/1000',
    ]);
  });
});
