// Issue 11, item 3: the control secret never travels. Whoever holds the control port while batond
// is down sees what the SDK sends: none of it may contain the secret, in any encoding. And what a
// recorder captured of a real exchange is worth nothing replayed: it registers nothing more.
// It relies only on the ControlServer and ControlLink APIs every version has (its test helpers
// too), so that it runs on the code from before version 2 as well, where the secret travelled in
// every datagram.
import dgram from 'node:dgram';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { TargetDirectory } from '../../../controller/control/directory.js';
import { createLogger } from '../../../controller/log.js';
import { ControlLink } from '../../../controller/sdk/control-link.js';
import { startControlServer } from '../../helpers/control.js';
import { until } from '../../helpers/wait.js';

const log = createLogger({}, 'silent');
const secret = randomBytes(32).toString('hex');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-secret-wire-'));
const secretFile = path.join(dir, 'secret');
fs.writeFileSync(secretFile, secret, { mode: 0o600 });
const cleanup: Array<() => void> = [];
afterEach(() => cleanup.splice(0).reverse().forEach((f) => f()));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

async function udp(port = 0) {
  const s = dgram.createSocket('udp4');
  const got: Buffer[] = [];
  s.on('message', (buf) => got.push(buf));
  await new Promise<void>((r) => s.bind(port, '127.0.0.1', () => r()));
  cleanup.push(() => s.close());
  const send = (buf: Buffer, to: number) => new Promise<void>((resolve, reject) => s.send(buf, to, '127.0.0.1', (err) => (err ? reject(err) : resolve())));
  return { s, got, send, port: s.address().port };
}

/** The secret as text, as raw bytes, in base64: what a careless encoding could put on the wire. */
const encodings = [Buffer.from(secret), Buffer.from(secret, 'hex'), Buffer.from(Buffer.from(secret).toString('base64')), Buffer.from(Buffer.from(secret, 'hex').toString('base64'))];

describe('the control secret on the wire', () => {
  it('a process holding the control port while batond is down learns nothing of the secret from what the SDK sends', async () => {
    const squatter = await udp();
    const opened = ControlLink.open({ port: squatter.port, secretFile }, { role: 'router', app: 'router', ports: [7000] }, log);
    await expect(opened).rejects.toThrow();
    expect(squatter.got.length).toBeGreaterThan(0);
    for (const buf of squatter.got) for (const e of encodings) expect(buf.includes(e)).toBe(false);
  });

  it('a register recorded on its way to batond and sent again registers nothing more', async () => {
    const directory = new TargetDirectory(60_000, 0);
    const { server, port } = await startControlServer({ secret: Buffer.from(secret), directory, log });
    cleanup.push(() => {
      server.close();
      directory.close();
    });
    // A relay the application talks through, recording what it sends; answers go back to it.
    const upstream = await udp();
    const relay = await udp();
    const recorded: Buffer[] = [];
    let app = 0;
    relay.s.on('message', (buf, from) => {
      app = from.port;
      recorded.push(buf);
      void upstream.send(buf, port);
    });
    upstream.s.on('message', (buf) => void relay.send(buf, app));
    const link = await ControlLink.open({ port: relay.port, secretFile }, { role: 'router', app: 'router', ports: [7000] }, log);
    cleanup.push(() => link.close());
    expect(server.counts().routers).toBe(1);

    const replayer = await udp();
    const dropped = () => Object.values(server.counts().dropped).reduce((a, b) => a + b, 0);
    for (const buf of recorded) await replayer.send(buf, port);
    // Each replayed datagram is either dropped or answered (a challenge-request is answered with
    // a fresh challenge); wait for that, then look.
    await until('the replays to be handled', () => dropped() + replayer.got.length >= recorded.length);
    expect(server.counts().routers).toBe(1);
  });
});
