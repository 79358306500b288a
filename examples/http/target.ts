// HTTP target application (DVIPA port 80) on n2/n3: a stock web server that never listens itself
// (claim 5), either node:http's http.createServer or fastify (--framework). Connections arrive by
// transfer; the authenticated request the router peeked is replayed at the head of the stream, so
// the server answers it, and later keep-alive requests, normally. The user comes from the routing
// application's state (claims 6, 7): the target never asks for credentials again. Beyond
// --capacity live connections its batond refuses offers for it (claims 4, 14) and the router
// tries elsewhere.
// GET /hold?ms=N answers after N ms, to keep a connection busy in demos and tests.
import http from 'node:http';
import type net from 'node:net';
import Fastify from 'fastify';
import { TargetClient, serveHttp } from '../../controller/sdk/index.js';
import { createLogger } from '../../controller/log.js';
import { capacityOptions, exampleOptions, withRetry } from '../common.js';

const opts = exampleOptions('http-target', 80);
const log = createLogger({ app: 'http-target', node: opts.node });
const users = new WeakMap<net.Socket, string>();
const instance = opts.instance ?? 'http-target';
const greeting = (user: string, method: string | undefined, url: string | undefined) => `hello ${user}, served by ${opts.node} for ${method} ${url}\n`;
/** /hold?ms=N answers after N ms (at most 5 s): a slow request that keeps a connection busy. */
const holdMs = (url: string | undefined) => {
  const m = /^\/hold\?ms=(\d{1,4})$/.exec(url ?? '');
  return m ? Math.min(Number(m[1]), 5000) : 0;
};
/** Only a /hold request waits: even a 0 ms timer would add about a millisecond to every request. */
const hold = (url: string | undefined) => {
  const ms = holdMs(url);
  return ms > 0 ? new Promise((r) => setTimeout(r, ms)) : undefined;
};

async function webServer(): Promise<http.Server> {
  if (opts.framework === 'node') {
    return http.createServer(async (req, res) => {
      await hold(req.url);
      const user = users.get(req.socket) ?? 'anonymous';
      res.setHeader('X-Served-By', opts.node);
      res.setHeader('X-Framework', 'node');
      res.setHeader('X-Instance', instance);
      res.setHeader('Content-Type', 'text/plain');
      res.end(greeting(user, req.method, req.url));
      // After the answer: the client waits for it, not for the log line.
      log.info({ event: 'request', method: req.method, url: req.url, user }, 'request served');
    });
  }
  const app = Fastify({ logger: false });
  app.get('/*', async (req, reply) => {
    await hold(req.url);
    const user = users.get(req.raw.socket) ?? 'anonymous';
    const sent = reply.header('X-Served-By', opts.node).header('X-Framework', 'fastify').header('X-Instance', instance).type('text/plain').send(greeting(user, req.method, req.url));
    log.info({ event: 'request', method: req.method, url: req.url, user }, 'request served');
    return sent;
  });
  await app.ready();
  return app.server;
}

const server = await webServer();
// Declared first: a deciding application's policy may be asked before connect() has returned.
let target: TargetClient | undefined;
target = await withRetry('connect to batond', () =>
  TargetClient.connect(
    { socketPath: opts.agent, name: 'http-target', instance, ports: [opts.port], logger: log, ...capacityOptions(opts, () => target?.load ?? 0), control: opts.control },
    (conn) => {
      users.set(conn.socket, (conn.appState as { user?: string } | null)?.user ?? 'anonymous');
      serveHttp(server, conn);
      log.info({ connId: conn.connId, from: conn.from, client: conn.client, event: 'resumed' }, 'serving transferred connection');
    },
  ),
);
log.info({ port: opts.port, framework: opts.framework, capacity: opts.capacity }, 'http target registered');
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => { target.close(); server.close(); process.exit(0); });
