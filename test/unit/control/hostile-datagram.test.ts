// Issue 11: an unprivileged process on the node sent batond's control port one datagram —
// `{"type":` then 30,700 `[` and 30,700 `]`, then `}` — and batond died: the decoder parsed it
// (V8 parses that deep) and then JSON.stringify'd the attacker's `type` for a log line, which
// overflowed the stack inside the socket's 'message' handler. Here the same datagram goes over
// real UDP to a real ControlServer: it must be dropped (unauthenticated bytes are not parsed at
// all), counted, and the server must go on answering. The same body sent by a secret holder is
// refused before it is parsed.
import dgram from 'node:dgram';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TargetDirectory } from '../../../controller/control/directory.js';
import type { ControlServer } from '../../../controller/control/server.js';
import { createLogger } from '../../../controller/log.js';
import { ControlLink } from '../../../controller/sdk/control-link.js';
import { sealDatagram } from '../../../controller/control/messages.js';
import { watchProcessErrors } from '../../fuzz/fuzz.js';
import { startControlServer } from '../../helpers/control.js';
import { until } from '../../helpers/wait.js';

const ISSUE_DATAGRAM = Buffer.from(`{"type":${'['.repeat(30_700)}${']'.repeat(30_700)}}`);

const log = createLogger({}, 'silent');
const secret = randomBytes(32).toString('hex');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-hostile-datagram-'));
const secretFile = path.join(dir, 'secret');
const directory = new TargetDirectory(60_000, 0);
const watch = watchProcessErrors();
const client = dgram.createSocket('udp4');
let server: ControlServer;
let port = 0;

beforeAll(async () => {
  fs.writeFileSync(secretFile, secret, { mode: 0o600 });
  ({ server, port } = await startControlServer({ secret: Buffer.from(secret), directory, log }));
  await new Promise<void>((r) => client.bind(0, '127.0.0.1', () => r()));
});
afterAll(() => {
  watch.stop();
  client.close();
  server.close();
  directory.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const send = (buf: Buffer) => new Promise<void>((resolve, reject) => client.send(buf, port, '127.0.0.1', (err) => (err ? reject(err) : resolve())));
const dropped = () => Object.values(server.counts().dropped).reduce((a, b) => a + b, 0);

/** Waits until the server has dropped n datagrams, or something escaped to the process. */
const settled = (n: number) => until(() => `${n} drops (the server dropped ${dropped()})`, () => dropped() >= n || watch.errors.length > 0);

describe("the issue's datagram", () => {
  it('kills nothing: dropped unread as bad-mac, counted, and the server still registers applications', async () => {
    expect(ISSUE_DATAGRAM.length).toBe(61_409);
    await send(ISSUE_DATAGRAM);
    await settled(1);
    expect(watch.errors.map(String)).toEqual([]);
    expect(server.counts().dropped).toEqual({ 'bad-mac': 1 });

    const link = await ControlLink.open({ port, secretFile }, { role: 'router', app: 'after-the-attack', ports: [7000] }, log);
    try {
      expect(server.counts()).toMatchObject({ routers: 1, targets: 0 });
    } finally {
      link.close();
    }
  });

  it('sent by a holder of the secret (a valid tag), the body is still refused before it is parsed', async () => {
    // The tag takes 32 of the 60 KiB: the issue's body no longer fits, so this one is 30,000 deep.
    const before = dropped();
    const deep = Buffer.from(`{"type":${'['.repeat(30_000)}${']'.repeat(30_000)}}`);
    await send(sealDatagram(Buffer.from(secret), 'to-batond', deep));
    await send(sealDatagram(Buffer.from(secret), 'to-batond', ISSUE_DATAGRAM));
    await settled(before + 2);
    expect(watch.errors.map(String)).toEqual([]);
    expect(server.counts().dropped).toMatchObject({ 'too-deep': 1, 'too-large': 1 });
  });
});
