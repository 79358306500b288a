// HTTP target application (DVIPA port 80) on n2/n3: a stock node:http server that never listens
// itself. Connections arrive by transfer; the authenticated request the router peeked is replayed
// at the head of the stream, so the server answers it, and later keep-alive requests, normally.
import http from 'node:http';
import type net from 'node:net';
import { TargetClient, serveHttp } from '../../controller/sdk/index.js';
import { createLogger } from '../../controller/log.js';
import { exampleOptions, withRetry } from '../common.js';

const opts = exampleOptions('http-target', 80);
const log = createLogger({ app: 'http-target', node: opts.node });
const users = new WeakMap<net.Socket, string>();

const server = http.createServer((req, res) => {
  const user = users.get(req.socket) ?? 'anonymous';
  log.info({ event: 'request', method: req.method, url: req.url, user }, 'request served');
  res.setHeader('X-Served-By', opts.node);
  res.setHeader('Content-Type', 'text/plain');
  res.end(`hello ${user}, served by ${opts.node} for ${req.method} ${req.url}\n`);
});

const target = await withRetry('connect to batond', () =>
  TargetClient.connect({ socketPath: opts.agent, name: 'http-target', ports: [opts.port], logger: log }, (conn) => {
    users.set(conn.socket, (conn.appState as { user?: string } | null)?.user ?? 'anonymous');
    log.info({ connId: conn.connId, from: conn.from, client: conn.client, event: 'resumed' }, 'serving transferred connection');
    serveHttp(server, conn);
  }),
);
log.info({ port: opts.port }, 'http target registered');
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => { target.close(); server.close(); process.exit(0); });
