// The REST API's bearer token: BATON_API_TOKEN if set, else the config's tokenFile. The file is a
// secret like an ssh key: refused when others can read it. The token is never logged.
import { timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import { BatonError } from '../errors.js';

export const MIN_TOKEN_LENGTH = 16;

export function loadApiToken(tokenFile: string, env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env.BATON_API_TOKEN;
  const context = { step: 'api-token', file: tokenFile };
  let token: string;
  if (fromEnv !== undefined) token = fromEnv.trim();
  else {
    let stat: fs.Stats;
    try {
      stat = fs.statSync(tokenFile);
    } catch (err) {
      throw new BatonError('E_CONFIG', `API token file ${tokenFile}: ${(err as Error).message} (create it: head -c 32 /dev/urandom | base64 > ${tokenFile}; chmod 600 ${tokenFile})`, context);
    }
    if ((stat.mode & 0o077) !== 0) throw new BatonError('E_CONFIG', `API token file ${tokenFile} is readable by others (mode ${(stat.mode & 0o777).toString(8)}): chmod 600 it`, context);
    token = fs.readFileSync(tokenFile, 'utf8').trim();
  }
  if (token.length < MIN_TOKEN_LENGTH || /\s/.test(token)) {
    throw new BatonError('E_CONFIG', `API token ${fromEnv !== undefined ? 'in BATON_API_TOKEN' : `in ${tokenFile}`} must be at least ${MIN_TOKEN_LENGTH} characters without spaces`, context);
  }
  return token;
}

/** Constant-time check of an Authorization header against the token. */
export function bearerMatches(header: string | undefined, token: string): boolean {
  const m = /^Bearer (\S+)$/.exec(header ?? '');
  if (!m) return false;
  const given = Buffer.from(m[1]!);
  const want = Buffer.from(token);
  return given.length === want.length && timingSafeEqual(given, want);
}
