// The record-layer crypto a TLS handoff rests on (controller/transfer/tls-keys.ts): key derivation
// checked against RFC 8448's published trace and against OpenSSL's own KDFs, records sealed and
// opened for every version × cipher, and then the real thing: a node:tls session through a
// recording proxy, its every encrypted record opened with keys derived from the server's keylog
// lines at consecutive sequence numbers, and records sealed by this module (application data, a
// TLS 1.3 KeyUpdate and the epoch after it) injected towards the node:tls client, which reads them.
// Loopback only.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ContentType, hkdfExpandLabel, ivLength, keyLength, MAX_PLAINTEXT, openRecord, type RecordKeys, RECORD_HEADER, sealRecord, suiteOf,
  TAG, tls12KeyBlock, tls13NextSecret, tls13TrafficKeys, type TlsCipher, type TlsSuite,
} from '../../../controller/transfer/tls-keys.js';
import { until } from '../../helpers/wait.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const empty = Buffer.alloc(0);

/** What `openssl kdf` prints (AA:BB:...), as bytes. */
function opensslKdf(args: string[]): Buffer {
  return hex(execFileSync('openssl', ['kdf', ...args], { encoding: 'utf8' }).replace(/:/g, ''));
}

describe('TLS 1.3 key schedule: HKDF-Expand-Label and the traffic keys', () => {
  // RFC 8448 section 3, "Simple 1-RTT Handshake" (TLS_AES_128_GCM_SHA256).
  const rfc8448 = {
    handshakeSecret: hex('1d c8 26 e9 36 06 aa 6f dc 0a ad c1 2f 74 1b 01 04 6a a6 b9 9f 69 1e d2 21 a9 f0 ca 04 3f be ac'),
    helloHash: hex('86 0c 06 ed c0 78 58 ee 8e 78 f0 e7 42 8c 58 ed d6 b4 3f 2c a3 e6 e9 5f 02 ed 06 3c f0 e1 ca d8'),
    clientHsTraffic: hex('b3 ed db 12 6e 06 7f 35 a7 80 b3 ab f4 5e 2d 8f 3b 1a 95 07 38 f5 2e 96 00 74 6a 0e 27 a5 5a 21'),
    serverHsTraffic: hex('b6 7b 7d 69 0c c1 6c 4e 75 e5 42 13 cb 2d 37 b4 e9 c9 12 bc de d9 10 5d 42 be fd 59 d3 91 ad 38'),
    serverHsKey: hex('3f ce 51 60 09 c2 17 27 d0 f2 e4 e8 6e e4 03 bc'),
    serverHsIv: hex('5d 31 3e b2 67 12 76 ee 13 00 0b 30'),
    serverFinishedKey: hex('00 8d 3b 66 f8 16 ea 55 9f 96 b5 37 e8 85 c3 1f c0 68 bf 49 2c 65 2f 01 f2 88 a1 d8 cd c1 9f c8'),
    masterSecret: hex('18 df 06 84 3d 13 a0 8b f2 a4 49 84 4c 5f 8a 47 80 01 bc 4d 4c 62 79 84 d5 a4 1d a8 d0 40 29 19'),
    serverFinishedHash: hex('96 08 10 2a 0f 1c cc 6d b6 25 0b 7b 7e 41 7b 1a 00 0e aa da 3d aa e4 77 7a 76 86 c9 ff 83 df 13'),
    serverApTraffic: hex('a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43'),
    serverApKey: hex('9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56'),
    serverApIv: hex('cf 78 2b 88 dd 83 54 9a ad f1 e9 84'),
    clientApKey: hex('17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51'),
    clientApIv: hex('5b 78 92 3d ee 08 57 90 33 e5 23 d9'),
    clientApTraffic: hex('9e 40 64 6c e7 9a 7f 9d c0 5a f8 88 9b ce 65 52 87 5a fa 0b 06 df 00 87 f7 92 eb b7 c1 75 04 a5'),
  };
  const aes128: TlsSuite = { version: '1.3', cipher: 'aes-128-gcm', hash: 'sha256' };

  it("derives RFC 8448's server handshake and both application write keys and IVs from their traffic secrets", () => {
    expect(tls13TrafficKeys(aes128, rfc8448.serverHsTraffic)).toEqual({ key: rfc8448.serverHsKey, iv: rfc8448.serverHsIv });
    expect(tls13TrafficKeys(aes128, rfc8448.serverApTraffic)).toEqual({ key: rfc8448.serverApKey, iv: rfc8448.serverApIv });
    expect(tls13TrafficKeys(aes128, rfc8448.clientApTraffic)).toEqual({ key: rfc8448.clientApKey, iv: rfc8448.clientApIv });
  });

  it("takes the context and a hash-length output as RFC 8448 does (Derive-Secret of the traffic secrets, the finished key)", () => {
    expect(hkdfExpandLabel('sha256', rfc8448.handshakeSecret, 'c hs traffic', rfc8448.helloHash, 32)).toEqual(rfc8448.clientHsTraffic);
    expect(hkdfExpandLabel('sha256', rfc8448.handshakeSecret, 's hs traffic', rfc8448.helloHash, 32)).toEqual(rfc8448.serverHsTraffic);
    expect(hkdfExpandLabel('sha256', rfc8448.masterSecret, 's ap traffic', rfc8448.serverFinishedHash, 32)).toEqual(rfc8448.serverApTraffic);
    expect(hkdfExpandLabel('sha256', rfc8448.serverHsTraffic, 'finished', empty, 32)).toEqual(rfc8448.serverFinishedKey);
  });

  it("agrees with OpenSSL's TLS13-KDF (expand only) for SHA-384, a context and an output of several hash blocks; the next secret is 'traffic upd'", () => {
    const secret = randomBytes(48);
    const context = randomBytes(20);
    const openssl = (label: string, data: Buffer, length: number) => opensslKdf(['-keylen', String(length), '-kdfopt', 'digest:SHA384', '-kdfopt', 'mode:EXPAND_ONLY',
      '-kdfopt', `hexkey:${secret.toString('hex')}`, '-kdfopt', 'prefix:tls13 ', '-kdfopt', `label:${label}`, ...(data.length ? ['-kdfopt', `hexdata:${data.toString('hex')}`] : []), 'TLS13-KDF']);
    expect(hkdfExpandLabel('sha384', secret, 'some label', context, 130)).toEqual(openssl('some label', context, 130));
    expect(tls13NextSecret('sha384', secret)).toEqual(openssl('traffic upd', empty, 48));
    expect(tls13NextSecret('sha256', rfc8448.serverApTraffic)).toEqual(hkdfExpandLabel('sha256', rfc8448.serverApTraffic, 'traffic upd', empty, 32));
  });

  it('refuses an output longer than 255 hash blocks', () => {
    expect(() => hkdfExpandLabel('sha256', rfc8448.serverHsTraffic, 'key', empty, 255 * 32 + 1)).toThrow(RangeError);
    expect(hkdfExpandLabel('sha256', rfc8448.serverHsTraffic, 'key', empty, 255 * 32)).toHaveLength(255 * 32);
  });
});

describe('TLS 1.2 key block', () => {
  it.each([
    ['aes-128-gcm', 'sha256', 'SHA256'],
    ['aes-256-gcm', 'sha384', 'SHA384'],
    ['chacha20-poly1305', 'sha256', 'SHA256'],
  ] as const)('%s: is the first bytes of OpenSSL\'s TLS1-PRF(%s) over "key expansion" || server_random || client_random, cut client key, server key, client IV, server IV', (cipher, hash, digest) => {
    const suite: TlsSuite = { version: '1.2', cipher, hash };
    const master = randomBytes(48);
    const clientRandom = randomBytes(32);
    const serverRandom = randomBytes(32);
    const k = keyLength(cipher);
    const v = ivLength(suite);
    // OpenSSL's TLS1-PRF takes the label as the start of its seed (EVP_KDF-TLS1_PRF(7)).
    const seed = Buffer.concat([Buffer.from('key expansion'), serverRandom, clientRandom]);
    const block = opensslKdf(['-keylen', String(2 * (k + v)), '-kdfopt', `digest:${digest}`, '-kdfopt', `hexsecret:${master.toString('hex')}`, '-kdfopt', `hexseed:${seed.toString('hex')}`, 'TLS1-PRF']);
    expect(tls12KeyBlock(suite, master, clientRandom, serverRandom)).toEqual({
      client: { key: block.subarray(0, k), iv: block.subarray(2 * k, 2 * k + v) },
      server: { key: block.subarray(k, 2 * k), iv: block.subarray(2 * k + v) },
    });
  });
});

describe('suites', () => {
  it('maps the IANA names kernel TLS takes, and nothing else', () => {
    expect(suiteOf('TLS_AES_256_GCM_SHA384', 'TLSv1.3')).toEqual({ version: '1.3', cipher: 'aes-256-gcm', hash: 'sha384' });
    expect(suiteOf('TLS_CHACHA20_POLY1305_SHA256', 'TLSv1.3')).toEqual({ version: '1.3', cipher: 'chacha20-poly1305', hash: 'sha256' });
    expect(suiteOf('TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384', 'TLSv1.2')).toEqual({ version: '1.2', cipher: 'aes-256-gcm', hash: 'sha384' });
    expect(suiteOf('TLS_RSA_WITH_AES_128_GCM_SHA256', 'TLSv1.2')).toEqual({ version: '1.2', cipher: 'aes-128-gcm', hash: 'sha256' });
    expect(suiteOf('TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256', 'TLSv1.2')).toEqual({ version: '1.2', cipher: 'chacha20-poly1305', hash: 'sha256' });
    for (const [name, protocol] of [
      ['TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256', 'TLSv1.2'], ['TLS_ECDHE_ECDSA_WITH_AES_128_CCM', 'TLSv1.2'], ['TLS_AES_128_CCM_SHA256', 'TLSv1.3'],
      ['TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256', 'TLSv1.1'], ['TLS_AES_128_GCM_SHA256', 'TLSv1.2'], ['TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256', 'TLSv1.3'],
    ] as const) expect(suiteOf(name, protocol), `${name} over ${protocol}`).toBeUndefined();
  });
});

const SUITES: TlsSuite[] = (['1.2', '1.3'] as const).flatMap((version) =>
  ([['aes-128-gcm', 'sha256'], ['aes-256-gcm', 'sha384'], ['chacha20-poly1305', 'sha256']] as const).map(([cipher, hash]) => ({ version, cipher, hash })));
const keysFor = (suite: TlsSuite): RecordKeys => ({ suite, key: randomBytes(keyLength(suite.cipher)), iv: randomBytes(ivLength(suite)) });
const name = (s: TlsSuite) => `TLS ${s.version} ${s.cipher}`;

describe('records sealed and opened', () => {
  it.each(SUITES.map((s) => [name(s), s] as const))('%s: round trip; a wrong seq or key, a flipped byte, a cut or padded record open to nothing', (_, suite) => {
    const keys = keysFor(suite);
    const text = Buffer.from('GET / HTTP/1.1\r\n\r\n');
    const record = sealRecord(keys, 7n, ContentType.application_data, text);
    const overhead = (suite.version === '1.3' ? 1 : 0) + (suite.version === '1.2' && suite.cipher !== 'chacha20-poly1305' ? 8 : 0) + TAG;
    expect(record).toHaveLength(RECORD_HEADER + text.length + overhead);
    expect([...record.subarray(0, 5)]).toEqual([23, 3, 3, (text.length + overhead) >> 8, (text.length + overhead) & 0xff]);
    expect(openRecord(keys, 7n, record)).toMatchObject({ type: 23, plaintext: text });

    expect(openRecord(keys, 8n, record)).toBeUndefined();
    expect(openRecord(keysFor(suite), 7n, record)).toBeUndefined();
    for (const at of [0, 2, 4, RECORD_HEADER, record.length - 1]) {
      const flipped = Buffer.from(record);
      flipped.writeUInt8(flipped.readUInt8(at) ^ 1, at);
      expect(openRecord(keys, 7n, flipped), `byte ${at} flipped`).toBeUndefined();
    }
    expect(openRecord(keys, 7n, record.subarray(0, record.length - 1))).toBeUndefined();
    expect(openRecord(keys, 7n, Buffer.concat([record, Buffer.alloc(1)]))).toBeUndefined();
    for (const n of [0, 3, RECORD_HEADER, RECORD_HEADER + TAG - 1]) {
      const cut = Buffer.from(record.subarray(0, n));
      if (n >= RECORD_HEADER) cut.writeUInt16BE(n - RECORD_HEADER, 3); // a header consistent with the short body
      expect(openRecord(keys, 7n, cut), `${n} bytes`).toBeUndefined();
    }
  });

  it.each(SUITES.map((s) => [name(s), s] as const))('%s: an empty and a full-size record of each content type; a byte more is refused', (_, suite) => {
    const keys = keysFor(suite);
    const full = randomBytes(MAX_PLAINTEXT);
    for (const type of Object.values(ContentType)) {
      expect(openRecord(keys, 0n, sealRecord(keys, 0n, type, full))).toMatchObject({ type, plaintext: full });
      expect(openRecord(keys, 2n ** 64n - 1n, sealRecord(keys, 2n ** 64n - 1n, type, empty))).toMatchObject({ type, plaintext: empty });
    }
    expect(() => sealRecord(keys, 0n, 23, Buffer.alloc(MAX_PLAINTEXT + 1))).toThrow(RangeError);
  });

  it('TLS 1.3: sealed as application_data whatever the real type; padding zeros stripped; all-zero inner plaintext refused', () => {
    const keys = keysFor({ version: '1.3', cipher: 'aes-128-gcm', hash: 'sha256' });
    expect(sealRecord(keys, 0n, ContentType.handshake, Buffer.from([24, 0, 0, 1, 0]))[0]).toBe(ContentType.application_data);
    // A peer's record padded with zeros after the type (RFC 8446 5.4), sealed here by hand.
    const padded = sealRecord(keys, 3n, 0, Buffer.concat([Buffer.from('hi\0'), Buffer.from([ContentType.alert]), Buffer.alloc(40)]));
    expect(openRecord(keys, 3n, padded)).toEqual({ type: ContentType.alert, plaintext: Buffer.from('hi\0') });
    expect(openRecord(keys, 4n, sealRecord(keys, 4n, 0, Buffer.alloc(10)))).toBeUndefined();
  });

  it('TLS 1.2 GCM: the explicit nonce is the seq unless given, and is returned; ChaCha20 has none', () => {
    const gcm = keysFor({ version: '1.2', cipher: 'aes-256-gcm', hash: 'sha384' });
    const bySeq = sealRecord(gcm, 0x0102n, 23, Buffer.from('x'));
    expect(bySeq.subarray(5, 13)).toEqual(hex('0000000000000102'));
    expect(openRecord(gcm, 0x0102n, bySeq)?.explicitNonce).toEqual(hex('0000000000000102'));
    const given = randomBytes(8);
    const record = sealRecord(gcm, 5n, 22, Buffer.from('y'), given);
    expect(openRecord(gcm, 5n, record)).toEqual({ type: 22, plaintext: Buffer.from('y'), explicitNonce: given });
    expect(openRecord(gcm, 6n, record)).toBeUndefined(); // the seq is still in the AAD
    const chacha = keysFor({ version: '1.2', cipher: 'chacha20-poly1305', hash: 'sha256' });
    expect(openRecord(chacha, 0n, sealRecord(chacha, 0n, 23, Buffer.from('z')))?.explicitNonce).toBeUndefined();
    expect(() => sealRecord(chacha, 0n, 23, Buffer.from('z'), given)).toThrow(RangeError);
    expect(() => sealRecord(gcm, 0n, 23, Buffer.from('z'), Buffer.alloc(4))).toThrow(RangeError);
  });
});

// --- A real node:tls session, every byte recorded ---------------------------------------------

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-tls-keys-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
let credentials: { key: Buffer; cert: Buffer };
beforeAll(() => {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=t', '-days', '1',
    '-keyout', path.join(tmp, 'k.pem'), '-out', path.join(tmp, 'c.pem')], { stdio: 'ignore' });
  credentials = { key: fs.readFileSync(path.join(tmp, 'k.pem')), cert: fs.readFileSync(path.join(tmp, 'c.pem')) };
});

interface Session {
  suite: TlsSuite | undefined;
  /** Client → server and server → client bytes, as the proxy between them saw them. */
  up: Buffer;
  down: Buffer;
  /** The server's keylog lines: label → [client_random, secret]. */
  keylog: Map<string, [Buffer, Buffer]>;
  /** What the node:tls client has read so far. */
  received: () => string;
  /** Writes bytes to the client as if the server had sent them. */
  inject: (bytes: Buffer) => void;
  close: () => void;
}

const listen = (server: net.Server) => new Promise<number>((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port)));

/** Client says "ping from client", the server answers "pong from server", through a recording proxy. */
async function session(protocol: 'TLSv1.2' | 'TLSv1.3', ciphers: string): Promise<Session> {
  const keylog = new Map<string, [Buffer, Buffer]>();
  const server = tls.createServer({ ...credentials, minVersion: protocol, maxVersion: protocol, ciphers });
  server.on('keylog', (line: Buffer) => {
    const [label = '', random = '', secret = ''] = line.toString('ascii').trim().split(' ');
    keylog.set(label, [hex(random), hex(secret)]);
  });
  const accepted = new Promise<tls.TLSSocket>((resolve) => server.once('secureConnection', resolve));
  server.on('secureConnection', (s: tls.TLSSocket) => {
    s.on('error', () => {});
    s.on('data', (b) => b.toString() === 'ping from client' && s.write('pong from server'));
  });
  const serverPort = await listen(server);

  const up: Buffer[] = [];
  const down: Buffer[] = [];
  let toClient: net.Socket | undefined;
  const proxy = net.createServer((c) => {
    toClient = c;
    const s = net.connect(serverPort, '127.0.0.1');
    c.on('data', (b) => { up.push(b); s.write(b); });
    s.on('data', (b) => { down.push(b); c.write(b); });
    for (const [a, b] of [[c, s], [s, c]] as const) {
      a.on('error', () => {});
      a.on('close', () => b.destroy());
    }
  });
  const proxyPort = await listen(proxy);

  const client = tls.connect({ port: proxyPort, host: '127.0.0.1', rejectUnauthorized: false });
  client.on('error', () => {});
  let received = '';
  client.on('data', (b) => (received += b.toString()));
  await new Promise((resolve) => client.once('secureConnect', resolve));
  client.write('ping from client');
  await until('the server\'s answer', () => received === 'pong from server', 5000);
  const accepted_ = await accepted;
  const cipher = accepted_.getCipher() as tls.CipherNameAndProtocol & { standardName: string };
  return {
    suite: suiteOf(cipher.standardName, accepted_.getProtocol() ?? ''),
    up: Buffer.concat(up),
    down: Buffer.concat(down),
    keylog,
    received: () => received,
    inject: (bytes) => toClient?.write(bytes),
    close: () => { client.destroy(); proxy.close(); server.close(); },
  };
}

const first = (rs: Buffer[]): Buffer => rs[0] ?? Buffer.alloc(RECORD_HEADER);

/** A byte stream cut into whole records. */
function records(stream: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < stream.length; ) {
    const end = at + RECORD_HEADER + stream.readUInt16BE(at + 3);
    expect(end, 'a record cut short in the capture').toBeLessThanOrEqual(stream.length);
    out.push(stream.subarray(at, end));
    at = end;
  }
  return out;
}

/** The handshake message types in a run of handshake bytes (type(1) length(3) body). */
function messageTypes(bytes: Buffer): number[] {
  const types: number[] = [];
  for (let at = 0; at < bytes.length; at += 4 + bytes.readUIntBE(at + 1, 3)) types.push(bytes.readUInt8(at));
  return types;
}

interface Opened { epoch: string; seq: bigint; type: number; plaintext: Buffer; explicitNonce?: Buffer }

/**
 * Opens one direction's encrypted records, trying each epoch's keys in order at its own next seq
 * (what the SDK does: a record that opens under the next epoch's keys at seq 0 ends the previous
 * epoch). Every record after the plaintext ones must open under one of them.
 */
function openDirection(encrypted: Buffer[], epochs: [[string, RecordKeys], ...Array<[string, RecordKeys]>]): Opened[] {
  const out: Opened[] = [];
  const [[firstEpoch, firstKeys], ...later] = epochs;
  let [epoch, keys] = [firstEpoch, firstKeys];
  let seq = 0n;
  for (const record of encrypted) {
    let opened = openRecord(keys, seq, record);
    const next = later[0];
    if (!opened && next) {
      [epoch, keys] = next;
      later.shift();
      seq = 0n;
      opened = openRecord(keys, seq, record);
    }
    if (!opened) throw new Error(`record ${out.length} does not open under the ${epoch} keys at seq ${seq}`);
    out.push({ epoch, seq, ...opened });
    seq++;
  }
  return out;
}

const summary = (opened: Opened[]) => opened.map((o) => ({ epoch: o.epoch, seq: o.seq, type: o.type, ...(o.type === 22 ? { messages: messageTypes(o.plaintext) } : { text: o.plaintext.toString() }) }));

const TLS13_CASES: Array<[string, TlsCipher]> = [['TLS_AES_128_GCM_SHA256', 'aes-128-gcm'], ['TLS_AES_256_GCM_SHA384', 'aes-256-gcm'], ['TLS_CHACHA20_POLY1305_SHA256', 'chacha20-poly1305']];
const TLS12_CASES: Array<[string, TlsCipher]> = [['ECDHE-ECDSA-AES128-GCM-SHA256', 'aes-128-gcm'], ['ECDHE-ECDSA-AES256-GCM-SHA384', 'aes-256-gcm'], ['ECDHE-ECDSA-CHACHA20-POLY1305', 'chacha20-poly1305']];

describe('a real node:tls session', () => {
  it.each(TLS13_CASES)('TLS 1.3 %s: every record opens under the keylog secrets at consecutive seqs; records sealed here (data, KeyUpdate, data under the next secret) reach the client', async (ciphers, cipher) => {
    const s = await session('TLSv1.3', ciphers);
    try {
      expect(s.suite).toMatchObject({ version: '1.3', cipher });
      const suite = s.suite!;
      const keys = (label: string) => ({ suite, ...tls13TrafficKeys(suite, s.keylog.get(label)![1]) });
      const up = records(s.up);
      const down = records(s.down);
      // Unprotected first: the hello, then (middlebox compatibility, RFC 8446 D.4) a change_cipher_spec.
      expect(up.slice(0, 2).map((r) => r[0])).toEqual([ContentType.handshake, ContentType.change_cipher_spec]);
      expect(down.slice(0, 2).map((r) => r[0])).toEqual([ContentType.handshake, ContentType.change_cipher_spec]);
      expect(first(down).readUInt8(RECORD_HEADER)).toBe(2); // ServerHello
      expect([...up.slice(2), ...down.slice(2)].every((r) => r[0] === ContentType.application_data)).toBe(true);

      const fromServer = openDirection(down.slice(2), [['handshake', keys('SERVER_HANDSHAKE_TRAFFIC_SECRET')], ['application', keys('SERVER_TRAFFIC_SECRET_0')]]);
      const fromClient = openDirection(up.slice(2), [['handshake', keys('CLIENT_HANDSHAKE_TRAFFIC_SECRET')], ['application', keys('CLIENT_TRAFFIC_SECRET_0')]]);
      // The server's flight: EncryptedExtensions, Certificate, CertificateVerify, Finished; then,
      // under the application key from seq 0, its NewSessionTickets and the answer.
      const handshake = fromServer.filter((o) => o.epoch === 'handshake');
      expect(handshake.every((o) => o.type === ContentType.handshake)).toBe(true);
      expect(messageTypes(Buffer.concat(handshake.map((o) => o.plaintext)))).toEqual([8, 11, 15, 20]);
      const application = fromServer.filter((o) => o.epoch === 'application');
      expect(summary(application)).toEqual([
        { epoch: 'application', seq: 0n, type: 22, messages: [4] },
        { epoch: 'application', seq: 1n, type: 22, messages: [4] },
        { epoch: 'application', seq: 2n, type: 23, text: 'pong from server' },
      ]);
      expect(summary(fromClient)).toEqual([
        { epoch: 'handshake', seq: 0n, type: 22, messages: [20] },
        { epoch: 'application', seq: 0n, type: 23, text: 'ping from client' },
      ]);

      // Sealed here at the server's next seq, the client reads it; then a KeyUpdate
      // (update_not_requested, RFC 8446 4.6.3) and a record under the next secret from seq 0.
      const serverApp = keys('SERVER_TRAFFIC_SECRET_0');
      const next = BigInt(application.length);
      s.inject(sealRecord(serverApp, next, ContentType.application_data, Buffer.from(' / sealed by the test')));
      await until(() => `the sealed record, client read ${JSON.stringify(s.received())}`, () => s.received().endsWith(' / sealed by the test'), 5000);
      s.inject(sealRecord(serverApp, next + 1n, ContentType.handshake, Buffer.from([24, 0, 0, 1, 0])));
      const updated = { suite, ...tls13TrafficKeys(suite, tls13NextSecret(suite.hash, s.keylog.get('SERVER_TRAFFIC_SECRET_0')![1])) };
      s.inject(sealRecord(updated, 0n, ContentType.application_data, Buffer.from(' / after KeyUpdate')));
      await until(() => `the record after KeyUpdate, client read ${JSON.stringify(s.received())}`, () => s.received().endsWith(' / after KeyUpdate'), 5000);
      expect(s.received()).toBe('pong from server / sealed by the test / after KeyUpdate');
    } finally {
      s.close();
    }
  });

  it.each(TLS12_CASES)('TLS 1.2 %s: the key block from CLIENT_RANDOM and the ServerHello opens every record after each ChangeCipherSpec from seq 0; a record sealed here reaches the client', async (ciphers, cipher) => {
    const s = await session('TLSv1.2', ciphers);
    try {
      expect(s.suite).toMatchObject({ version: '1.2', cipher });
      const suite = s.suite!;
      const up = records(s.up);
      const down = records(s.down);
      const [clientRandom, master] = s.keylog.get('CLIENT_RANDOM')!;
      // ClientHello and ServerHello: type(1) length(3) version(2) random(32), first in the first record.
      expect(first(up).readUInt8(RECORD_HEADER)).toBe(1);
      expect(first(up).subarray(RECORD_HEADER + 6, RECORD_HEADER + 38)).toEqual(clientRandom);
      expect(first(down).readUInt8(RECORD_HEADER)).toBe(2);
      const serverRandom = first(down).subarray(RECORD_HEADER + 6, RECORD_HEADER + 38);
      const block = tls12KeyBlock(suite, master, clientRandom, serverRandom);

      const afterCcs = (rs: Buffer[]) => rs.slice(rs.findIndex((r) => r[0] === ContentType.change_cipher_spec) + 1);
      const fromServer = openDirection(afterCcs(down), [['application', { suite, ...block.server }]]);
      const fromClient = openDirection(afterCcs(up), [['application', { suite, ...block.client }]]);
      const finished = { epoch: 'application', seq: 0n, type: 22, messages: [20] };
      expect(summary(fromServer)).toEqual([finished, { epoch: 'application', seq: 1n, type: 23, text: 'pong from server' }]);
      expect(summary(fromClient)).toEqual([finished, { epoch: 'application', seq: 1n, type: 23, text: 'ping from client' }]);
      for (const o of [...fromServer, ...fromClient]) {
        if (cipher === 'chacha20-poly1305') expect(o.explicitNonce).toBeUndefined();
        else expect(o.explicitNonce).toHaveLength(8);
      }

      s.inject(sealRecord({ suite, ...block.server }, BigInt(fromServer.length), ContentType.application_data, Buffer.from(' / sealed by the test')));
      await until(() => `the sealed record, client read ${JSON.stringify(s.received())}`, () => s.received().endsWith(' / sealed by the test'), 5000);
      expect(s.received()).toBe('pong from server / sealed by the test');
    } finally {
      s.close();
    }
  });
});
