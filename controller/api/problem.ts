// Errors as RFC 9457 problem details (application/problem+json). A BatonError's code picks the
// status and becomes the problem type; its context (connection, node, step) travels as members.
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { ERRORS, isBatonError } from '../errors.js';
import { bounded, countInputError, errorText } from '../input.js';

export const PROBLEM_TYPE_BASE = 'https://baton.invalid/problems/';

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  instance: string;
  [member: string]: unknown;
}

/** The most of an error's own text a problem's detail carries. */
const MAX_DETAIL = 512;

export function problemOf(err: unknown, instance: string): Problem {
  if (isBatonError(err)) {
    const status = ERRORS[err.code].status;
    return { type: `${PROBLEM_TYPE_BASE}${err.code}`, title: err.code, status, detail: err.message, instance, ...err.context };
  }
  const fe = err as FastifyError;
  if (fe.validation) {
    // Fastify/ajv: "body/node must match pattern ..." names the field and what was expected.
    return { type: `${PROBLEM_TYPE_BASE}E_VALIDATION`, title: 'E_VALIDATION', status: 400, detail: bounded(fe.message, MAX_DETAIL), instance };
  }
  const status = typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 600 ? fe.statusCode : 500;
  // Any error's text, which may quote what a request carried: bounded and escaped, as in the log.
  return { type: status === 500 ? 'about:blank' : `${PROBLEM_TYPE_BASE}${fe.code ?? 'E_HTTP'}`, title: fe.code ?? 'Internal Server Error', status, detail: bounded(fe.message, MAX_DETAIL), instance };
}

export function sendProblem(reply: FastifyReply, problem: Problem): FastifyReply {
  return reply.code(problem.status).type('application/problem+json').send(problem);
}

/** Why the API refused a request, as baton_api_refused_total labels it. */
export type Refusal = 'unauthenticated' | 'forbidden' | 'body' | 'validation' | 'too-large' | 'media-type' | 'url' | 'tls-handshake';

/** A request body the JSON parser refused (not JSON, not UTF-8, too deep, a prototype key): 400. */
export function badBody(detail: string): FastifyError {
  return Object.assign(new Error(`body ${detail}`), { statusCode: 400, code: 'E_VALIDATION', name: 'BadBody' }) as FastifyError;
}

/** What the router and parsers refuse before any handler runs, by the refusal it counts as. */
const REFUSED_BY_CODE: Record<string, Refusal> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'too-large',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'media-type',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'body',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'body',
  FST_ERR_BAD_URL: 'url',
  FST_ERR_MAX_PARAM_LENGTH: 'url',
};

/**
 * Answers every error as problem+json. A refusal of bad input is counted by its reason. A 5xx
 * that is no BatonError (a TypeError, a RangeError) means a handler threw on what it was given,
 * which is a bug: logged, bounded, and counted as an input error.
 */
export function errorHandler(refused: (reason: Refusal) => void = () => undefined) {
  return (err: unknown, request: FastifyRequest, reply: FastifyReply): FastifyReply => {
    const problem = problemOf(err, request.url);
    const fe = err as FastifyError;
    if (fe.validation) refused('validation');
    else if ((err as Error).name === 'BadBody') refused('body');
    else if (typeof fe.code === 'string' && REFUSED_BY_CODE[fe.code]) refused(REFUSED_BY_CODE[fe.code]!);
    if (problem.status >= 500 && !isBatonError(err)) {
      countInputError('api');
      request.log.error({ err: errorText(err), method: request.method, url: bounded(request.url, 200) }, 'API request failed');
    }
    return sendProblem(reply, problem);
  };
}
