// A targets list holds at most about 470 instances in one datagram. Past that batond does not send
// it: it says so in one plain log line (not the socket's EMSGSIZE, and not once per router per
// heartbeat), the routing applications keep the list they had, and a list that fits again goes out.
// Real ControlServer and ControlLink (as a routing application) on loopback.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { TargetDirectory } from '../../../controller/control/directory.js';
import type { TargetInfo } from '../../../controller/control/messages.js';
import { createLogger } from '../../../controller/log.js';
import { ControlLink } from '../../../controller/sdk/control-link.js';
import { startControlServer } from '../../helpers/control.js';
import { until } from '../../helpers/wait.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-targets-size-'));
const secretFile = path.join(dir, 'secret');
const secret = randomBytes(32).toString('hex');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const instances = (n: number): TargetInfo[] =>
  Array.from({ length: n }, (_, i) => ({ node: 'n1', app: 'line-target', instance: `line-target-${i}`, port: 7000, capacity: 1000, load: 0, weight: 100, draining: false }));

describe('a targets list larger than one datagram', () => {
  it('is not sent: one plain error line, the routers keep their list, and a list that fits goes out again', async () => {
    fs.writeFileSync(secretFile, secret, { mode: 0o600 });
    const lines: Array<Record<string, unknown>> = [];
    const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
    const directory = new TargetDirectory(60_000, 0);
    const { server, port } = await startControlServer({ secret: Buffer.from(secret), directory, log });
    const link = await ControlLink.open({ port, secretFile }, { role: 'router', app: 'line-router', ports: [7000] }, createLogger({}, 'silent'));
    try {
      directory.setLocal(instances(10));
      await until(() => `10 targets at the router (it has ${link.targets().length})`, () => link.targets().length === 10);

      // 2,000 instances: well past 60 KiB. Pushed at every change and every heartbeat, refused each time.
      directory.setLocal(instances(2_000));
      for (let i = 0; i < 20; i++) directory.setLocal(instances(2_000 + (i % 2)));
      const tooLarge = () => lines.filter((l) => l.msg === 'targets list too large for one control datagram: not sent, routing applications keep the list they had');
      await until('the refusal logged', () => tooLarge().length > 0);
      expect(tooLarge()[0]).toMatchObject({ level: 50, instances: 2_000, max: 60 * 1024 });
      expect(tooLarge()[0]!.bytes as number).toBeGreaterThan(60 * 1024);
      // Logged sparsely: 22 refusals, not 22 lines.
      expect(tooLarge().length).toBeLessThan(22);
      expect(lines.filter((l) => l.msg === 'control datagram not sent')).toEqual([]);
      expect(link.targets()).toHaveLength(10);

      directory.setLocal(instances(20));
      await until(() => `20 targets at the router (it has ${link.targets().length})`, () => link.targets().length === 20);
    } finally {
      link.close();
      server.close();
      directory.close();
    }
  });
});
