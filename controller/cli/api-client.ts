// batonctl's side of the REST API: typed calls, the token from the environment or a file, and
// problem+json answers turned into one readable error line.
import fs from 'node:fs';

export interface ApiTarget {
  /** e.g. http://10.0.0.11:4702 */
  base: string;
  token?: string;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export function readToken(opts: { token?: string; tokenFile?: string }): string | undefined {
  if (process.env.BATON_API_TOKEN) return process.env.BATON_API_TOKEN.trim();
  if (opts.tokenFile) return fs.readFileSync(opts.tokenFile, 'utf8').trim();
  return opts.token;
}

export class ApiClient {
  constructor(private readonly target: ApiTarget) {}

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
    const headers: Record<string, string> = {};
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (method !== 'GET') {
      if (!this.target.token) throw new ApiError(401, `${method} ${path} changes state: give a token (--token-file or BATON_API_TOKEN)`);
      headers.authorization = `Bearer ${this.target.token}`;
    }
    let res: Response;
    try {
      res = await fetch(`${this.target.base}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: AbortSignal.timeout(120_000) });
    } catch (err) {
      throw new ApiError(0, `cannot reach ${this.target.base}: ${(err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : (err as Error).message}`);
    }
    const text = await res.text();
    if (!res.ok) {
      let detail = text;
      try {
        const problem = JSON.parse(text) as { detail?: string; title?: string };
        detail = `${problem.title ?? res.status}: ${problem.detail ?? text}`;
      } catch {
        // Not problem+json (a proxy in between?): show the body as it came.
      }
      throw new ApiError(res.status, `${method} ${path} → ${res.status} ${detail}`);
    }
    return (res.headers.get('content-type')?.includes('json') ? JSON.parse(text) : text) as T;
  }
}
