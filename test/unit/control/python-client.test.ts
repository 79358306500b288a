// The plain-Python control client (examples/clients/control_client.py) speaks version 2 with
// nothing but the standard library: its tags, labels and exact challenge-request bytes are the
// ones batond checks, and it checks batond's. Against a real ControlServer on loopback.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TargetDirectory } from '../../../controller/control/directory.js';
import type { ControlServer } from '../../../controller/control/server.js';
import { createLogger } from '../../../controller/log.js';
import { repoRoot } from '../../../controller/paths.js';
import { startControlServer } from '../../helpers/control.js';
import { until } from '../../helpers/wait.js';

const run = promisify(execFile);
const log = createLogger({}, 'silent');
const secret = randomBytes(32).toString('hex');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-python-control-'));
const secretFile = path.join(dir, 'secret');
const directory = new TargetDirectory(60_000, 0);
const accepted = new Map<string, number>();
let server: ControlServer;
let port = 0;

beforeAll(async () => {
  fs.writeFileSync(secretFile, secret, { mode: 0o600 });
  ({ server, port } = await startControlServer({ secret: Buffer.from(secret), directory, log, dvipaPorts: [80, 7000], metrics: { datagram: (t) => void accepted.set(t, (accepted.get(t) ?? 0) + 1), drop: () => undefined } }));
});
afterAll(() => {
  server.close();
  directory.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function client(args: string[], seconds: number): Promise<Array<Record<string, unknown>>> {
  const script = path.join(repoRoot(), 'examples/clients/control_client.py');
  const { stdout } = await run('python3', [script, '--port', String(port), '--secret', secretFile, '--seconds', String(seconds), ...args], { timeout: (seconds + 10) * 1000 });
  return stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
}

const dropped = () => server.counts().dropped;

describe('the Python control client', () => {
  it('registers through the challenge, heartbeats (acked, with the list again), and unregisters', async () => {
    const heard = await client(['--role', 'router', '--app', 'py-router'], 1.8);
    expect(heard.map((h) => h.type)).toEqual(['registered', 'targets', 'ack', 'targets']);
    expect(heard[0]).toMatchObject({ node: 'n1', heartbeatMs: 1000, expiryMs: 3000, nonce: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect(heard[2]).toMatchObject({ id: heard[0]!.id, n: 1, ok: true });
    expect(heard.filter((h) => h.type === 'targets').map((h) => h.n)).toEqual([1, 2]);
    await until('the unregister to be handled', () => server.counts().routers === 0);
    expect(server.counts()).toEqual({ routers: 0, targets: 0, dropped: {} });
    expect(Object.fromEntries(accepted)).toEqual({ 'challenge-request': 1, register: 1, heartbeat: 1, unregister: 1 });
  });

  it('with a guessed secret it cannot believe batond\'s challenge, and registers nothing', async () => {
    const heard = await client(['--token', 'f'.repeat(64)], 0.3);
    expect(heard).toEqual([expect.objectContaining({ dropped: 'bad-mac' })]);
    expect(server.counts()).toMatchObject({ routers: 0, targets: 0 });
  });

  it('a body tagged with a guessed secret, and the issue\'s datagram untagged: dropped as bad-mac, no answer', async () => {
    const before = dropped()['bad-mac'] ?? 0;
    expect(await client(['--token', 'f'.repeat(64), '--body', '{"v":2,"type":"heartbeat","id":"0123456789abcdef","n":1}'], 0.3)).toEqual([]);
    expect(await client(['--raw', `{"type":${'['.repeat(30_700)}${']'.repeat(30_700)}}`], 0.3)).toEqual([]);
    expect(dropped()['bad-mac']).toBe(before + 2);
  });
});
