// The REST admin API (fastify), served by every batond on its management address, never on the
// DVIPA: HTTPS with the node's own certificate (the one its peer links use, from the cluster CA),
// unless the cluster file asks for plain HTTP (api.insecurePlaintext), which is warned about at
// start. Who may do what: access.ts (operator tokens with scopes, node certificates for requests
// forwarded between nodes). Bodies: body.ts. Errors are RFC 9457 problem+json; OpenAPI 3 is
// generated from the route schemas and shown by Swagger UI at /docs. Routes live in routes/, one
// resource per file.
import fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest, LogController } from 'fastify';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import { BatonError } from '../errors.js';
import { bounded, errorText, logSparsely } from '../input.js';
import type { Logger } from '../log.js';
import type { ClusterConfig, NodeConfig } from '../config/cluster.js';
import type { AgentAdmin } from '../agent/admin.js';
import type { AgentMetrics } from '../metrics/metrics.js';
import type { PeerTlsMaterial } from '../transfer/peer-tls.js';
import { accessControl } from './access.js';
import { BODY_LIMIT, jsonBodiesOnly } from './body.js';
import { apiBase, type Caller, FORWARDED_HEADER, NodeForwarder } from './forward.js';
import { errorHandler, problemOf, type Refusal, sendProblem } from './problem.js';
import type { OperatorTokens } from './token.js';
import { connectionRoutes } from './routes/connections.js';
import { dvipaRoutes } from './routes/dvipas.js';
import { nodeRoutes } from './routes/nodes.js';
import { readRoutes } from './routes/read.js';
import { targetRoutes } from './routes/targets.js';

export interface ApiContext {
  admin: AgentAdmin;
  metrics: AgentMetrics;
  config: ClusterConfig;
  /** Makes requests to other nodes' APIs (mutual TLS, or plain HTTP when the cluster file says so). */
  forwarder: NodeForwarder;
  /** On whose behalf this request may be sent on to other nodes. */
  callerOf(request: FastifyRequest): Caller;
  /** Sends the request on to node's API and relays its answer; refuses a request already forwarded. */
  forward(node: string, request: FastifyRequest, reply: FastifyReply, override?: { path?: string; method?: string; body?: unknown }): Promise<FastifyReply>;
}

export interface ApiServerOptions {
  admin: AgentAdmin;
  metrics: AgentMetrics;
  config: ClusterConfig;
  /** The operators of the API token file. */
  operators: OperatorTokens;
  /** This node's certificate and key and the cluster CA (the peer links'); required unless api.insecurePlaintext. */
  tls?: PeerTlsMaterial;
  log: Logger;
}

export async function createApiServer(opts: ApiServerOptions): Promise<FastifyInstance> {
  const { admin, config, operators } = opts;
  const self: NodeConfig = admin.self;
  const plaintext = config.api.insecurePlaintext === true;
  if (!plaintext && !opts.tls) throw new BatonError('E_CONFIG', 'the REST API serves HTTPS: it needs the node certificate and the cluster CA', { node: self.name, step: 'api' });
  const app = fastify({
    loggerInstance: opts.log as FastifyBaseLogger,
    // Request lines are logged by access.ts for mutations only, without headers: no token reaches a log.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: BODY_LIMIT,
    // A stop must not wait for a long move request to finish.
    forceCloseConnections: true,
    ...(plaintext
      ? {}
      : {
          // The client certificate is asked for, not required: operators come with a token, only
          // nodes forwarding a request present one, and access.ts checks it (chain, node, address).
          https: { ...opts.tls!, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2' as const, handshakeTimeout: 10_000 },
        }),
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', useDefaults: true, allErrors: false } },
    // A malformed percent-escape (400) or an over-long path parameter (414) is refused by the
    // router before any route runs: without this it answers fastify's own JSON, not problem+json.
    frameworkErrors: (err, request, reply) => handleError(err, request, reply),
  });
  const refused = (reason: Refusal) => opts.metrics.apiRefused(reason);
  const handleError = errorHandler(refused);
  app.setErrorHandler(handleError);
  app.setNotFoundHandler((request, reply) =>
    sendProblem(reply, problemOf(new BatonError('E_NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]}`), request.url)),
  );
  jsonBodiesOnly(app);
  accessControl(app, config, operators, refused);

  if (plaintext) {
    app.log.warn({ api: apiBase(config, self) }, 'REST API serves plain HTTP (api.insecurePlaintext): operator tokens cross the management network in clear, and so do they on requests forwarded between nodes');
  } else {
    let failed = 0;
    app.server.on('tlsClientError', (err: Error, socket: { remoteAddress?: string }) => {
      refused('tls-handshake');
      if (logSparsely(++failed)) app.log.warn({ from: socket.remoteAddress, err: errorText(err), failed }, 'API TLS handshake failed (plain HTTP to the HTTPS port, or a client that does not trust the cluster CA)');
    });
  }
  if (process.env.BATON_API_TOKEN !== undefined) {
    app.log.warn('BATON_API_TOKEN is set in batond\'s environment and ignored: operators\' tokens are in api.tokenFile (batonctl still reads it, as the operator\'s own token)');
  }

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'Baton admin API', version: '1', description: 'Operate a Baton node: the cluster view, target applications, the connection routing table, transfers, and moves. Every route but GET /v1/node and /docs needs an operator token: scope read for GET, admin for changes.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });

  const forwarder = new NodeForwarder(config, self, plaintext ? undefined : opts.tls);
  app.addHook('onClose', async () => forwarder.close());
  const ctx: ApiContext = {
    admin,
    metrics: opts.metrics,
    config,
    forwarder,
    callerOf(request) {
      // A drain forwarded here by another node is carried on for the operator that node named.
      const p = request.principal;
      const operator = p?.kind === 'operator' ? p.name : p?.operator;
      return { ...(operator !== undefined ? { operator } : {}), ...(request.headers.authorization !== undefined ? { authorization: request.headers.authorization } : {}) };
    },
    async forward(node, request, reply, override = {}) {
      if (request.headers[FORWARDED_HEADER]) {
        throw new BatonError('E_NOT_FOUND', `${self.name} was asked by ${bounded(String(request.headers[FORWARDED_HEADER]), 64)} but does not hold it either`, { node: self.name, step: 'forward' });
      }
      const target = config.nodes.find((n) => n.name === node);
      if (!target) throw new BatonError('E_NOT_FOUND', `node ${node} is not in the cluster`, { step: 'forward' });
      const res = await forwarder.send(
        target,
        { method: override.method ?? request.method, path: override.path ?? request.url, body: 'body' in override ? override.body : (request.body ?? undefined) },
        ctx.callerOf(request),
      );
      return reply.code(res.status).type(res.contentType).send(res.body);
    },
  };
  await app.register(readRoutes(ctx));
  await app.register(connectionRoutes(ctx));
  await app.register(targetRoutes(ctx));
  await app.register(nodeRoutes(ctx));
  await app.register(dvipaRoutes(ctx));
  return app;
}
