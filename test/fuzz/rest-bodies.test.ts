// Bad input on the REST admin API: bodies, path parameters, query strings, tokens and headers of
// every route, against a real API server (createApiServer, driven with app.inject) on a real
// AgentAdmin built from real parts of a node that is not the distributor. Bodies include hostile
// JSON (nesting 10^5 deep, huge numbers, long strings, prototype keys, NUL bytes, invalid UTF-8)
// in every position of every route's body. Every answer must be a 2xx JSON or a 4xx
// problem+json, never a 5xx; a request without a known token is a 401 (but GET /v1/node), a read
// token on a change a 403; and the node's state must not change, except for what a valid request
// legitimately does, which is accounted for request by request:
//   - a request this node does not own is forwarded to the node that does (the distributor n1 or
//     the instance's node n3): two recording HTTPS servers on 127.0.0.2/127.0.0.3 with n1's and
//     n3's certificates stand in for them, and every request they receive must be one that passed
//     this node's validation, made with n2's client certificate and no token;
//   - a move of the one connection a target application here serves reaches that application (a
//     real one on a real Channel, which refuses it: 409), and counts one failed operator move;
//   - a fanned-out DVIPA add (x-baton-local-only, as the distributor sends it) adds the DVIPA here;
//     the test checks it is exactly the one asked for and takes it away again.
//
// The node is test/helpers/api-node.ts's: the DVIPA set's AddressHolder records hold/release
// instead of running `ip`: this is the unit-level view of the API (what the kernel side does is
// covered by the lab tests), so it needs no root.
import fs from 'node:fs';
import type http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { TLSSocket } from 'node:tls';
import fc from 'fast-check';
import type { FastifyInstance } from 'fastify';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentAdmin } from '../../controller/agent/admin.js';
import { connectionId, flowOf, parseConnectionId } from '../../controller/flow.js';
import { type AddressHolder, DvipaSpecSchema } from '../../controller/agent/dvipa-set.js';
import type { TransferLog } from '../../controller/agent/transfer-log.js';
import { MoveBodySchema, TargetChangeSchema } from '../../controller/api/schemas.js';
import { BODY_LIMIT } from '../../controller/api/body.js';
import { parseTokenFile, tokenLine } from '../../controller/api/token.js';
import type { TargetDirectory } from '../../controller/control/directory.js';
import type { ControlServer } from '../../controller/control/server.js';
import { createLogger } from '../../controller/log.js';
import type { AgentMetrics } from '../../controller/metrics/metrics.js';
import { Channel } from '../../controller/transfer/channel.js';
import { Accepts, connToWire } from '../../controller/transfer/messages.js';
import type { TargetApp, TargetRelay } from '../../controller/transfer/target-relay.js';
import type { HandoffSockets } from '../../controller/transfer/sockets.js';
import { loadPeerTls } from '../../controller/transfer/peer-tls.js';
import { apiNode, testCluster } from '../helpers/api-node.js';
import { fromWire } from '../helpers/wire.js';
import { makeCertificates } from '../helpers/certs.js';
import { sampleState } from '../helpers/state.js';
import { broken, checkAsync, embed, hostileFragment, PROTO_KEYS, prototypeFingerprint, runs, SEED, valid, watchProcessErrors } from './fuzz.js';

const log = createLogger({}, 'silent');
const TOKEN = 'fuzz-admin-token-0123456789abcdefghij';
const READ_TOKEN = 'fuzz-read-token-0123456789abcdefghijk';
const OPERATORS = parseTokenFile(`${tokenLine({ name: 'fuzz-admin', scope: 'admin' }, TOKEN)}\n${tokenLine({ name: 'fuzz-read', scope: 'read' }, READ_TOKEN)}\n`, 'fuzz-tokens');
const NODE_ADDRESSES = { n1: '127.0.0.2', n2: '127.0.0.4', n3: '127.0.0.3' } as const;
const SERVED = sampleState();
const SERVED_CONN_ID = 'n1.fuzz0001';
const SERVED_ID = connectionId(flowOf(SERVED));

const moveBodyOk = TypeCompiler.Compile(MoveBodySchema);
const targetChangeOk = TypeCompiler.Compile(TargetChangeSchema);
const dvipaSpecOk = TypeCompiler.Compile(DvipaSpecSchema);
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

let inputs = 0;
const watch = watchProcessErrors();
const untouched = prototypeFingerprint();

interface Recorded {
  node: string;
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
  /** The client certificate's node name, if it chained to the cluster CA. */
  client: string | undefined;
  from: string | undefined;
}

/**
 * Stands in for another node's API, over HTTPS with that node's certificate: remembers what it
 * was sent and by which client certificate, and answers as a node that has none of it.
 */
function recordingPeer(node: string, seen: Recorded[], tls: { ca: Buffer; cert: Buffer; key: Buffer }): https.Server {
  return https.createServer({ ...tls, requestCert: true, rejectUnauthorized: false }, (req, res) => {
    let body = '';
    const socket = req.socket as TLSSocket;
    const client = socket.authorized ? String(socket.getPeerCertificate().subject?.CN) : undefined;
    req.on('data', (c: Buffer) => (body += c.toString('utf8')));
    req.on('end', () => {
      seen.push({ node, method: req.method ?? '', url: req.url ?? '', headers: req.headers, body, client, from: socket.remoteAddress });
      res.writeHead(404, { 'content-type': 'application/problem+json' });
      res.end(JSON.stringify({ type: 'https://baton.invalid/problems/E_NOT_FOUND', title: 'E_NOT_FOUND', status: 404, detail: `${node} (fuzz peer) holds none of it`, instance: req.url }));
    });
  });
}

const listenOn = (server: net.Server | https.Server, host: string, port: number) =>
  new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve((server.address() as net.AddressInfo).port));
  });

describe('REST API under fuzzed bodies, parameters, query strings and headers', () => {
  const forwarded: Recorded[] = [];
  const appMoves: Array<{ connId: string; node: string }> = [];
  const holderCalls: string[] = [];
  const holder: AddressHolder = {
    hold: async (a) => void holderCalls.push(`hold ${a}`),
    release: async (a) => void holderCalls.push(`release ${a}`),
  };
  const closers: Array<() => unknown> = [];
  let app: FastifyInstance;
  let admin: AgentAdmin;
  let metrics: AgentMetrics;
  let relay: TargetRelay;
  let directory: TargetDirectory;
  let control: ControlServer;
  let transfers: TransferLog;
  let stateFile: string;
  /** The connections a target application here serves, by id. */
  const served = () => relay.page({ limit: 100 }).entries.map((c) => connectionId(c.flow));

  /** Two ends of a loopback TCP connection. */
  async function socketPair(): Promise<[net.Socket, net.Socket]> {
    const server = net.createServer();
    const port = await listenOn(server, '127.0.0.1', 0);
    const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
    const client = net.connect(port, '127.0.0.1');
    const other = await accepted;
    server.close();
    await new Promise<void>((r) => (client.connecting ? client.once('connect', () => r()) : r()));
    return [other, client];
  }

  beforeAll(async () => {
    const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-fuzz-api-'));
    closers.push(() => fs.rmSync(stateDir, { recursive: true, force: true }));
    const certs = makeCertificates(Object.entries(NODE_ADDRESSES).map(([name, address]) => ({ name, address })));
    closers.push(() => certs.dispose());
    // Every node serves its API on one port: find one free on both peer addresses.
    let apiPort = 0;
    for (let attempt = 0; ; attempt++) {
      const n1 = recordingPeer('n1', forwarded, certs.material('n1'));
      const n3 = recordingPeer('n3', forwarded, certs.material('n3'));
      try {
        apiPort = await listenOn(n1, NODE_ADDRESSES.n1, 0);
        await listenOn(n3, NODE_ADDRESSES.n3, apiPort);
        closers.push(() => n1.close(), () => n3.close());
        break;
      } catch (err) {
        n1.close();
        n3.close();
        if (attempt >= 4) throw err;
      }
    }
    // n2 is the node under test; n1 and n3 are the recording peers. Loopback only.
    const config = testCluster({ stateDir, addresses: [NODE_ADDRESSES.n1, NODE_ADDRESSES.n2, NODE_ADDRESSES.n3], apiPort, certsDir: certs.dir, dvipa: SERVED.local });
    const self = config.nodes[1]!;

    // The socket steps are the lab's business: here the served connection only has to exist.
    const noSockets = { reinstate: () => 99, goLive: () => undefined, release: () => undefined, discard: () => undefined } as unknown as HandoffSockets;
    const node = await apiNode({ config, self: 'n2', operators: OPERATORS, tls: loadPeerTls(config, self), holder, sockets: noSockets, log });
    ({ app, admin, metrics, relay, directory, control, transfers, stateFile } = node);
    closers.push(() => node.close());
    holderCalls.length = 0;
    // Another node's report, so the read views and a drain have something to show.
    directory.setRemote('n3', [{ node: 'n3', app: 'line-target', instance: 'line-target', port: 7000, capacity: 10, load: 2, weight: 100, draining: false }]);
    const flow = { family: 4 as const, clientAddress: '10.203.0.100', clientPort: 40100, vipAddress: '10.203.0.10', vipPort: 7000 };
    transfers.add({ connId: 'n2.a', flow, from: 'router', target: 'n3', client: '10.203.0.100:40100', outcome: 'done', timings: { exportUs: 1, offerRttUs: 1, importUs: 2, freezeUs: 3, deltaUs: 1, commitRttUs: 4, routeUs: 5, totalUs: 16 } });
    transfers.add({ connId: 'n2.b', flow, from: 'router', target: 'n3', client: '10.203.0.100:40100', outcome: 'failed', step: 'offer', reason: 'refused' });

    // A target application on this node serving one transferred connection, reached through real
    // channels: it refuses every move, as an application with no safe point would.
    const [peerEnd, peerFar] = await socketPair();
    const [agentEnd, appEnd] = await socketPair();
    peerFar.resume();
    const peer = new Channel(peerEnd, Accepts.agentFromPeer, log);
    const agentSide = new Channel(agentEnd, Accepts.agentFromTarget, log);
    const appSide = new Channel(appEnd, Accepts.target, log);
    const target: TargetApp = { name: 'line-target', instance: 'line-target', ports: [7000], channel: agentSide, descriptors: { send: () => undefined }, decides: false, capacity: 0 };
    relay.register(target);
    agentSide.on('message', (d) => {
      if (d.msg.type === 'moved') relay.fromApp(target, { msg: d.msg, blobs: d.blobs });
    });
    appSide.on('message', (d) => {
      if (d.msg.type !== 'move') return;
      appMoves.push({ connId: d.msg.connId, node: d.msg.node });
      appSide.send('moved', { connId: d.msg.connId, ok: false, reason: 'fuzz application: no safe point' });
    });
    // From the distributor, as its peer link authenticated it.
    const { conn, queues } = connToWire(SERVED);
    relay.fromPeer(peer, fromWire('offer', { connId: SERVED_CONN_ID, from: 'n1', target: { node: 'n2', port: 7000 }, conn, appState: {} }, Accepts.agentFromPeer, [...queues, Buffer.alloc(0), Buffer.alloc(0)]), 'n1');
    relay.fromPeer(peer, fromWire('live', { connId: SERVED_CONN_ID }, Accepts.agentFromPeer), 'n1');
    closers.push(() => peer.close(), () => agentSide.close(), () => appSide.close(), () => peerFar.destroy());
    expect(served()).toEqual([SERVED_ID]);
  });

  afterAll(async () => {
    watch.stop();
    for (const c of closers.reverse()) await c();
    console.log(`REST fuzz: ${inputs} requests, seed ${SEED}`);
  });

  async function failedMoves(): Promise<number> {
    const m = await metrics.registry.getSingleMetric('baton_operator_moves_total')!.get();
    return m.values.filter((v) => v.labels.outcome === 'failed').reduce((a, v) => a + v.value, 0);
  }

  /** Everything a request could change on this node, apart from what is accounted separately. */
  const snapshot = () =>
    JSON.stringify({
      targets: admin.targets(),
      dvipas: admin.dvipas(),
      registrations: control.counts(),
      file: fs.existsSync(stateFile) ? fs.readFileSync(stateFile, 'utf8') : null,
      holder: holderCalls,
      connections: relay.page({ limit: 100 }).entries,
      transfers: transfers.recent(),
      directory: directory.seq,
    });

  // ---- generators -------------------------------------------------------------------------------

  const junk = fc.oneof(
    fc.string({ maxLength: 20, unit: 'binary' }),
    fc.constantFrom('', '..', '.', '%', '%zz', '%E0%A4%A', '%00', '%2F', '%2e%2e', '\u0000', 'a/b', ' ', '\\', '?', '#', '%ff', '~'),
    fc.constantFrom(...PROTO_KEYS),
    fc.constant('a'.repeat(200)),
  );
  /**
   * A path segment: usually encoded as a client would, sometimes raw. Raw ones lose what would
   * change the path's shape, and backslashes: inject parses URLs as a browser does, where "/\"
   * starts a host, so it cannot send them (a real server answers such a path 404 like any other).
   */
  const segment = (good: fc.Arbitrary<string>) =>
    fc.tuple(fc.oneof({ weight: 3, arbitrary: good }, { weight: 2, arbitrary: junk }), fc.boolean()).map(([s, raw]) => (raw ? s.replace(/[?#/\\]/g, '') : encodeURIComponent(s)));

  const nodeName = fc.oneof({ weight: 4, arbitrary: fc.constantFrom('n1', 'n2', 'n3') }, fc.constantFrom('n9', 'N2', 'n2 ', 'n2.', '-n2', 'a'.repeat(63), 'a'.repeat(64)), fc.stringMatching(NAME));
  const instance = fc.oneof(fc.constantFrom('line-target', 'http-target', 'line-target '), fc.stringMatching(NAME));
  const ipv4 = fc.tuple(fc.nat(300), fc.nat(255), fc.nat(255), fc.nat(300)).map((p) => p.join('.'));
  const port = fc.oneof(fc.integer({ min: 0, max: 70000 }), fc.constant(7000));
  const connId = fc.oneof(
    { weight: 3, arbitrary: fc.constant(SERVED_ID) },
    fc.tuple(ipv4, port, ipv4, port).map(([a, p, b, q]) => `${a}:${p}_${b}:${q}`),
    fc.tuple(fc.ipV6(), port, fc.ipV6(), port).map(([a, p, b, q]) => `[${a}]:${p}_[${b}]:${q}`),
    fc.tuple(fc.ipV4(), port, fc.ipV6(), port).map(([a, p, b, q]) => `${a}:${p}_[${b}]:${q}`),
    fc.constant(`${SERVED_ID}_x`),
    fc.constant(SERVED_ID.replace('_', '__')),
  );
  const dvipaAddress = fc.oneof(fc.constantFrom('10.203.0.10', '10.203.0.20', '127.0.0.2', '0.0.0.0', '255.255.255.255', '1.2.3', '01.2.3.4'), ipv4, fc.ipV4());

  /** A body the parser must refuse wherever it appears: too deep, not UTF-8, a raw NUL, a prototype key. */
  const MUST_REFUSE = /^deep-|^invalid UTF-8|^raw NUL|^proto key/;
  /** A hostile fragment (fuzz.ts) as the whole body or as the value of one of a valid body's keys. */
  const hostileBody = (schema: Parameters<typeof valid>[0]): fc.Arbitrary<Body> =>
    fc.tuple(valid(schema), hostileFragment(BODY_LIMIT)).chain(([v, fragment]) =>
      fc.constantFrom(undefined, ...Object.keys(v as object)).map((key) => ({ bytes: embed(v as Record<string, unknown>, key, fragment), hostile: fragment.kind })),
    );
  /** A JSON body: what the schema wants, the same broken at one place, hostile JSON, or anything at all. */
  const jsonBody = (schema: Parameters<typeof valid>[0], tweak: (v: Record<string, unknown>) => fc.Arbitrary<Record<string, unknown>> = fc.constant): fc.Arbitrary<string | Body> =>
    fc.oneof(
      { weight: 2, arbitrary: hostileBody(schema) },
      { weight: 3, arbitrary: valid(schema).chain((v) => tweak(v as Record<string, unknown>)).map((v) => JSON.stringify(v)) },
      { weight: 2, arbitrary: valid(schema).chain((v) => broken(schema, v as Record<string, unknown>)).map((b) => JSON.stringify(b.value)) },
      fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
      fc.constantFrom('', '{', 'null', '[]', '"n3"', '{"node":"n3"', '{"__proto__":{"polluted":1},"node":"n3"}', '{"constructor":{"prototype":{"polluted":1}},"weight":1}', 'node=n3', '\u0000'),
      fc.constant(`{"node":"${'n'.repeat(70 * 1024)}"}`),
    );
  const moveBody = jsonBody(MoveBodySchema, (v) => fc.oneof(fc.constant(v), nodeName.map((node) => ({ ...v, node }))));
  const targetBody = jsonBody(TargetChangeSchema);
  const dvipaBody = jsonBody(DvipaSpecSchema, (v) => fc.oneof(fc.constant(v), dvipaAddress.map((address) => ({ ...v, address }))));
  const anyBody = fc.oneof(
    { weight: 4, arbitrary: fc.constant(undefined) },
    fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify(v)),
    junk,
    hostileFragment(BODY_LIMIT).map((f): Body => ({ bytes: f.bytes, hostile: f.kind })),
  );

  const contentType = fc.oneof(
    { weight: 6, arbitrary: fc.constant('application/json') },
    fc.constantFrom(undefined, 'application/json; charset=utf-8', 'text/plain', 'application/x-www-form-urlencoded', 'application/problem+json', 'multipart/form-data; boundary=x', 'application/json; charset=latin1', 'APPLICATION/JSON', '*/*', 'x'),
  );
  const auth = fc.oneof(
    { weight: 8, arbitrary: fc.constant(`Bearer ${TOKEN}`) },
    { weight: 2, arbitrary: fc.constant(`Bearer ${READ_TOKEN}`) },
    fc.constantFrom(undefined, '', 'Bearer', `Bearer ${TOKEN} `, `bearer ${TOKEN}`, `Bearer ${TOKEN}x`, `Bearer ${TOKEN.slice(1)}`, `Basic ${TOKEN}`, `Bearer  ${TOKEN}`),
  );
  const queryValue = fc.oneof({ weight: 3, arbitrary: fc.constantFrom('1', '0', '-1', '100', '10000', '10001', '1e3', '1.5', 'true', 'false', 'frozen', 'forward', 'served', 'released', 'n2', '10.203.0.100', '') }, junk);
  const query = (keys: string[]) =>
    fc.oneof(
      { weight: 4, arbitrary: fc.array(fc.tuple(fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...keys) }, junk), queryValue), { maxLength: 4 }).map((pairs) => {
        const q = new URLSearchParams();
        for (const [k, v] of pairs) q.append(k, v);
        const s = q.toString();
        return s ? `?${s}` : '';
      }) },
      junk.map((j) => `?${j}`),
    );

  /** Bytes sent as they are, and the kind of hostile fragment they hold (fuzz.ts hostileFragment). */
  interface Body {
    bytes: Buffer;
    hostile: string;
  }

  interface Req {
    route: string;
    method: string;
    url: string;
    body?: string | Body;
    contentType?: string;
    auth?: string;
    localOnly?: boolean;
    forwardedBy?: string;
  }

  const mutation = (route: string, method: string, url: fc.Arbitrary<string>, body: fc.Arbitrary<string | Body | undefined>, localOnly = false) =>
    fc.record({ url, body, contentType, auth, localOnly: localOnly ? fc.boolean() : fc.constant(false), forwardedBy: fc.option(fc.constantFrom('n1', 'n3'), { freq: 10, nil: undefined }) }).map(
      (r): Req => ({ route, method, ...r }),
    );
  const read = (route: string, url: fc.Arbitrary<string>) => fc.record({ url, auth }).map((r): Req => ({ route, method: 'GET', ...r }));

  const request: fc.Arbitrary<Req> = fc.oneof(
    { weight: 4, arbitrary: mutation('move', 'POST', segment(connId).map((id) => `/v1/connections/${id}/transfer`), moveBody) },
    { weight: 3, arbitrary: mutation('target', 'PUT', fc.tuple(segment(nodeName), segment(instance)).map(([n, i]) => `/v1/targets/${n}/${i}`), targetBody) },
    { weight: 2, arbitrary: mutation('drain', 'POST', segment(nodeName).map((n) => `/v1/nodes/${n}/drain`), anyBody) },
    { weight: 3, arbitrary: mutation('dvipa-add', 'POST', fc.constant('/v1/dvipas'), dvipaBody, true) },
    { weight: 2, arbitrary: mutation('dvipa-remove', 'DELETE', fc.tuple(segment(dvipaAddress), query(['force'])).map(([a, q]) => `/v1/dvipas/${a}${q}`), anyBody, true) },
    { weight: 3, arbitrary: read('connections', query(['state', 'node', 'client', 'limit', 'offset']).map((q) => `/v1/connections${q}`)) },
    { weight: 2, arbitrary: read('transfers', query(['limit']).map((q) => `/v1/transfers${q}`)) },
    read('views', fc.tuple(fc.constantFrom('/v1/node', '/v1/nodes', '/v1/dvipas', '/v1/targets', '/v1/stats'), query(['limit', 'x'])).map(([p, q]) => p + q)),
    fc.record({ route: fc.constant('elsewhere'), method: fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'), url: fc.tuple(fc.constantFrom('/v1/', '/v1/connections/', '/v1/targets/n2', '/v2/node', '/'), segment(junk)).map(([a, b]) => a + b), auth }),
    // Scraping costs a millisecond or two: rarely.
    { weight: 1, arbitrary: auth.map((a): Req => ({ route: 'metrics', method: 'GET', url: '/metrics?x=%zz', auth: a })) },
  );

  // ---- the oracle -------------------------------------------------------------------------------

  const parses = (id: string) => {
    try {
      parseConnectionId(id);
      return true;
    } catch {
      return false;
    }
  };

  /** A request another node received must be one this node had validated and may pass on. */
  function justified(r: Recorded): string | undefined {
    // No token crosses between nodes: n2's certificate, from n2's address, names the caller.
    if (r.headers.authorization !== undefined) return 'forwarded with an Authorization header';
    if (r.client !== 'n2' || r.from !== NODE_ADDRESSES.n2) return `forwarded with certificate ${r.client} from ${r.from}, not n2's from ${NODE_ADDRESSES.n2}`;
    if (r.headers['x-baton-operator'] !== 'fuzz-admin') return 'forwarded without naming the operator';
    if (r.headers['x-baton-forwarded-by'] !== 'n2') return 'forwarded without naming n2';
    const p = decodeURIComponent(new URL(r.url, 'http://peer').pathname);
    const body = r.body ? (JSON.parse(r.body) as unknown) : undefined;
    let m: RegExpExecArray | null;
    if (r.method === 'POST' && (m = /^\/v1\/connections\/(.+)\/transfer$/.exec(p))) return r.node === 'n1' && moveBodyOk.Check(body) && m[1] !== SERVED_ID && parses(m[1]!) ? undefined : 'move';
    if (r.method === 'PUT' && (m = /^\/v1\/targets\/([^/]+)\/([^/]+)$/.exec(p))) return m[1] === r.node && NAME.test(m[2]!) && targetChangeOk.Check(body) ? undefined : 'target';
    if (r.method === 'POST' && (m = /^\/v1\/nodes\/([^/]+)\/drain$/.exec(p))) return r.node === 'n1' && (m[1] === 'n2' || m[1] === 'n3') ? undefined : 'drain';
    if (r.method === 'POST' && p === '/v1/dvipas') return r.node === 'n1' && dvipaSpecOk.Check(body) ? undefined : 'dvipa add';
    if (r.method === 'DELETE' && /^\/v1\/dvipas\/[0-9.]{7,15}$/.test(p)) return r.node === 'n1' ? undefined : 'dvipa remove';
    return 'not a forwardable route';
  }

  it('answers 2xx JSON or 4xx problem+json, never 5xx, and changes nothing it should not', async () => {
    const statuses = new Map<number, number>();
    const byRoute = new Map<string, number>();
    let accounted = { forwarded: 0, moves: 0, dvipas: 0 };
    let hostileRefused = 0;
    await checkAsync(
      'REST: fuzzed requests',
      fc.asyncProperty(request, async (req) => {
        inputs++;
        const before = snapshot();
        const movesBefore = await failedMoves();
        const appMovesBefore = appMoves.length;
        const forwardedBefore = forwarded.length;
        const headers: Record<string, string> = {};
        if (req.auth !== undefined) headers.authorization = req.auth;
        if (req.contentType !== undefined && req.body !== undefined) headers['content-type'] = req.contentType;
        if (req.localOnly) headers['x-baton-local-only'] = '1';
        if (req.forwardedBy) headers['x-baton-forwarded-by'] = req.forwardedBy;
        const payload = typeof req.body === 'object' ? req.body.bytes : req.body;
        const res = await app.inject({ method: req.method as 'GET', url: req.url, headers, ...(payload !== undefined ? { payload } : {}) });
        const shown = typeof req.body === 'object' ? `[${req.body.hostile}] ${req.body.bytes.subarray(0, 200).toString('utf8')}` : (req.body?.slice(0, 200) ?? '');
        const what = `${req.method} ${req.url} ${shown} → ${res.statusCode} ${res.body.slice(0, 300)}`;
        statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
        const key = `${req.route} ${res.statusCode}`;
        byRoute.set(key, (byRoute.get(key) ?? 0) + 1);

        expect(res.statusCode, what).toBeLessThan(500);
        const type = String(res.headers['content-type'] ?? '');
        if (res.statusCode >= 400) {
          expect(type, what).toMatch(/^application\/problem\+json/);
          const problem = JSON.parse(res.body) as Record<string, unknown>;
          expect(problem, what).toMatchObject({ type: expect.any(String), title: expect.any(String), status: res.statusCode, detail: expect.any(String), instance: expect.any(String) });
          if (res.statusCode === 401) expect(res.headers['www-authenticate'], what).toMatch(/^Bearer/);
        } else if (req.route === 'metrics') {
          expect(type, what).toMatch(/^text\/plain/);
        } else {
          expect(res.statusCode, what).toBeGreaterThanOrEqual(200);
          expect(type, what).toMatch(/^application\/json/);
          JSON.parse(res.body);
        }
        const mutating = req.method !== 'GET' && req.method !== 'OPTIONS' && req.method !== 'HEAD';
        const title = res.statusCode >= 400 ? (JSON.parse(res.body) as { title?: string }).title : undefined;
        // Only the router's own refusals (a malformed URL) come before the access check.
        const routerRefusal = title === 'FST_ERR_BAD_URL' || title === 'FST_ERR_MAX_PARAM_LENGTH';
        const open = /^\/v1\/node(\?|$)/.test(req.url) && req.method === 'GET';
        const known = req.auth === `Bearer ${TOKEN}` || req.auth === `Bearer ${READ_TOKEN}`;
        if (!open && !known) expect(res.statusCode === 401 || routerRefusal, `no known token: 401\n${what}`).toBe(true);
        if (mutating && req.auth === `Bearer ${READ_TOKEN}`) expect(res.statusCode === 403 || routerRefusal, `a read token on a change: 403\n${what}`).toBe(true);
        // A body the parser must refuse never reaches a handler, wherever in the body it is.
        const contentTypeOk = req.contentType !== undefined && /^application\/json(;\s*charset=utf-8)?$/i.test(req.contentType);
        if (typeof req.body === 'object' && MUST_REFUSE.test(req.body.hostile) && req.auth === `Bearer ${TOKEN}` && contentTypeOk && !routerRefusal && res.statusCode !== 404) {
          expect([400, 413], `hostile body refused\n${what}`).toContain(res.statusCode);
          hostileRefused++;
        }

        // What a valid request may legitimately do, accounted one by one.
        for (const r of forwarded.slice(forwardedBefore)) {
          expect(justified(r), `${what}\nforwarded to ${r.node}: ${r.method} ${r.url} ${r.body}`).toBeUndefined();
          expect(req.forwardedBy, 'a request already forwarded is never forwarded again').toBeUndefined();
          accounted.forwarded++;
        }
        const moved = appMoves.slice(appMovesBefore);
        for (const m of moved) {
          expect(m, what).toEqual({ connId: SERVED_CONN_ID, node: 'n3' });
          expect(res.statusCode, what).toBe(409);
          accounted.moves++;
        }
        expect(await failedMoves(), what).toBe(movesBefore + moved.length);
        if (req.route === 'dvipa-add' && res.statusCode === 200 && req.localOnly) {
          // Ports as fastify coerced them ("80" → 80, 80 → [80]): the address is what identifies it.
          const asked = JSON.parse(typeof req.body === 'object' ? req.body.bytes.toString('utf8') : req.body!) as { address: string };
          const added = admin.dvipas().filter((d) => !JSON.parse(before).dvipas.some((b: { address: string }) => b.address === d.address));
          expect(added, what).toMatchObject([{ address: asked.address, source: 'api', distributor: 'n1' }]);
          expect(dvipaSpecOk.Check({ address: added[0]!.address, ports: added[0]!.ports }), what).toBe(true);
          expect(holderCalls.at(-1), what).toBe(`hold ${asked.address}`);
          await admin.removeDvipa(asked.address, true);
          holderCalls.splice(holderCalls.length - 2, 2);
          fs.rmSync(stateFile, { force: true });
          if (JSON.parse(before).file !== null) fs.writeFileSync(stateFile, JSON.parse(before).file as string);
          accounted.dvipas++;
        }
        expect(snapshot(), what).toBe(before);
        expect(prototypeFingerprint(), what).toBe(untouched);
      }),
      runs(8_000),
    );
    console.log(`REST fuzz statuses ${JSON.stringify(Object.fromEntries([...statuses].sort()))}; accounted ${JSON.stringify(accounted)}, hostile bodies refused ${hostileRefused}\n${JSON.stringify(Object.fromEntries([...byRoute].sort()))}`);
    // The generators must reach every kind of outcome, or the test proves less than it says.
    expect(accounted.forwarded).toBeGreaterThan(0);
    expect(accounted.moves).toBeGreaterThan(0);
    expect(accounted.dvipas).toBeGreaterThan(0);
    expect(hostileRefused).toBeGreaterThan(0);
    for (const s of [200, 400, 401, 403, 404, 409, 413, 415]) expect(statuses.get(s) ?? 0, `status ${s}`).toBeGreaterThan(0);
  });

  it('nothing escaped: no uncaught exception, no unhandled rejection', () => {
    expect(watch.errors).toEqual([]);
    expect(inputs).toBeGreaterThanOrEqual(runs(8_000));
  });
});
