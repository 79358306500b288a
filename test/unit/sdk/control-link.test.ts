// A target's load changes on every connection it gains or loses; the SDK's control link sends them
// to its batond at most every 50 ms, the latest value last, and a capacity change at once. Real
// ControlServer and ControlLink on loopback. Then what the link accepts from batond's port.
import dgram from 'node:dgram';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TargetDirectory } from '../../../controller/control/directory.js';
import { decodeDatagram, encodeDatagram, FromApplication } from '../../../controller/control/messages.js';
import type { ControlServer } from '../../../controller/control/server.js';
import { createLogger } from '../../../controller/log.js';
import { ControlLink } from '../../../controller/sdk/control-link.js';
import { startControlServer } from '../../helpers/control.js';
import { until } from '../../helpers/wait.js';

const log = createLogger({}, 'silent');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-control-link-'));
const secretFile = path.join(dir, 'secret');
const secret = randomBytes(32).toString('hex');
const directory = new TargetDirectory(60_000, 0);
const updates: number[] = [];
let server: ControlServer;
let port = 0;

beforeAll(async () => {
  fs.writeFileSync(secretFile, secret, { mode: 0o600 });
  ({ server, port } = await startControlServer({
    secret: Buffer.from(secret), directory, log,
    metrics: { datagram: (t) => void (t === 'update' && updates.push(Date.now())), drop: () => undefined },
  }));
});
afterAll(() => {
  server.close();
  directory.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('control link load updates', () => {
  it('a burst of load changes reaches batond as a few updates, the last one with the final load; capacity goes at once', async () => {
    const link = await ControlLink.open({ port, secretFile }, { role: 'target', app: 'line-target', ports: [7000], capacity: 1000, load: 0 }, log);
    try {
      const loadSeen = () => directory.all().find((t) => t.app === 'line-target')?.load;
      for (let load = 1; load <= 300; load++) link.update({ load });
      await sleep(150);
      // One at once, one at the end of the window: not 300.
      expect(updates.length).toBeGreaterThanOrEqual(1);
      expect(updates.length).toBeLessThanOrEqual(3);
      expect(loadSeen()).toBe(300);

      const before = updates.length;
      link.update({ load: 299 });
      link.update({ capacity: 10 });
      await sleep(20);
      expect(updates.length).toBe(before + 2);
      expect(directory.all().find((t) => t.app === 'line-target')).toMatchObject({ capacity: 10, load: 299 });
    } finally {
      link.close();
    }
  });
});

// The SDK believes only batond: every answer must carry batond's tag (over the to-application
// label) and be fresh. A scripted batond — a plain UDP socket speaking the real codec with the
// real key — sends, among the right answers, every kind of wrong one.
describe('control link: what it takes from batond', () => {
  const id = '00112233aabbccdd';
  const target = (load: number) => ({ node: 'n2', app: 'line-target', instance: 'line-target', port: 7000, capacity: 1000, load, weight: 100, draining: false });

  it('drops answers with a bad or reflected tag, unsolicited challenges and registrations, stale acks and pushes; takes the rest', async () => {
    const key = Buffer.from(secret);
    const batond = dgram.createSocket('udp4');
    await new Promise<void>((r) => batond.bind(0, '127.0.0.1', () => r()));
    const heard: string[] = [];
    let app = 0;
    const to = (buf: Buffer) => batond.send(buf, app, '127.0.0.1');
    const answer = (type: Parameters<typeof encodeDatagram>[2], body: object) => to(encodeDatagram(key, 'to-application', type, body as never));
    batond.on('message', (buf, from) => {
      app = from.port;
      const d = decodeDatagram(buf, key, 'to-batond', FromApplication);
      if (!d.ok) throw new Error(`the SDK sent a datagram batond refuses: ${d.reason}`);
      heard.push(d.msg.type);
      if (d.msg.type === 'challenge-request') {
        const nonce = randomBytes(32).toString('hex');
        answer('challenge', { cnonce: 'f'.repeat(32), nonce }); // answers some other request
        to(Buffer.concat([randomBytes(32), encodeDatagram(key, 'to-application', 'challenge', { cnonce: d.msg.cnonce, nonce }).subarray(32)])); // a guessed tag
        to(encodeDatagram(key, 'to-batond', 'challenge', { cnonce: d.msg.cnonce, nonce })); // the other direction's tag
        to(buf); // its own request, reflected
        answer('challenge', { cnonce: d.msg.cnonce, nonce });
      } else if (d.msg.type === 'register') {
        answer('registered', { id, nonce: randomBytes(32).toString('hex'), node: 'n2', heartbeatMs: 60_000, expiryMs: 180_000 });
        answer('registered', { id, nonce: d.msg.nonce, node: 'n2', heartbeatMs: 60_000, expiryMs: 180_000 });
        answer('targets', { id, n: 1, seq: 1, targets: [target(1)] });
        answer('targets', { id, n: 1, seq: 2, targets: [target(666)] }); // counter not past the last
        answer('targets', { id: 'ffffffffffffffff', n: 9, seq: 3, targets: [target(667)] }); // another registration's
        answer('targets', { id, n: 2, seq: 4, targets: [target(2)] });
        answer('ack', { id, n: 1, ok: false }); // answers nothing sent yet: a re-registration would follow
      } else if (d.msg.type === 'update') {
        answer('ack', { id, n: d.msg.n, ok: true });
        answer('ack', { id, n: d.msg.n, ok: false }); // the same counter again
      }
    });
    const link = await ControlLink.open({ port: batond.address().port, secretFile }, { role: 'router', app: 'router', ports: [7000] }, log);
    const dropped = () => [...link.dropped.values()].reduce((a, b) => a + b, 0);
    try {
      const drops = () => JSON.stringify(Object.fromEntries(link.dropped));
      await until(() => `8 drops (${drops()})`, () => dropped() >= 8);
      link.update({ capacity: 1 });
      await until(() => `9 drops (${drops()})`, () => dropped() >= 9);
      expect(Object.fromEntries(link.dropped)).toEqual({ unsolicited: 2, 'bad-mac': 3, stale: 4 });
      expect(link.targets()).toEqual([target(2)]);
      // Neither ack ok:false was believed: no second registration.
      expect(heard).toEqual(['challenge-request', 'register', 'update']);
    } finally {
      link.close();
      batond.close();
    }
  });
});

describe('control link: batond forgot the registration', () => {
  it('registers again; if that gets no answer, it tries again at every heartbeat until one does, and takes the new batond\'s list', async () => {
    const key = Buffer.from(secret);
    const batond = dgram.createSocket('udp4');
    await new Promise<void>((r) => batond.bind(0, '127.0.0.1', () => r()));
    const heard: string[] = [];
    let challenges = 0;
    let registrations = 0;
    batond.on('message', (buf, from) => {
      const d = decodeDatagram(buf, key, 'to-batond', FromApplication);
      if (!d.ok) throw new Error(`the SDK sent a datagram batond refuses: ${d.reason}`);
      heard.push(d.msg.type);
      const answer = (type: Parameters<typeof encodeDatagram>[2], body: object) => batond.send(encodeDatagram(key, 'to-application', type, body as never), from.port, '127.0.0.1');
      const m = d.msg;
      // The second challenge-request goes unanswered: that registration times out.
      if (m.type === 'challenge-request' && ++challenges !== 2) answer('challenge', { cnonce: m.cnonce, nonce: randomBytes(32).toString('hex') });
      if (m.type === 'register') {
        const id = `${++registrations}`.padStart(16, '0');
        answer('registered', { id, nonce: m.nonce, node: 'n2', heartbeatMs: 100, expiryMs: 300 });
        // A restarted batond numbers its list's changes afresh: the same seq, another list.
        answer('targets', { id, n: 1, seq: 5, targets: [{ node: 'n2', app: 'line-target', instance: `instance-${registrations}`, port: 7000, capacity: 1, load: 0, weight: 100, draining: false }] });
      }
      // The first registration's first heartbeat: "unknown registration", as after a restart.
      if (m.type === 'heartbeat' && m.id === '0000000000000001') answer('ack', { id: m.id, n: m.n, ok: false, error: 'unknown registration: register again' });
    });
    const link = await ControlLink.open({ port: batond.address().port, secretFile }, { role: 'target', app: 'line-target', ports: [7000] }, log);
    try {
      await until(() => `a second registration (${registrations} so far)`, () => registrations >= 2, 10_000);
      expect(registrations).toBe(2);
      await until("the second registration's list", () => link.targets()[0]?.instance === 'instance-2');
      expect(link.targets().map((t) => t.instance)).toEqual(['instance-2']);
      expect(heard.slice(0, 5)).toEqual(['challenge-request', 'register', 'heartbeat', 'challenge-request', 'challenge-request']);
    } finally {
      link.close();
      batond.close();
    }
  });
});
