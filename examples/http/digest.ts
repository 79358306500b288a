// HTTP Digest authentication (RFC 7616, MD5, qop=auth): what `curl --digest` speaks. The router
// uses it to learn who the client is before choosing the node that serves them.
import { createHash, randomBytes } from 'node:crypto';

export const REALM = 'baton';

const md5 = (s: string) => createHash('md5').update(s).digest('hex');

export function newNonce(): string {
  return randomBytes(16).toString('hex');
}

export function challenge(nonce: string): string {
  return `Digest realm="${REALM}", qop="auth", algorithm=MD5, nonce="${nonce}"`;
}

export function parseAuthorization(header: string | undefined): Record<string, string> | undefined {
  if (!header || !/^Digest\s/i.test(header)) return undefined;
  const params: Record<string, string> = {};
  for (const m of header.slice(7).matchAll(/([A-Za-z]+)=(?:"([^"]*)"|([^\s,]+))/g)) params[m[1]!.toLowerCase()] = m[2] ?? m[3] ?? '';
  return params;
}

/** The authenticated user, or undefined when the credentials do not answer our challenge. */
export function verify(method: string, auth: Record<string, string>, nonce: string, passwords: Map<string, string>): string | undefined {
  const { username, realm, uri, response, cnonce, nc, qop } = auth;
  if (!username || realm !== REALM || auth.nonce !== nonce || !uri || !response || qop !== 'auth' || !cnonce || !nc) return undefined;
  const password = passwords.get(username);
  if (password === undefined) return undefined;
  const ha1 = md5(`${username}:${REALM}:${password}`);
  const ha2 = md5(`${method}:${uri}`);
  return md5(`${ha1}:${nonce}:${nc}:${cnonce}:${qop}:${ha2}`) === response ? username : undefined;
}
