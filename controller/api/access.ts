// Who is asking the API, and whether they may. Two kinds of caller:
//   - an operator, by the bearer token of the token file (token.ts), with a scope: read may GET,
//     admin may do everything;
//   - another node of the cluster, forwarding a request an operator made there, by its TLS client
//     certificate: it must chain to the cluster CA, name a node of the cluster file, and the
//     connection must come from that node's management address (the peer links' rule,
//     peer-tls.ts). It carries no token: no secret crosses between nodes. It names the operator
//     it acts for (x-baton-operator), for the log only.
// Open to anyone who reaches the management address: GET /v1/node (the health check) and the
// API's own description under /docs. Everything else needs a caller; refusals are 401 (no or
// unknown token) and 403 (a read token on a change), problem+json, logged without the token.
import type { TLSSocket } from 'node:tls';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { BatonError } from '../errors.js';
import { bounded, logSparsely } from '../input.js';
import type { ClusterConfig } from '../config/cluster.js';
import { authenticatePeer } from '../transfer/peer-tls.js';
import { OPERATOR_NAME } from './token.js';
import { problemOf, type Refusal, sendProblem } from './problem.js';
import type { OperatorTokens, Scope } from './token.js';

export type Principal = { kind: 'operator'; name: string; scope: Scope } | { kind: 'node'; name: string; operator?: string };

declare module 'fastify' {
  interface FastifyRequest {
    /** Who made the request; null until the access hook ran, and for the open routes. */
    principal: Principal | null;
  }
}

/** Sent by a forwarding node: the operator the request is made for (logged; authorises nothing). */
export const OPERATOR_HEADER = 'x-baton-operator';

const READS = new Set(['GET', 'HEAD']);

/** Routes (as registered, not as requested: no path trick reaches another) anyone may call. */
export function isOpen(route: string | undefined): boolean {
  return route === '/v1/node' || route === '/docs' || (route?.startsWith('/docs/') ?? false);
}

export function requiredScope(method: string): Scope {
  return READS.has(method) ? 'read' : 'admin';
}

export function isMutation(method: string): boolean {
  return !READS.has(method) && method !== 'OPTIONS';
}

/** The cluster node a request's TLS client certificate proves, if any; else why it proves none. */
function nodeOf(config: ClusterConfig, request: FastifyRequest): { node: string } | { refused: string } | undefined {
  const socket = request.raw.socket as Partial<TLSSocket> | undefined;
  // Plain HTTP (api.insecurePlaintext), or a request injected in a test: no certificate at all.
  if (!socket?.encrypted || typeof socket.getPeerCertificate !== 'function') return undefined;
  const presented = socket.getPeerCertificate();
  if (!presented || Object.keys(presented).length === 0) return undefined;
  const r = authenticatePeer(config, socket as TLSSocket);
  return 'node' in r ? { node: r.node.name } : r;
}

export function identify(config: ClusterConfig, operators: OperatorTokens, request: FastifyRequest): { principal: Principal } | { refused: string } {
  const header = request.headers.authorization;
  if (header !== undefined) {
    const operator = operators.authenticate(header);
    return operator ? { principal: { kind: 'operator', ...operator } } : { refused: 'the Authorization header is not "Bearer <token>" with a token of the API token file' };
  }
  const node = nodeOf(config, request);
  if (node && 'node' in node) {
    const named = request.headers[OPERATOR_HEADER];
    const operator = typeof named === 'string' && OPERATOR_NAME.test(named) ? named : undefined;
    return { principal: { kind: 'node', name: node.node, ...(operator ? { operator } : {}) } };
  }
  return { refused: node ? `the client certificate proves no node: ${node.refused}` : 'no Authorization: Bearer <token>' };
}

/** What the log says about who made a request: the operator's name (never the token) and the node it came through. */
export function callerFields(p: Principal | null): Record<string, string> {
  if (!p) return {};
  return p.kind === 'operator' ? { operator: p.name } : { forwardedBy: p.name, ...(p.operator ? { operator: p.operator } : {}) };
}

/** Installs the access check: before the body is read, so a refused request costs no parsing. */
export function accessControl(app: FastifyInstance, config: ClusterConfig, operators: OperatorTokens, refused: (reason: Refusal) => void): void {
  const counts = new Map<Refusal, number>();
  const refuse = (request: FastifyRequest, reason: Refusal, why: string) => {
    refused(reason);
    const n = (counts.get(reason) ?? 0) + 1;
    counts.set(reason, n);
    // A scan of the management network must not become a flood of log lines: the first ten, then every 1000th.
    if (logSparsely(n)) request.log.warn({ method: request.method, url: bounded(request.url, 200), from: request.ip, reason, why, refused: n, ...callerFields(request.principal) }, 'API request refused');
  };

  app.decorateRequest('principal', null);
  app.addHook('onRequest', async (request, reply) => {
    if (isOpen(request.routeOptions.url)) return;
    const who = identify(config, operators, request);
    if ('refused' in who) {
      refuse(request, 'unauthenticated', who.refused);
      reply.header('www-authenticate', 'Bearer realm="baton"');
      return sendProblem(reply, problemOf(new BatonError('E_UNAUTHORIZED', `${who.refused}: this route needs an operator token (Authorization: Bearer <token>)`), request.url));
    }
    request.principal = who.principal;
    const need = requiredScope(request.method);
    if (who.principal.kind === 'operator' && need === 'admin' && who.principal.scope !== 'admin') {
      refuse(request, 'forbidden', `scope ${who.principal.scope}`);
      return sendProblem(reply, problemOf(new BatonError('E_FORBIDDEN', `operator ${who.principal.name} has scope ${who.principal.scope}; ${request.method} needs admin`), request.url));
    }
  });
  app.addHook('onResponse', async (request, reply) => {
    if (isMutation(request.method) && request.principal) {
      request.log.info({ method: request.method, url: bounded(request.url, 200), status: reply.statusCode, from: request.ip, ...callerFields(request.principal) }, 'API mutation');
    }
  });
}
