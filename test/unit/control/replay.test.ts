// The control secret never travels, so what crosses the control socket is worth nothing to whoever
// records it: a captured register or update sent again is refused (its nonce is used, its counter
// seen), from the same address or another; a datagram batond sent is not valid sent back to it; a
// process that takes batond's port while batond is down gets only challenge-requests from the SDK
// (it cannot answer them: it has no secret), and everything it captured, replayed to a real
// batond, registers nothing. Real ControlServer, real ControlLink, real UDP on loopback.
import dgram from 'node:dgram';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Challenges } from '../../../controller/control/challenges.js';
import { TargetDirectory } from '../../../controller/control/directory.js';
import { challengeRequest, decodeDatagram, encodeDatagram, FromApplication } from '../../../controller/control/messages.js';
import { pino } from 'pino';
import { createLogger } from '../../../controller/log.js';
import { ControlLink } from '../../../controller/sdk/control-link.js';
import { freeUdpPort, startControlServer } from '../../helpers/control.js';
import { until } from '../../helpers/wait.js';

const log = createLogger({}, 'silent');
const secret = randomBytes(32).toString('hex');
const key = Buffer.from(secret);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-control-replay-'));
const secretFile = path.join(dir, 'secret');
fs.writeFileSync(secretFile, secret, { mode: 0o600 });

const cleanup: Array<() => void> = [];
afterEach(() => cleanup.splice(0).reverse().forEach((f) => f()));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

async function server(port?: number) {
  const directory = new TargetDirectory(60_000, 0);
  const accepted = new Map<string, number>();
  const started = await startControlServer({ secret: key, directory, log, port, metrics: { datagram: (t) => void accepted.set(t, (accepted.get(t) ?? 0) + 1), drop: () => undefined } });
  cleanup.push(() => {
    started.server.close();
    directory.close();
  });
  return { ...started, directory, accepted };
}

/** A plain UDP socket on loopback that keeps what it receives. */
async function socket(port = 0) {
  const s = dgram.createSocket('udp4');
  const got: Buffer[] = [];
  s.on('message', (buf) => got.push(buf));
  await new Promise<void>((r) => s.bind(port, '127.0.0.1', () => r()));
  let open = true;
  const close = () => {
    if (open) s.close();
    open = false;
  };
  cleanup.push(close);
  const send = (buf: Buffer, to: number) => new Promise<void>((resolve, reject) => s.send(buf, to, '127.0.0.1', (err) => (err ? reject(err) : resolve())));
  return { s, got, send, close, port: s.address().port };
}

const total = (m: Map<string, number> | Record<string, number>) => (m instanceof Map ? [...m.values()] : Object.values(m)).reduce((a, b) => a + b, 0);
const typeOf = (buf: Buffer) => JSON.parse(buf.subarray(32).toString()).type as string;

/**
 * A UDP relay between a ControlLink and a ControlServer that records what the application sends.
 * The server sees every datagram come from the relay's upstream socket: replaying from that
 * socket is replaying from the very address the registration belongs to.
 */
async function recordingRelay(serverPort: number) {
  const upstream = await socket();
  const downstream = await socket();
  const recorded: Buffer[] = [];
  let app: dgram.RemoteInfo | undefined;
  downstream.s.on('message', (buf, from) => {
    app = from;
    recorded.push(buf);
    void upstream.send(buf, serverPort);
  });
  upstream.s.on('message', (buf) => app && void downstream.send(buf, app.port));
  return { port: downstream.port, recorded, upstream };
}

describe('replayed datagrams', () => {
  it('a recorded register and update, replayed from the registered address itself, are refused as replays and change nothing', async () => {
    const srv = await server();
    const relay = await recordingRelay(srv.port);
    const link = await ControlLink.open({ port: relay.port, secretFile }, { role: 'target', app: 'line-target', ports: [7000], capacity: 10, load: 0 }, log);
    cleanup.push(() => link.close());
    link.update({ capacity: 5 });
    await until('the first update', () => srv.directory.local()[0]?.capacity === 5);
    link.update({ capacity: 7 });
    await until('the second update', () => srv.directory.local()[0]?.capacity === 7);
    expect(relay.recorded.map(typeOf)).toEqual(['challenge-request', 'register', 'update', 'update']);

    const dropped = () => srv.server.counts().dropped;
    for (const buf of relay.recorded.slice(1)) await relay.upstream.send(buf, srv.port);
    await until('three drops', () => total(dropped()) === 3);
    expect(dropped()).toEqual({ replay: 3 });
    expect(srv.server.counts()).toMatchObject({ targets: 1, routers: 0 });
    // The replayed first update (capacity 5) did not take: the last real one stands.
    expect(srv.directory.local().map((t) => t.capacity)).toEqual([7]);
  });

  it('replayed from another address: the register\'s nonce was issued to someone else, the update names no registration of that address', async () => {
    const srv = await server();
    const relay = await recordingRelay(srv.port);
    const link = await ControlLink.open({ port: relay.port, secretFile }, { role: 'target', app: 'line-target', ports: [7000], capacity: 10 }, log);
    cleanup.push(() => link.close());
    link.update({ capacity: 3 });
    await until('the update', () => srv.directory.local()[0]?.capacity === 3);

    const other = await socket();
    const [, register, update] = relay.recorded as [Buffer, Buffer, Buffer];
    await other.send(register, srv.port);
    await other.send(update, srv.port);
    await until('two drops', () => total(srv.server.counts().dropped) === 2);
    expect(srv.server.counts().dropped).toEqual({ 'bad-nonce': 1, 'unknown-registration': 1 });
    expect(srv.server.counts()).toMatchObject({ targets: 1 });
    // The only answer goes to the replayer: "unknown registration", echoing the counter it sent.
    await until('the answer', () => other.got.length === 1);
    const ack = decodeDatagram(other.got[0]!, key, 'to-application', ['ack']);
    expect(ack).toMatchObject({ ok: true, msg: { type: 'ack', ok: false, n: 1 } });
  });

  it('a datagram batond sent is not valid sent back to it: the tag names its direction', async () => {
    const srv = await server();
    const c = await socket();
    await c.send(challengeRequest('0'.repeat(32)), srv.port);
    await until('the challenge', () => c.got.length === 1);
    expect(decodeDatagram(c.got[0]!, key, 'to-application', ['challenge'])).toMatchObject({ ok: true });
    await c.send(c.got[0]!, srv.port);
    // An ack batond could have sent, made with the right key, is refused the same way.
    await c.send(encodeDatagram(key, 'to-application', 'ack', { id: '0123456789abcdef', n: 1, ok: true }), srv.port);
    await until('two drops', () => total(srv.server.counts().dropped) === 2);
    expect(srv.server.counts().dropped).toEqual({ 'bad-mac': 2 });
  });
});

describe('a process squatting on the control port while batond is down', () => {
  it('gets nothing but challenge-requests, cannot answer them, and what it captured registers nothing once batond is back', async () => {
    const port = await freeUdpPort();
    const squatter = await socket(port);
    // It answers every datagram twice: reflected back, and as a challenge tagged with a guessed key.
    squatter.s.on('message', (buf, from) => {
      void squatter.send(buf, from.port);
      const cnonce = JSON.parse(buf.subarray(32).toString()).cnonce as string;
      void squatter.send(encodeDatagram(randomBytes(32), 'to-application', 'challenge', { cnonce, nonce: randomBytes(32).toString('hex') }), from.port);
    });
    const logged: Array<Record<string, unknown>> = [];
    const sdkLog = pino({ level: 'warn' }, { write: (line: string) => void logged.push(JSON.parse(line) as Record<string, unknown>) });
    await expect(ControlLink.open({ port, secretFile }, { role: 'router', app: 'py-router', ports: [7000] }, sdkLog)).rejects.toThrow(/no answer from batond's control socket/);
    expect(squatter.got.length).toBeGreaterThan(0);
    for (const buf of squatter.got) expect(decodeDatagram(buf, key, 'to-batond', FromApplication)).toMatchObject({ ok: true, msg: { type: 'challenge-request' } });
    // Both answers to each request were dropped, counted, for their tag.
    expect(logged).toContainEqual(expect.objectContaining({ msg: 'control datagram from batond dropped', reason: 'bad-mac', dropped: 2 * squatter.got.length }));

    const captured = [...squatter.got];
    squatter.close();
    const srv = await server(port);
    const replayer = await socket();
    for (const buf of captured) await replayer.send(buf, srv.port);
    await until('the challenges', () => replayer.got.length === captured.length);
    expect(srv.server.counts()).toEqual({ routers: 0, targets: 0, dropped: {} });
    expect(Object.fromEntries(srv.accepted)).toEqual({ 'challenge-request': captured.length });
  });

  it('took the port from a batond that went down: the heartbeats and updates it captured name a registration the new batond never made, and the application registers again with the new one', async () => {
    const first = await server();
    const link = await ControlLink.open({ port: first.port, secretFile }, { role: 'target', app: 'line-target', ports: [7000], capacity: 10 }, log);
    cleanup.push(() => link.close());
    first.server.close();

    const squatter = await socket(first.port);
    link.update({ capacity: 4 });
    await until('the update', () => squatter.got.length > 0);
    expect(squatter.got.map(typeOf)).toContain('update');
    const captured = [...squatter.got];
    squatter.close();

    const again = await server(first.port);
    const replayer = await socket();
    for (const buf of captured) await replayer.send(buf, again.port);
    await until('the answers to the replays', () => replayer.got.length === captured.length);
    // The application's own next heartbeat learns batond forgot it, and it registers again.
    await until('the application to register again', () => again.server.counts().targets === 1);
    const dropped = again.server.counts().dropped;
    expect(Object.keys(dropped)).toEqual(['unknown-registration']);
    expect(dropped['unknown-registration']).toBeGreaterThan(captured.length);
    // Every answer the replayer got says "register again"; none registered it.
    for (const buf of replayer.got) expect(decodeDatagram(buf, key, 'to-application', ['ack'])).toMatchObject({ ok: true, msg: { ok: false } });
    expect(again.directory.local().map((t) => t.capacity)).toEqual([4]);
  });
});

describe('registration nonces', () => {
  const a = { address: '127.0.0.1', port: 40000 };
  it('are taken once, from the address they were issued to, before they expire; forged ones are refused', async () => {
    const c = new Challenges(100, 2);
    const n1 = c.issue(a);
    expect(c.redeem(n1, { ...a, port: 40001 })).toBe('bad-nonce');
    expect(c.redeem(n1, a)).toBeUndefined();
    expect(c.redeem(n1, a)).toBe('replay');
    const tampered = (n1[0] === '0' ? '1' : '0') + n1.slice(1);
    expect(c.redeem(tampered, a)).toBe('bad-nonce');
    expect(new Challenges().redeem(n1, a)).toBe('bad-nonce'); // another batond process: another key
    const n2 = c.issue(a);
    await new Promise((r) => setTimeout(r, 150));
    expect(c.redeem(n2, a)).toBe('stale-nonce');
  });

  it('issuing costs no memory; remembering used ones is bounded', () => {
    const c = new Challenges(60_000, 2);
    const issued = Array.from({ length: 10_000 }, () => c.issue(a));
    expect(c.redeem(issued[0]!, a)).toBeUndefined();
    expect(c.redeem(issued[1]!, a)).toBeUndefined();
    expect(c.redeem(issued[2]!, a)).toBe('full');
  });
});
