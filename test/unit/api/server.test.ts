// The REST API served as batond serves it: HTTPS with the node's certificate (curl checks it
// against the cluster CA), operator tokens with scopes, requests forwarded between nodes over
// mutual TLS with no token, and request bodies refused before they can hurt. Three API servers
// of one cluster on loopback addresses; certificates from scripts/certs.sh.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClusterConfig } from '../../../controller/config/cluster.js';
import { loadPeerTls, type PeerTlsMaterial } from '../../../controller/transfer/peer-tls.js';
import { ADMIN_TOKEN, type ApiNode, apiNode, READ_TOKEN, testCluster } from '../../helpers/api-node.js';
import { makeCertificates, type TestCertificates } from '../../helpers/certs.js';

const run = promisify(execFile);
// Addresses of this file only: tests run in parallel, each file on loopback addresses of its own.
const ADDRESSES: [string, string, string] = ['127.0.11.1', '127.0.11.2', '127.0.11.3'];
const STRANGER = '127.0.11.9';

async function freePort(host: string): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, host, r));
  const { port } = s.address() as net.AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

/** Log lines a node wrote, parsed. */
function capture(): { log: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString('utf8').split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  return { log: pino({ level: 'info' }, stream), lines };
}

interface Answer {
  status: number;
  type: string;
  body: any;
}

/** An HTTPS request with node's client certificate (or none), from a chosen local address. */
function request(url: string, opts: { method?: string; headers?: Record<string, string>; body?: string | Buffer; ca: Buffer; client?: PeerTlsMaterial; from?: string }): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method: opts.method ?? 'GET', headers: opts.headers, ca: opts.ca, ...(opts.client ? { cert: opts.client.cert, key: opts.client.key } : {}), localAddress: opts.from, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let body: unknown = text;
        try {
          body = JSON.parse(text);
        } catch {
          // Prometheus text: the test reads the string.
        }
        resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body });
      });
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

describe('REST API over HTTPS with operator tokens and node certificates', () => {
  let certs: TestCertificates;
  let stateDir: string;
  let config: ClusterConfig;
  let ca: Buffer;
  const tls: Record<string, PeerTlsMaterial> = {};
  const nodes: Record<string, ApiNode> = {};
  const logs: Record<string, Array<Record<string, unknown>>> = {};
  const url = (node: 'n1' | 'n2' | 'n3', p: string) => `https://${config.nodes.find((n) => n.name === node)!.address}:${config.api.port}${p}`;
  const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

  beforeAll(async () => {
    stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-api-tls-'));
    certs = makeCertificates(['n1', 'n2', 'n3'].map((name, i) => ({ name, address: ADDRESSES[i]! })));
    config = testCluster({ stateDir, addresses: ADDRESSES, apiPort: await freePort(ADDRESSES[0]), certsDir: certs.dir });
    ca = fs.readFileSync(certs.caFile);
    for (const n of config.nodes) {
      tls[n.name] = loadPeerTls(config, n);
      const { log, lines } = capture();
      logs[n.name] = lines;
      nodes[n.name] = await apiNode({ config, self: n.name, tls: tls[n.name], log });
      await nodes[n.name]!.app.listen({ host: n.address, port: config.api.port });
    }
  });

  afterAll(async () => {
    for (const n of Object.values(nodes)) await n.close();
    certs?.dispose();
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  it('serves HTTPS with the node\'s certificate: curl trusts it through the cluster CA alone; plain HTTP gets no answer', async () => {
    const curl = (args: string[]) => run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '5', ...args]).then((r) => r.stdout, (e: { stdout: string; code: number }) => `${e.stdout} exit ${e.code}`);
    expect(await curl(['--cacert', certs.caFile, url('n2', '/v1/node')])).toBe('200');
    expect(await curl(['--cacert', certs.caFile, '-H', `authorization: Bearer ${READ_TOKEN}`, url('n2', '/v1/connections')])).toBe('200');
    // Without the cluster CA the certificate is not trusted (curl exit 60), and a plain HTTP request is no request.
    expect(await curl([url('n2', '/v1/node')])).toBe('000 exit 60');
    expect(await curl([url('n2', '/v1/node').replace('https:', 'http:')])).toMatch(/^000 exit (52|56)$/);
    // The certificate names the node's management address (IP SAN) and the node (CN, DNS SAN).
    const peer = await new Promise<{ subject: string; san: string }>((resolve, reject) => {
      const req = https.request(url('n2', '/v1/node'), { ca, agent: false }, (res) => {
        const cert = (res.socket as TLSSocket).getPeerCertificate();
        resolve({ subject: String(cert.subject.CN), san: cert.subjectaltname ?? '' });
        res.resume();
      });
      req.on('error', reject);
      req.end();
    });
    expect(peer).toEqual({ subject: 'n2', san: `DNS:n2, IP Address:${ADDRESSES[1]}` });
  });

  it('scopes: GET /v1/node and /docs are open; every other read needs a token; a read token cannot change anything', async () => {
    const get = (p: string, headers: Record<string, string> = {}) => request(url('n2', p), { ca, headers });
    expect((await get('/v1/node')).status).toBe(200);
    expect((await get('/docs/json')).status).toBe(200);
    for (const p of ['/v1/connections', '/v1/transfers', '/v1/nodes', '/v1/targets', '/v1/dvipas', '/v1/stats', '/metrics']) {
      const anonymous = await get(p);
      expect(anonymous, p).toMatchObject({ status: 401, type: 'application/problem+json; charset=utf-8', body: { title: 'E_UNAUTHORIZED', status: 401 } });
      expect((await get(p, bearer('x'.repeat(43)))).status, p).toBe(401);
      expect((await get(p, bearer(READ_TOKEN))).status, p).toBe(200);
      expect((await get(p, bearer(ADMIN_TOKEN))).status, p).toBe(200);
    }
    const before = JSON.stringify(nodes.n2!.admin.dvipas());
    const change = { method: 'POST', body: '{"address":"10.203.0.20","ports":[80]}', headers: { 'content-type': 'application/json', 'x-baton-local-only': '1' } };
    const asReader = await request(url('n2', '/v1/dvipas'), { ca, ...change, headers: { ...change.headers, ...bearer(READ_TOKEN) } });
    expect(asReader).toMatchObject({ status: 403, body: { title: 'E_FORBIDDEN', detail: 'operator grafana has scope read; POST needs admin' } });
    expect((await request(url('n2', '/v1/dvipas'), { ca, ...change })).status).toBe(401);
    expect(JSON.stringify(nodes.n2!.admin.dvipas())).toBe(before);
    // Refusals are logged without the token, and counted.
    const refusals = logs.n2!.filter((l) => l.msg === 'API request refused');
    expect(refusals.some((l) => l.reason === 'forbidden' && l.operator === 'grafana')).toBe(true);
    expect(JSON.stringify(logs.n2)).not.toContain(READ_TOKEN);
    const metrics = (await get('/metrics', bearer(READ_TOKEN))).body as string;
    expect(metrics).toMatch(/^baton_api_refused_total\{reason="unauthenticated",node="n2"\} [1-9]/m);
    expect(metrics).toMatch(/^baton_api_refused_total\{reason="forbidden",node="n2"\} 1$/m);
  });

  it('a request forwarded to another node carries no token: that node accepts it by n2\'s certificate, from n2\'s address, and logs the operator', async () => {
    // n2 is asked about a target instance of n3: it forwards the change there.
    const res = await request(url('n2', '/v1/targets/n3/line-target'), { ca, method: 'PUT', body: '{"draining":true}', headers: { 'content-type': 'application/json', ...bearer(ADMIN_TOKEN) } });
    // n3 has no such instance: its own answer, relayed, not a refusal of the caller.
    expect(res).toMatchObject({ status: 404, body: { title: 'E_NOT_FOUND' } });
    expect(String(res.body.detail)).toMatch(/line-target/);
    const atN3 = logs.n3!.filter((l) => l.msg === 'API mutation');
    expect(atN3.at(-1)).toMatchObject({ method: 'PUT', url: '/v1/targets/n3/line-target', status: 404, from: ADDRESSES[1], forwardedBy: 'n2', operator: 'alice' });
    expect(logs.n3!.filter((l) => l.msg === 'API request refused')).toEqual([]);
    expect(JSON.stringify(logs.n3)).not.toContain(ADMIN_TOKEN);
  });

  it('a node certificate is only good from its node\'s address, and only with the cluster CA; no certificate and no token is no caller', async () => {
    const add = { method: 'POST', body: '{"address":"10.203.0.21","ports":[80]}', headers: { 'content-type': 'application/json', 'x-baton-local-only': '1', 'x-baton-forwarded-by': 'n1', 'x-baton-operator': 'mallory' } };
    // n1's certificate, from n1's address: a fanned-out DVIPA add, applied.
    const ok = await request(url('n3', '/v1/dvipas'), { ca, ...add, client: tls.n1, from: ADDRESSES[0] });
    expect(ok).toMatchObject({ status: 200, body: { address: '10.203.0.21', complete: true } });
    expect(logs.n3!.filter((l) => l.msg === 'API mutation').at(-1)).toMatchObject({ forwardedBy: 'n1', operator: 'mallory', status: 200 });
    await nodes.n3!.admin.removeDvipa('10.203.0.21', true);
    const before = JSON.stringify(nodes.n3!.admin.dvipas());
    // The same certificate from another address, no certificate, a certificate of another CA.
    const wrongPlace = await request(url('n3', '/v1/dvipas'), { ca, ...add, client: tls.n1, from: STRANGER });
    expect(wrongPlace).toMatchObject({ status: 401, body: { detail: expect.stringContaining(`certificate names n1 but the connection comes from ${STRANGER}`) } });
    expect((await request(url('n3', '/v1/dvipas'), { ca, ...add, from: ADDRESSES[0] })).status).toBe(401);
    const foreign = makeCertificates([{ name: 'n1', address: ADDRESSES[0] }]);
    try {
      const res = await request(url('n3', '/v1/dvipas'), { ca, ...add, client: { ...foreign.material('n1'), ca }, from: ADDRESSES[0] });
      expect(res).toMatchObject({ status: 401, body: { detail: expect.stringContaining('the client certificate proves no node: certificate not trusted') } });
    } finally {
      foreign.dispose();
    }
    expect(JSON.stringify(nodes.n3!.admin.dvipas())).toBe(before);
  });

  it('bodies: JSON in UTF-8 only, at most 8 deep, no prototype keys; 400 problem+json that changes nothing', async () => {
    const post = (body: string | Buffer, type = 'application/json') =>
      nodes.n2!.app.inject({ method: 'POST', url: '/v1/nodes/n3/drain', headers: { 'content-type': type, ...bearer(ADMIN_TOKEN) }, payload: body });
    // n2 is no distributor: a drain goes to n1, body and all. Deeply nested, that body once made
    // the forward's JSON.stringify overflow the stack (a 500); now it never gets that far.
    const deep = await post(`${'['.repeat(30_000)}${']'.repeat(30_000)}`);
    expect(deep.statusCode).toBe(400);
    expect(deep.json()).toMatchObject({ title: 'E_VALIDATION', detail: 'body is nested deeper than 8' });
    expect((await post(`${'{"a":'.repeat(9)}0${'}'.repeat(9)}`)).json()).toMatchObject({ status: 400, detail: 'body is nested deeper than 8' });
    expect((await post(Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]))).json()).toMatchObject({ status: 400, detail: 'body is not valid UTF-8' });
    expect((await post('{"__proto__":{"polluted":1}}')).json()).toMatchObject({ status: 400, detail: 'body has a key __proto__: no body of this API has one' });
    expect((await post('{"a":[{"constructor":{"prototype":1}}]}')).json()).toMatchObject({ status: 400, detail: 'body has a key constructor: no body of this API has one' });
    expect((await post('{"a":1', 'application/json')).json()).toMatchObject({ status: 400, detail: expect.stringMatching(/^body is not JSON/) });
    expect((await post('{}', 'application/json; charset=latin1')).json()).toMatchObject({ status: 400, detail: 'body must be UTF-8 JSON (charset latin1 given)' });
    expect((await post('{}', 'text/plain')).statusCode).toBe(415);
    expect((await post(`{"a":"${'x'.repeat(70_000)}"}`)).statusCode).toBe(413);
    const metrics = await nodes.n2!.metrics.text();
    expect(metrics).toMatch(/^baton_api_refused_total\{reason="body",node="n2"\} [1-9]/m);
    expect(metrics).toMatch(/^baton_input_errors_total\{source="api",node="n2"\} 0$/m);
  });
});

describe('REST API over plain HTTP, when the cluster file asks for it (api.insecurePlaintext)', () => {
  const addresses: [string, string, string] = ['127.0.12.1', '127.0.12.2', '127.0.12.3'];
  let stateDir: string;
  let config: ClusterConfig;
  const nodes: Record<string, ApiNode> = {};
  const logs: Record<string, Array<Record<string, unknown>>> = {};

  beforeAll(async () => {
    stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-api-plain-'));
    config = testCluster({ stateDir, addresses, apiPort: await freePort(addresses[0]), plaintext: true });
    for (const n of config.nodes) {
      const { log, lines } = capture();
      logs[n.name] = lines;
      nodes[n.name] = await apiNode({ config, self: n.name, log });
      await nodes[n.name]!.app.listen({ host: n.address, port: config.api.port });
    }
  });

  afterAll(async () => {
    for (const n of Object.values(nodes)) await n.close();
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  it('warns at start; tokens and scopes apply as over HTTPS; a forwarded request carries the operator\'s own token', async () => {
    expect(logs.n2!.some((l) => l.level === 40 && String(l.msg).startsWith('REST API serves plain HTTP (api.insecurePlaintext)'))).toBe(true);
    const at = (node: string, p: string) => `http://${config.nodes.find((n) => n.name === node)!.address}:${config.api.port}${p}`;
    expect((await fetch(at('n2', '/v1/connections'))).status).toBe(401);
    expect((await fetch(at('n2', '/v1/connections'), { headers: { authorization: `Bearer ${READ_TOKEN}` } })).status).toBe(200);
    const change = { method: 'PUT', body: '{"draining":true}', headers: { 'content-type': 'application/json' } };
    expect((await fetch(at('n2', '/v1/targets/n3/line-target'), { ...change, headers: { ...change.headers, authorization: `Bearer ${READ_TOKEN}` } })).status).toBe(403);
    // No certificate to prove anything with: n3 authorises the forwarded request by alice's token.
    const res = await fetch(at('n2', '/v1/targets/n3/line-target'), { ...change, headers: { ...change.headers, authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(res.status).toBe(404);
    expect(logs.n3!.filter((l) => l.msg === 'API mutation').at(-1)).toMatchObject({ method: 'PUT', status: 404, from: addresses[1], operator: 'alice' });
    expect(logs.n3!.filter((l) => l.msg === 'API mutation').at(-1)).not.toHaveProperty('forwardedBy');
  });
});
