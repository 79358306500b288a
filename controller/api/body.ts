// Request bodies: JSON only, UTF-8 only, at most BODY_LIMIT bytes and BODY_MAX_DEPTH deep, no
// prototype keys. Checked before V8 parses anything (controller/input.ts parseJson): a body
// nested 30,000 deep parses, but stringifying it when the request is forwarded to another node
// overflows the stack. A refused body is a 400 problem+json and changes nothing.
import type { FastifyInstance } from 'fastify';
import { bounded, parseJson } from '../input.js';
import { badBody } from './problem.js';

/** Largest request body: every route's body is a few hundred bytes. */
export const BODY_LIMIT = 64 * 1024;
/** Deepest body: the API's bodies nest two levels (an object holding a list of ports). */
export const BODY_MAX_DEPTH = 8;

/** Keys no Baton body has and that mean something to JavaScript objects: refused wherever they appear. */
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

/** The first forbidden key in a parsed value (iterative: depth is already bounded, but no recursion at all). */
export function forbiddenKey(value: unknown): string | undefined {
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const v = stack.pop();
    if (v === null || typeof v !== 'object') continue;
    if (Array.isArray(v)) for (const child of v) stack.push(child);
    else
      for (const [k, child] of Object.entries(v)) {
        if (FORBIDDEN_KEYS.has(k)) return k;
        stack.push(child);
      }
  }
  return undefined;
}

/** Replaces fastify's body parsers: application/json (charset utf-8 or none) is the only body the API takes. */
export function jsonBodiesOnly(app: FastifyInstance): void {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'buffer', bodyLimit: BODY_LIMIT }, (request, body, done) => {
    const charset = /;\s*charset\s*=\s*"?([^";\s]*)/i.exec(String(request.headers['content-type']))?.[1];
    if (charset !== undefined && charset.toLowerCase() !== 'utf-8' && charset.toLowerCase() !== 'utf8') {
      done(badBody(`must be UTF-8 JSON (charset ${bounded(charset, 20)} given)`), undefined);
      return;
    }
    const parsed = parseJson(body as Buffer, { maxBytes: BODY_LIMIT, maxDepth: BODY_MAX_DEPTH });
    if (!parsed.ok) {
      const what = { 'too-large': `is too large: ${parsed.detail}`, 'too-deep': `is ${parsed.detail}`, encoding: 'is not valid UTF-8', 'not-json': `is not JSON: ${parsed.detail}` }[parsed.reason];
      done(badBody(what), undefined);
      return;
    }
    const key = forbiddenKey(parsed.value);
    if (key !== undefined) {
      done(badBody(`has a key ${key}: no body of this API has one`), undefined);
      return;
    }
    done(null, parsed.value);
  });
}
