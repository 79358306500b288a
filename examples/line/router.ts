// Line-protocol routing application (DVIPA port 7000), on the distributor:
//   client: HELLO        → WHO?
//   client: MOTD <n>     → n bytes of the pattern (optional; lets tests leave data queued towards
//                          the client when the connection moves)
//   client: USER <name>  → the connection is handed off to the user's node, whose target application
//                          answers OK <node> and serves GET/PUT from then on.
// The reply to USER comes from the target once it is live, so the client has nothing in flight
// during the move and none of its segments meets the freeze (docs/native.md,
// "Why the handoff runs in this order").
// With --tls-cert and --tls-key the same protocol runs over TLS (acceptTls): each connection is
// handed off with its TLS session, which the target's kernel takes over (kernel TLS).
// Until USER, the routing-phase limits apply (--routing-*): a client that says nothing, trickles,
// floods or opens too many connections gets an ERR line saying why, and is closed.
import fs from 'node:fs';
import type net from 'node:net';
import tls from 'node:tls';
import { acceptTls, type LimitReason, peerText, RouterClient, RoutingGuard, isBatonError } from '../../controller/sdk/index.js';
import { createLogger } from '../../controller/log.js';
import { exampleOptions, listenOnDvipas, withRetry } from '../common.js';
import { patternChunk } from './pattern.js';

const MAX_LINE = 1024;
const MAX_MOTD = 1 << 20;
const opts = exampleOptions('line-router', 7000);
const name = opts.tls ? 'tls-line-router' : 'line-router';
const log = createLogger({ app: name, node: opts.node });
const secureContext = opts.tls ? tls.createSecureContext({ cert: fs.readFileSync(opts.tls.cert), key: fs.readFileSync(opts.tls.key) }) : undefined;
const router = await withRetry('connect to batond', () =>
  RouterClient.connect({ socketPath: opts.agent, name, logger: log, ports: [opts.port], control: opts.control }),
);

const LIMIT_ERRORS: Record<LimitReason, string> = {
  idle: `nothing received for ${opts.routing.idleMs} ms`,
  deadline: `no USER within ${opts.routing.deadlineMs} ms`,
  'too-many-bytes': `more than ${opts.routing.maxBytes} bytes before USER`,
  'per-source': 'too many connections from your address',
  total: 'too many connections, try again later',
};
// The protocol has error lines: a client (or a person at a terminal) learns why it was closed.
const guard = new RoutingGuard({ ...opts.routing, logger: log, reply: (reason) => `ERR ${LIMIT_ERRORS[reason]}\n` });

function targetFor(user: string): string | undefined {
  return opts.users.get(user);
}

function converse(raw: net.Socket): void {
  let buffered: Buffer = Buffer.alloc(0);
  let greeted = false;
  const client = peerText(raw);
  // Over TLS the conversation is on the TLS socket; the guard keeps watching the TCP one.
  const socket = secureContext ? acceptTls(raw, { secureContext }) : raw;
  log.debug({ client, event: 'accepted' }, 'connection accepted');
  socket.on('error', (err) => log.warn({ client, err: err.message }, 'client socket error'));

  const onData = (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    for (;;) {
      const nl = buffered.indexOf(0x0a);
      if (nl < 0) {
        if (buffered.length > MAX_LINE) {
          socket.end('ERR line too long\n');
          socket.off('data', onData);
        }
        return;
      }
      const line = buffered.subarray(0, nl).toString('utf8').trim();
      buffered = buffered.subarray(nl + 1);
      log.debug({ client, event: 'exchange', line }, 'client said');
      if (!greeted) {
        if (line !== 'HELLO') {
          socket.write('ERR say HELLO first\n');
          continue;
        }
        greeted = true;
        socket.write('WHO?\n');
        continue;
      }
      const motd = /^MOTD (\d{1,7})$/.exec(line);
      if (motd && Number(motd[1]) <= MAX_MOTD) {
        socket.write(patternChunk(0, Number(motd[1])));
        continue;
      }
      const m = /^USER ([A-Za-z0-9_-]{1,32})$/.exec(line);
      if (!m) {
        socket.write('ERR expected USER <name>\n');
        continue;
      }
      const user = m[1]!;
      const node = targetFor(user);
      if (!node) {
        socket.write(`ERR unknown user ${user}\n`);
        continue;
      }
      // Everything after the USER line is the client's next request: it travels as peeked bytes.
      const peeked = buffered;
      buffered = Buffer.alloc(0);
      socket.off('data', onData);
      router.handoff(socket, { node, port: opts.port }, { appState: { user, greeting: 'OK' }, peeked }).then(
        (r) => log.info({ client, event: 'handed-off', connId: r.connId, target: node, timings: r.timings, peeked: peeked.length }, 'handed off'),
        (err: unknown) => {
          const reason = isBatonError(err) ? `${err.code} at ${String(err.context.step)}` : String(err);
          log.warn({ client, target: node, err: (err as Error).message }, 'handoff failed; serving the error here');
          buffered = Buffer.concat([peeked, buffered]);
          socket.on('data', onData);
          socket.write(`ERR cannot reach ${node}: ${reason}\n`);
        },
      );
      return;
    }
  };
  socket.on('data', onData);
}

const closeServers = listenOnDvipas(opts.dvipas, opts.port, guard.wrap(converse), () => log.info({ dvipas: opts.dvipas, port: opts.port }, 'line router listening'));
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => { closeServers(); guard.close(); router.close(); process.exit(0); });
