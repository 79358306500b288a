// Requests about another node's state go to that node's API, with the same token. A forwarded
// request carries a header so it is never forwarded again (no loops between two confused nodes).
import { BatonError } from '../errors.js';

export const FORWARDED_HEADER = 'x-baton-forwarded-by';
/** Set by the distributor when it fans a cluster-wide change out: apply it on this node only. */
export const LOCAL_ONLY_HEADER = 'x-baton-local-only';
const FORWARD_TIMEOUT_MS = 40_000;

export interface Forwarded {
  status: number;
  contentType: string;
  body: unknown;
}

export async function forwardTo(
  base: string,
  request: { method: string; path: string; body?: unknown },
  auth: { token: string; from: string },
  node: string,
  extraHeaders: Record<string, string> = {},
): Promise<Forwarded> {
  let res: Response;
  try {
    res = await fetch(`${base}${request.path}`, {
      method: request.method,
      headers: {
        authorization: `Bearer ${auth.token}`,
        [FORWARDED_HEADER]: auth.from,
        ...extraHeaders,
        ...(request.body !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      body: request.body !== undefined ? JSON.stringify(request.body) : undefined,
      signal: AbortSignal.timeout(FORWARD_TIMEOUT_MS),
    });
  } catch (err) {
    throw new BatonError('E_PEER', `node ${node}'s API at ${base} is unreachable: ${(err as Error).message}`, { node, step: 'forward' });
  }
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON: pass the text on as it came.
  }
  return { status: res.status, contentType: res.headers.get('content-type') ?? 'application/json', body };
}
