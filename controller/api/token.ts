// Operators and their API tokens. The token file (config api.tokenFile) lists one operator a line:
//
//   # name   scope  SHA-256 of the token
//   alice    admin  sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//   grafana  read   sha256:…
//
// It holds hashes, not tokens: a copy of the file (a backup, a provisioning log) lets nobody in.
// A token is 32 random bytes (`batonctl token new`), so an unsalted SHA-256 of it cannot be
// reversed by guessing. The file is still a secret (it says who may do what): batond refuses it
// when group or others have any access or when it belongs to someone other than root or batond's
// own user. Scopes: read (every GET) and admin (everything). Tokens are never logged.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import { BatonError } from '../errors.js';
import { bounded } from '../input.js';

export const SCOPES = ['read', 'admin'] as const;
export type Scope = (typeof SCOPES)[number];

export interface Operator {
  name: string;
  scope: Scope;
}

/** What a token file may hold: far more operators than a cluster has, far less than a memory problem. */
export const MAX_TOKEN_FILE_BYTES = 1024 * 1024;
export const MAX_OPERATORS = 10_000;
/** A bearer token longer than this is refused before it is hashed; ours are 43 characters. */
export const MAX_TOKEN_LENGTH = 512;

/** An operator's name, as tokens, logs and the CLI write it. */
export const OPERATOR_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const HASH = /^sha256:([0-9a-f]{64})$/;
// RFC 6750 b64token: what a bearer token may be made of.
export const TOKEN_TEXT = /^[A-Za-z0-9._~+/-]+=*$/;
const BEARER = new RegExp(`^Bearer (${TOKEN_TEXT.source.slice(1, -1)})$`);

export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** A new operator token: 32 random bytes, base64url (43 characters, no padding). */
export function newToken(): string {
  return randomBytes(32).toString('base64url');
}

/** The token file line for an operator holding token. */
export function tokenLine(operator: Operator, token: string): string {
  return `${operator.name} ${operator.scope} sha256:${hashToken(token)}`;
}

/**
 * Reads a file holding a secret, refusing it (E_CONFIG, saying how to fix it) unless it is a
 * regular file, owned by root or by this process's user, with no group or other permission bits.
 * Checked on the open descriptor, so the file read is the file checked.
 */
export function readSecretFile(file: string, what: string, maxBytes: number): string {
  const context = { step: 'api-token', file };
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ELOOP' ? 'is a symbolic link (give the file itself)' : errnoText(err);
    throw new BatonError('E_CONFIG', `${what} ${file} ${why}`, context);
  }
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) throw new BatonError('E_CONFIG', `${what} ${file} is not a regular file`, context);
    const owner = process.geteuid?.() ?? 0;
    if (stat.uid !== 0 && stat.uid !== owner) {
      throw new BatonError('E_CONFIG', `${what} ${file} belongs to uid ${stat.uid}, not root or this process's uid ${owner}: chown it`, context);
    }
    if ((stat.mode & 0o077) !== 0) {
      throw new BatonError('E_CONFIG', `${what} ${file} is open to group or others (mode ${(stat.mode & 0o777).toString(8)}): chmod 600 it`, context);
    }
    if (stat.size > maxBytes) throw new BatonError('E_CONFIG', `${what} ${file} is ${stat.size} bytes, at most ${maxBytes}`, context);
    const buf = Buffer.alloc(stat.size);
    const n = stat.size === 0 ? 0 : fs.readSync(fd, buf, 0, stat.size, 0);
    return buf.subarray(0, n).toString('utf8');
  } finally {
    fs.closeSync(fd);
  }
}

function errnoText(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'does not exist';
  if (code === 'EACCES') return 'is not readable by this user';
  return `cannot be opened (${code ?? (err as Error).message})`;
}

/** The operators a token file names, each with the hash of its token. */
export class OperatorTokens {
  private readonly entries: Array<{ operator: Operator; hash: Buffer }>;

  constructor(entries: Array<{ operator: Operator; sha256: string }>) {
    this.entries = entries.map((e) => ({ operator: { ...e.operator }, hash: Buffer.from(e.sha256, 'hex') }));
  }

  get size(): number {
    return this.entries.length;
  }

  /**
   * The operator an Authorization header's bearer token belongs to; undefined for no header, a
   * malformed one or an unknown token. Every entry is compared, in constant time, whatever matched.
   */
  authenticate(header: string | undefined): Operator | undefined {
    if (header === undefined || header.length > MAX_TOKEN_LENGTH + 7) return undefined;
    const m = BEARER.exec(header);
    if (!m) return undefined;
    const given = createHash('sha256').update(m[1]!, 'utf8').digest();
    let found: Operator | undefined;
    for (const e of this.entries) if (timingSafeEqual(given, e.hash) && !found) found = e.operator;
    return found ? { ...found } : undefined;
  }
}

/** Parses a token file's text; every error names the file and line. */
export function parseTokenFile(text: string, source: string): OperatorTokens {
  const entries: Array<{ operator: Operator; sha256: string }> = [];
  const names = new Set<string>();
  const hashes = new Set<string>();
  const fail = (line: number, why: string) => {
    throw new BatonError('E_CONFIG', `${source}:${line}: ${why} (docs/api.md: "<name> <scope> sha256:<hex>", made by batonctl token new)`, { step: 'api-token', file: source });
  };
  const lines = text.split('\n');
  const meaningful = lines.filter((l) => l.trim() !== '' && !l.trim().startsWith('#')).length;
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const fields = line.split(/\s+/);
    if (fields.length === 1 && meaningful === 1) {
      // The file of one shared token that batond read before operators had their own.
      fail(i + 1, 'holds a bare token, the format before per-operator tokens; its line must name an operator, a scope and the token\'s hash');
    }
    if (fields.length !== 3) fail(i + 1, `expected 3 fields, found ${fields.length}`);
    const [name, scope, hash] = fields as [string, string, string];
    if (!OPERATOR_NAME.test(name)) fail(i + 1, `operator name ${JSON.stringify(bounded(name, 64))} must match ${OPERATOR_NAME.source}`);
    if (!(SCOPES as readonly string[]).includes(scope)) fail(i + 1, `scope ${JSON.stringify(bounded(scope, 16))} of ${name} is not one of ${SCOPES.join(', ')}`);
    const h = HASH.exec(hash);
    if (!h) fail(i + 1, `the token of ${name} must be given as sha256:<64 lowercase hex digits>, never the token itself`);
    if (names.has(name)) fail(i + 1, `operator ${name} appears twice`);
    if (hashes.has(h![1]!)) fail(i + 1, `${name} has the same token as an operator above: every operator needs a token of their own`);
    names.add(name);
    hashes.add(h![1]!);
    if (entries.length >= MAX_OPERATORS) fail(i + 1, `more than ${MAX_OPERATORS} operators`);
    entries.push({ operator: { name, scope: scope as Scope }, sha256: h![1]! });
  });
  if (entries.length === 0) throw new BatonError('E_CONFIG', `${source} names no operator: nobody could use the API (batonctl token new <name> --scope admin makes one)`, { step: 'api-token', file: source });
  return new OperatorTokens(entries);
}

/** The API's operators from the config's api.tokenFile: mode, owner and every line checked. */
export function loadOperatorTokens(file: string): OperatorTokens {
  return parseTokenFile(readSecretFile(file, 'API token file', MAX_TOKEN_FILE_BYTES), file);
}
