// A routing application's TLS session taken over at handoff (controller/sdk/tls-session.ts): the
// state the SDK exports — each direction's keys and next sequence number, the peeked plaintext
// sealed as records, the client's bytes held before TLS — is exactly what kernel TLS needs to go on.
// Shown here without kernel TLS: after the takeover the session continues over the same TCP
// connection in a userspace record layer fed only with the exported structs (helpers/record-layer.ts),
// and the real client (node:tls, openssl s_client) neither notices nor loses a byte: every record
// it sent after the takeover opens, every record sealed from the exported state it reads.
// TLS 1.3 and 1.2 with each cipher kernel TLS takes; a client KeyUpdate before the takeover; a
// takeover in the middle of a client's 300 KB write; suites kernel TLS does not take refused.
// Loopback only.
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, describe, expect, it } from 'vitest';
import { takeOverTls, untilFlushed } from '../../../controller/sdk/socket-takeover.js';
import { acceptTls, tlsSessionOf, type TlsSession } from '../../../controller/sdk/tls-session.js';
import { RecordLayer } from '../../helpers/record-layer.js';
import { until } from '../../helpers/wait.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-tls-session-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', '/CN=router', '-days', '1',
  '-keyout', path.join(tmp, 'k.pem'), '-out', path.join(tmp, 'c.pem')], { stdio: 'ignore' });
const secureContext = tls.createSecureContext({ key: fs.readFileSync(path.join(tmp, 'k.pem')), cert: fs.readFileSync(path.join(tmp, 'c.pem')) });

interface Server {
  port: number;
  accepted: Promise<tls.TLSSocket>;
  close(): void;
}

async function routingServer(options: Omit<tls.TLSSocketOptions, 'isServer'> = {}): Promise<Server> {
  let resolve!: (s: tls.TLSSocket) => void;
  const accepted = new Promise<tls.TLSSocket>((r) => (resolve = r));
  const server = net.createServer((raw) => {
    const socket = acceptTls(raw, { secureContext, ...options });
    socket.on('error', () => undefined);
    resolve(socket);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as net.AddressInfo).port, accepted, close: () => server.close() };
}

/**
 * The handoff's first half, as RouterClient.handoff() runs it: reading stopped at a record
 * boundary, writes flushed, the session exported with peeked. Then, instead of batond, the same
 * TCP connection is read again and fed to a record layer built from the exported structs.
 */
async function takeOver(socket: tls.TLSSocket, peeked: Buffer): Promise<{ layer: RecordLayer; readable: Buffer; raw: net.Socket; received: () => Buffer }> {
  const session = tlsSessionOf(socket) as TlsSession;
  const taken = takeOverTls(session, 'c1');
  await untilFlushed([socket, ...session.writers], 'c1');
  const offer = session.offer(Buffer.concat([peeked, taken.buffered]), taken.held, 'c1');
  session.detach();
  const layer = new RecordLayer(offer.keys);
  // The replay goes first (the target's kernel finds it at the head of its receive queue).
  const chunks = [layer.receive(offer.replay)];
  const readable = chunks[0]!;
  const raw = session.raw;
  raw.on('data', (b: Buffer) => chunks.push(layer.receive(b)));
  // takeOverReads stopped the TCP handle; a test reads it again the way restore() would.
  const handle = (raw as unknown as { _handle: { reading: boolean; readStart(): number } })._handle;
  handle.reading = true;
  handle.readStart();
  raw.resume();
  return { layer, readable, raw, received: () => Buffer.concat(chunks) };
}

/** The next chunk of plaintext; the socket paused at once, as a router does before it decides (what TLS decrypted meanwhile stays buffered). */
const firstData = (s: tls.TLSSocket) =>
  new Promise<Buffer>((resolve) =>
    s.once('data', (b: Buffer) => {
      s.pause();
      resolve(b);
    }),
  );

const SUITES = [
  { name: 'TLS 1.3 AES-128-GCM', client: { minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', ciphers: 'TLS_AES_128_GCM_SHA256' } },
  { name: 'TLS 1.3 AES-256-GCM', client: { minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', ciphers: 'TLS_AES_256_GCM_SHA384' } },
  { name: 'TLS 1.3 ChaCha20-Poly1305', client: { minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', ciphers: 'TLS_CHACHA20_POLY1305_SHA256' } },
  { name: 'TLS 1.2 AES-128-GCM', client: { minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256' } },
  { name: 'TLS 1.2 AES-256-GCM', client: { minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES256-GCM-SHA384' } },
  { name: 'TLS 1.2 ChaCha20-Poly1305', client: { minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-CHACHA20-POLY1305' } },
] as const;

describe('a TLS session exported at handoff goes on from the exported state alone', () => {
  it.each(SUITES)('$name: peeked request, later requests, replies and 1 MB each way, byte-exact', async ({ client: clientOpts }) => {
    const server = await routingServer();
    const client = tls.connect({ port: server.port, host: '127.0.0.1', rejectUnauthorized: false, ...clientOpts });
    const fromServer: Buffer[] = [];
    client.on('data', (b) => fromServer.push(b));
    try {
      const socket = await server.accepted;
      // The router answers once under OpenSSL (TLS 1.3: after its session tickets), reads a request, peeks it.
      client.write('HELLO\n');
      expect((await firstData(socket)).toString()).toBe('HELLO\n');
      socket.resume();
      socket.write('hi from the router\n');
      await until('the bytes', () => Buffer.concat(fromServer).toString() === 'hi from the router\n');
      client.write('GET /first\n');
      const request = await firstData(socket);
      const { layer, readable, raw, received } = await takeOver(socket, request);
      expect(readable.toString()).toBe('GET /first\n');
      // The client goes on: a small record, then 1 MB, each opened at its sequence number.
      const big = randomBytes(1024 * 1024);
      client.write('GET /second\n');
      client.write(big);
      await until('the bytes', () => received().length === 'GET /first\nGET /second\n'.length + big.length, 10_000);
      expect(received().equals(Buffer.concat([Buffer.from('GET /first\nGET /second\n'), big]))).toBe(true);
      // And reads what the exported TX state seals: a reply, then 1 MB.
      raw.write(layer.send(Buffer.from('reply from the target\n')));
      raw.write(layer.send(big));
      const want = Buffer.concat([Buffer.from('hi from the router\nreply from the target\n'), big]);
      await until('the bytes', () => Buffer.concat(fromServer).length >= want.length, 10_000);
      expect(Buffer.concat(fromServer).equals(want)).toBe(true);
      expect(client.getProtocol()).toBe(clientOpts.maxVersion);
    } finally {
      client.destroy();
      server.close();
    }
  });

  it('taken over in the middle of a 300 KB write: what TLS decrypted, what the tap held (a partial record) and what the kernel kept add up to the write', async () => {
    const server = await routingServer();
    const client = tls.connect({ port: server.port, host: '127.0.0.1', rejectUnauthorized: false });
    try {
      const socket = await server.accepted;
      const payload = randomBytes(300 * 1024);
      client.write(payload);
      const first = await firstData(socket);
      expect(first.length).toBeLessThan(payload.length);
      const { received } = await takeOver(socket, first);
      await until('the bytes', () => received().length >= payload.length, 10_000);
      expect(received().equals(payload)).toBe(true);
    } finally {
      client.destroy();
      server.close();
    }
  });

  it('openssl s_client (TLS 1.3), after a KeyUpdate each way before the takeover: its next line opens under the updated keys, our reply reaches it', async () => {
    const server = await routingServer();
    // Not -quiet: s_client reads "K" on a line of its own as "send a KeyUpdate, and ask for one".
    const sclient = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${server.port}`, '-tls1_3', '-ciphersuites', 'TLS_AES_256_GCM_SHA384'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    sclient.stdout.on('data', (b: Buffer) => (out += b.toString('latin1')));
    sclient.stderr.on('data', (b: Buffer) => (out += b.toString('latin1')));
    try {
      const socket = await server.accepted;
      const lines: string[] = [];
      socket.on('data', (b) => lines.push(b.toString()));
      sclient.stdin.write('before\n');
      await until('the bytes', () => lines.join('') === 'before\n', 10_000);
      sclient.stdin.write('K\n');
      await until('the bytes', () => out.includes('KEYUPDATE'), 10_000);
      socket.write('answered under updated keys\n');
      await until('the bytes', () => out.includes('answered under updated keys'), 10_000);
      socket.removeAllListeners('data');
      const { layer, raw, received } = await takeOver(socket, Buffer.alloc(0));
      sclient.stdin.write('after the takeover\n');
      await until('the bytes', () => received().toString() === 'after the takeover\n', 10_000);
      raw.write(layer.send(Buffer.from('reply from the exported state\n')));
      await until('the bytes', () => out.includes('reply from the exported state'), 10_000);
    } finally {
      sclient.kill();
      server.close();
    }
  });
});

describe('a TLS session that cannot be exported says why', () => {
  it('a suite kernel TLS does not take (TLS 1.2 AES-CBC) is refused before anything changes', async () => {
    const server = await routingServer();
    const client = tls.connect({ port: server.port, host: '127.0.0.1', rejectUnauthorized: false, maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-SHA' });
    try {
      const socket = await server.accepted;
      client.write('x');
      await firstData(socket);
      expect(tlsSessionOf(socket)!.whyNot()).toMatch(/suite is not one kernel TLS takes/);
    } finally {
      client.destroy();
      server.close();
    }
  });

  it('before the handshake completed', async () => {
    const server = await routingServer();
    const raw = net.connect(server.port, '127.0.0.1');
    try {
      const socket = await server.accepted;
      expect(tlsSessionOf(socket)!.whyNot()).toMatch(/handshake has not completed/);
    } finally {
      raw.destroy();
      server.close();
    }
  });
});
