// A target's load changes on every connection it gains or loses; the SDK's control link sends them
// to its batond at most every 50 ms, the latest value last, and a capacity change at once. Real
// ControlServer and ControlLink on loopback.
import dgram from 'node:dgram';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TargetDirectory } from '../../../controller/control/directory.js';
import { ControlServer } from '../../../controller/control/server.js';
import { createLogger } from '../../../controller/log.js';
import { ControlLink } from '../../../controller/sdk/control-link.js';

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
  // ControlServer binds the port it is given: take a free one from the kernel, retrying the rare race.
  for (let attempt = 0; ; attempt++) {
    const probe = dgram.createSocket('udp4');
    port = await new Promise<number>((r) => probe.bind(0, '127.0.0.1', () => r(probe.address().port)));
    await new Promise<void>((r) => probe.close(() => r()));
    server = new ControlServer({
      node: 'n2', port, secret: Buffer.from(secret), dvipaPorts: () => [7000], directory, log,
      metrics: { datagram: (t) => void (t === 'update' && updates.push(Date.now())), drop: () => undefined },
    });
    try {
      await server.start();
      break;
    } catch (err) {
      if (attempt >= 4) throw err;
    }
  }
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
