// HTTP routing application (DVIPA port 80), on the distributor. It answers a connection's first
// request with 401 and a Digest challenge, checks the credentials of the next request on the same
// connection, picks the user's node and hands the connection off with that request as peeked
// bytes: the target's stock http.Server answers it. Users (examples/README.md): alice/wonderland
// is served by n2, bob/builder by n3.
// With --tls-cert and --tls-key it serves HTTPS the same way: TLS is terminated here (acceptTls),
// and each connection is handed off with its TLS session, which the target's kernel takes over
// (kernel TLS): the target's http.Server reads and writes plaintext, the client keeps its session.
// Until the handoff, the routing-phase limits apply (--routing-*): 408 to a client that says
// nothing or too slowly, 413 past the byte bound, 429 past the per-address bound, 503 past the
// total, each followed by a close.
import fs from 'node:fs';
import type net from 'node:net';
import tls from 'node:tls';
import { acceptTls, type LimitReason, peerText, RouterClient, RoutingGuard } from '../../controller/sdk/index.js';
import { createLogger } from '../../controller/log.js';
import { exampleOptions, listenOnDvipas, targetsFor, withRetry } from '../common.js';
import { challenge, newNonce, parseAuthorization, verify } from './digest.js';

const MAX_HEAD = 16 * 1024;
const MAX_ATTEMPTS = 3;
const PASSWORDS = new Map([
  ['alice', 'wonderland'],
  ['bob', 'builder'],
]);
// A client may need every attempt, each a head and a body of up to MAX_HEAD, before the decision.
const opts = exampleOptions('http-router', 80, { maxBytes: (MAX_ATTEMPTS + 1) * 2 * MAX_HEAD });
const log = createLogger({ app: opts.tls ? 'https-router' : 'http-router', node: opts.node });
const secureContext = opts.tls ? tls.createSecureContext({ cert: fs.readFileSync(opts.tls.cert), key: fs.readFileSync(opts.tls.key) }) : undefined;
const router = await withRetry('connect to batond', () =>
  RouterClient.connect({ socketPath: opts.agent, name: opts.tls ? 'https-router' : 'http-router', logger: log, ports: [opts.port], control: opts.control }),
);
router.on('targets', (list) => log.info({ event: 'targets', targets: list.filter((t) => t.port === opts.port) }, 'target list changed'));

interface Head {
  method: string;
  target: string;
  headers: Map<string, string>;
  length: number;
}

/** Parses one request head and its Content-Length body; undefined while incomplete. */
function parseRequest(buf: Buffer): Head | undefined | 'bad' {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) return buf.length > MAX_HEAD ? 'bad' : undefined;
  const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
  const m = /^([A-Z]+) (\S+) HTTP\/1\.[01]$/.exec(lines[0] ?? '');
  if (!m) return 'bad';
  const headers = new Map<string, string>();
  for (const l of lines.slice(1)) {
    const i = l.indexOf(':');
    if (i <= 0) return 'bad';
    headers.set(l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim());
  }
  const bodyLength = Number(headers.get('content-length') ?? '0');
  if (!Number.isInteger(bodyLength) || bodyLength < 0 || bodyLength > MAX_HEAD) return 'bad';
  const length = end + 4 + bodyLength;
  return buf.length >= length ? { method: m[1]!, target: m[2]!, headers, length } : undefined;
}

function response(status: string, headers: Record<string, string>, body: string): string {
  const head = Object.entries({ ...headers, 'Content-Type': 'text/plain', 'Content-Length': String(Buffer.byteLength(body)) })
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
  return `HTTP/1.1 ${status}\r\n${head}\r\n${body}`;
}

function reply(socket: net.Socket, status: string, headers: Record<string, string>, body: string): void {
  socket.write(response(status, headers, body));
}

const LIMIT_REPLIES: Record<LimitReason, [string, Record<string, string>, string]> = {
  idle: ['408 Request Timeout', {}, 'request not received in time\n'],
  deadline: ['408 Request Timeout', {}, 'request not received in time\n'],
  'too-many-bytes': ['413 Content Too Large', {}, 'too much data before the request was decided\n'],
  'per-source': ['429 Too Many Requests', { 'Retry-After': '1' }, 'too many connections from your address\n'],
  total: ['503 Service Unavailable', { 'Retry-After': '1' }, 'too many connections\n'],
};
const guard = new RoutingGuard({
  ...opts.routing,
  logger: log,
  reply: (reason) => {
    const [status, headers, body] = LIMIT_REPLIES[reason];
    return response(status, { ...headers, Connection: 'close' }, body);
  },
});

function converse(raw: net.Socket): void {
  const client = peerText(raw);
  // Over TLS the conversation is on the TLS socket; the guard keeps watching the TCP one.
  const socket = secureContext ? acceptTls(raw, { secureContext }) : raw;
  const nonce = newNonce();
  let attempts = 0;
  let buffered: Buffer = Buffer.alloc(0);
  log.debug({ client, event: 'accepted' }, 'connection accepted');
  socket.on('error', (err) => log.warn({ client, err: err.message }, 'client socket error'));

  const onData = (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    for (;;) {
      const req = parseRequest(buffered);
      if (req === undefined) return;
      if (req === 'bad') {
        reply(socket, '400 Bad Request', { Connection: 'close' }, 'bad request\n');
        socket.end();
        socket.off('data', onData);
        return;
      }
      const user = verify(req.method, parseAuthorization(req.headers.get('authorization')) ?? {}, nonce, PASSWORDS);
      log.debug({ client, event: 'exchange', request: `${req.method} ${req.target}`, user: user ?? null }, 'request');
      const node = user ? opts.users.get(user) : undefined;
      if (!user || !node) {
        buffered = buffered.subarray(req.length);
        if (++attempts > MAX_ATTEMPTS) {
          reply(socket, '403 Forbidden', { Connection: 'close' }, 'too many attempts\n');
          socket.end();
          socket.off('data', onData);
          return;
        }
        reply(socket, '401 Unauthorized', { 'WWW-Authenticate': challenge(nonce) }, 'authentication required\n');
        continue;
      }
      // The authenticated request (and anything pipelined after it) is replayed to the target.
      const peeked = buffered;
      buffered = Buffer.alloc(0);
      socket.off('data', onData);
      // A target application instance (claims 3, 9): the user's own node first; if it refuses, the
      // other instances, least loaded first (claim 16); if every one refuses, a 503 on the
      // connection this node still owns (claim 17).
      const targets = targetsFor(node, opts.port, router.targets(), opts.targets);
      router
        .handoffOrReply(socket, targets, {
          appState: { user },
          peeked,
          errorReply: (err) => response('503 Service Unavailable', { 'Retry-After': '1', Connection: 'close' }, `no node can take this connection (${err.code})\n`),
        })
        .then(
          (r) => {
            if (r) log.info({ client, event: 'handed-off', connId: r.connId, target: r.target.node, user, timings: r.timings, attempts: r.attempts }, 'handed off');
            else log.warn({ client, user, event: 'all-refused' }, 'every target refused: answered 503');
          },
          (err: unknown) => {
            log.error({ client, err: (err as Error).message }, 'handoff broke the socket');
            socket.destroy();
          },
        );
      return;
    }
  };
  socket.on('data', onData);
}

const closeServers = listenOnDvipas(opts.dvipas, opts.port, guard.wrap(converse), () => log.info({ dvipas: opts.dvipas, port: opts.port }, 'http router listening'));
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => { closeServers(); guard.close(); router.close(); process.exit(0); });
