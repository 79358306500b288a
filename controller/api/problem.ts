// Errors as RFC 9457 problem details (application/problem+json). A BatonError's code picks the
// status and becomes the problem type; its context (connection, node, step) travels as members.
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { type BatonErrorCode, isBatonError } from '../errors.js';

export const PROBLEM_TYPE_BASE = 'https://baton.invalid/problems/';

const STATUS: Partial<Record<BatonErrorCode, number>> = {
  E_CONFIG: 400,
  E_PROTOCOL: 400,
  E_UNAUTHORIZED: 401,
  E_NOT_FOUND: 404,
  E_HANDOFF_STATE: 409,
  E_REJECTED: 409,
  E_NO_TARGET: 409,
  E_PEER: 502,
  E_TIMEOUT: 504,
};

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  instance: string;
  [member: string]: unknown;
}

export function problemOf(err: unknown, instance: string): Problem {
  if (isBatonError(err)) {
    const status = STATUS[err.code] ?? 500;
    return { type: `${PROBLEM_TYPE_BASE}${err.code}`, title: err.code, status, detail: err.message, instance, ...err.context };
  }
  const fe = err as FastifyError;
  if (fe.validation) {
    // Fastify/ajv: "body/node must match pattern ..." names the field and what was expected.
    return { type: `${PROBLEM_TYPE_BASE}E_VALIDATION`, title: 'E_VALIDATION', status: 400, detail: fe.message, instance };
  }
  const status = typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 600 ? fe.statusCode : 500;
  return { type: status === 500 ? 'about:blank' : `${PROBLEM_TYPE_BASE}${fe.code ?? 'E_HTTP'}`, title: fe.code ?? 'Internal Server Error', status, detail: fe.message, instance };
}

export function sendProblem(reply: FastifyReply, problem: Problem): FastifyReply {
  return reply.code(problem.status).type('application/problem+json').send(problem);
}

export function errorHandler(err: unknown, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const problem = problemOf(err, request.url);
  if (problem.status >= 500) request.log.error({ err: (err as Error).message, url: request.url }, 'API request failed');
  return sendProblem(reply, problem);
}
