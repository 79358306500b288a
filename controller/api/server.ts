// The REST admin API (fastify), served by every batond on its management address, never on the
// DVIPA. Reads are open to whoever reaches the management network; every mutation needs the
// cluster's bearer token. Errors are RFC 9457 problem+json; OpenAPI 3 is generated from the route
// schemas and shown by Swagger UI at /docs. Routes live in routes/, one resource per file.
import fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import { BatonError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ClusterConfig } from '../config/cluster.js';
import type { AgentAdmin } from '../agent/admin.js';
import type { AgentMetrics } from '../metrics/metrics.js';
import { FORWARDED_HEADER, forwardTo } from './forward.js';
import { errorHandler, problemOf, sendProblem } from './problem.js';
import { bearerMatches } from './token.js';
import { connectionRoutes } from './routes/connections.js';
import { dvipaRoutes } from './routes/dvipas.js';
import { nodeRoutes } from './routes/nodes.js';
import { readRoutes } from './routes/read.js';
import { targetRoutes } from './routes/targets.js';

export interface ApiContext {
  admin: AgentAdmin;
  metrics: AgentMetrics;
  config: ClusterConfig;
  token: string;
  /** Sends the request on to node's API and relays its answer; refuses a request already forwarded. */
  forward(node: string, request: FastifyRequest, reply: FastifyReply, override?: { path?: string; method?: string; body?: unknown }): Promise<FastifyReply>;
}

const MUTATING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

export async function createApiServer(opts: { admin: AgentAdmin; metrics: AgentMetrics; config: ClusterConfig; token: string; log: Logger }): Promise<FastifyInstance> {
  const { admin, config, token } = opts;
  const app = fastify({
    loggerInstance: opts.log as FastifyBaseLogger,
    // Request lines are logged below for mutations only, without headers: the token never reaches a log.
    disableRequestLogging: true,
    bodyLimit: 64 * 1024,
    // A stop must not wait for a long move request to finish.
    forceCloseConnections: true,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', useDefaults: true, allErrors: false } },
    // A malformed percent-escape (400) or an over-long path parameter (414) is refused by the
    // router before any route runs: without this it answers fastify's own JSON, not problem+json.
    frameworkErrors: (err, request, reply) => errorHandler(err, request, reply),
  });
  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler((request, reply) =>
    sendProblem(reply, problemOf(new BatonError('E_NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]}`), request.url)),
  );

  app.addHook('onRequest', async (request, reply) => {
    if (!MUTATING.has(request.method)) return;
    if (!bearerMatches(request.headers.authorization, token)) {
      request.log.warn({ method: request.method, url: request.url, from: request.ip }, 'API mutation refused: missing or wrong bearer token');
      reply.header('www-authenticate', 'Bearer realm="baton"');
      return sendProblem(reply, problemOf(new BatonError('E_UNAUTHORIZED', 'this route changes state: send Authorization: Bearer <token>'), request.url));
    }
  });
  app.addHook('onResponse', async (request, reply) => {
    if (MUTATING.has(request.method)) request.log.info({ method: request.method, url: request.url, status: reply.statusCode, from: request.ip }, 'API mutation');
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'Baton admin API', version: '1', description: 'Operate a Baton node: the cluster view, target applications, the connection routing table, transfers, and moves.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });

  const ctx: ApiContext = {
    admin,
    metrics: opts.metrics,
    config,
    token,
    async forward(node, request, reply, override = {}) {
      if (request.headers[FORWARDED_HEADER]) {
        throw new BatonError('E_NOT_FOUND', `${admin.self.name} was asked by ${String(request.headers[FORWARDED_HEADER])} but does not hold it either`, { node: admin.self.name, step: 'forward' });
      }
      const target = config.nodes.find((n) => n.name === node);
      if (!target) throw new BatonError('E_NOT_FOUND', `node ${node} is not in the cluster`, { step: 'forward' });
      const res = await forwardTo(
        `http://${target.address}:${config.api.port}`,
        { method: override.method ?? request.method, path: override.path ?? request.url, body: 'body' in override ? override.body : (request.body ?? undefined) },
        { token, from: admin.self.name },
        node,
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
