// batonctl's side of the REST API: typed calls over HTTPS that trust only the cluster CA, the
// operator's token from the environment or a file, and problem+json answers turned into one
// readable error line.
import type https from 'node:https';
import { readSecretFile, TOKEN_TEXT } from '../api/token.js';
import { bounded, errorText, parseJson } from '../input.js';
import { type BoundedAnswer, RequestFailed, requestBounded } from '../api/request.js';

export interface ApiTarget {
  /** e.g. https://10.0.0.11:4702 */
  base: string;
  /** The operator's token (scope read for the views, admin for changes); none: only GET /v1/node. */
  token?: string;
  /** PEM of the cluster CA the node's certificate must chain to; required for https. */
  ca?: Buffer;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** What an answer may weigh: a listing of 10,000 connections is a few megabytes. */
const MAX_ANSWER_BYTES = 64 * 1024 * 1024;
const TIMEOUT_MS = 120_000;

/**
 * The operator's token: BATON_API_TOKEN, else the content of a token file, which must be the
 * operator's alone (mode 0600 or stricter, owned by them or root), like an ssh key. Either must
 * hold one token and nothing else (surrounding white space aside): anything more would reach the
 * Authorization header, where Node refuses it with an error that reads like a network fault.
 */
export function readToken(opts: { tokenFile?: string; env?: NodeJS.ProcessEnv }): string | undefined {
  const env = opts.env ?? process.env;
  const [token, source] = env.BATON_API_TOKEN
    ? [env.BATON_API_TOKEN.trim(), 'BATON_API_TOKEN']
    : opts.tokenFile
      ? [readSecretFile(opts.tokenFile, 'token file', 4096).trim(), `token file ${opts.tokenFile}`]
      : [undefined, ''];
  if (token !== undefined && !TOKEN_TEXT.test(token)) throw new ApiError(0, `${source}: not a single API token (letters, digits and - . _ ~ + /, as batonctl token new writes it)`);
  return token;
}

export class ApiClient {
  private readonly url: URL;

  constructor(private readonly target: ApiTarget) {
    this.url = new URL(target.base);
    if (this.url.protocol === 'https:' && !target.ca) throw new ApiError(0, `${target.base}: give the cluster CA to check the node's certificate against (--ca-file or BATON_CA_FILE)`);
    if (this.url.protocol !== 'https:' && this.url.protocol !== 'http:') throw new ApiError(0, `${target.base}: not an http(s) URL`);
  }

  get<T>(path: string): Promise<T> {
    return this.call<T>('GET', path);
  }

  post<T>(path: string, body?: unknown): Promise<T> {
    return this.call<T>('POST', path, body);
  }

  delete<T>(path: string): Promise<T> {
    return this.call<T>('DELETE', path);
  }

  put<T>(path: string, body: unknown): Promise<T> {
    return this.call<T>('PUT', path, body);
  }

  private async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string | number> = {};
    if (payload) Object.assign(headers, { 'content-type': 'application/json', 'content-length': payload.length });
    if (this.target.token) headers.authorization = `Bearer ${this.target.token}`;
    const secure = this.url.protocol === 'https:';
    const options: https.RequestOptions = {
      host: this.url.hostname.replace(/^\[|\]$/g, ''),
      port: this.url.port || (secure ? 443 : 80),
      method,
      path: `${this.url.pathname.replace(/\/$/, '')}${path}`,
      headers,
      signal: AbortSignal.timeout(TIMEOUT_MS),
      // Only the cluster CA: the node's certificate names its management address (IP SAN) and its name (DNS SAN).
      ...(secure ? { ca: this.target.ca } : {}),
    };
    let answer: BoundedAnswer;
    try {
      answer = await requestBounded(secure, options, payload, MAX_ANSWER_BYTES);
    } catch (err) {
      if (err instanceof RequestFailed && err.kind === 'too-large') throw new ApiError(0, `${method} ${path}: ${err.message}`);
      throw new ApiError(0, `cannot reach ${this.target.base}: ${errorText(err)}`);
    }
    const res = { status: answer.status, type: answer.contentType, text: answer.body.toString('utf8') };
    const json = res.type.includes('json') ? parseJson(res.text, { maxBytes: MAX_ANSWER_BYTES }) : undefined;
    if (res.status < 200 || res.status >= 300) {
      const problem = json?.ok ? (json.value as { detail?: unknown; title?: unknown }) : undefined;
      const detail = problem && typeof problem.detail === 'string' ? `${String(problem.title ?? res.status)}: ${problem.detail}` : bounded(res.text, 500);
      const hint = res.status === 401 ? ' (give an operator token: --token-file or BATON_API_TOKEN)' : '';
      throw new ApiError(res.status, `${method} ${path} → ${res.status} ${detail}${hint}`);
    }
    if (json === undefined) return res.text as T;
    if (!json.ok) throw new ApiError(res.status, `${method} ${path}: the answer is ${json.reason}: ${json.detail}`);
    return json.value as T;
  }
}
