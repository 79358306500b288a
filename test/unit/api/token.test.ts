// The API token file: operators with scopes, their tokens' hashes, mode and owner checked at load.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { hashToken, loadOperatorTokens, newToken, parseTokenFile, readSecretFile, tokenLine } from '../../../controller/api/token.js';
import { readToken } from '../../../controller/cli/api-client.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-token-'));
afterEach(() => {
  for (const f of fs.readdirSync(dir)) fs.rmSync(path.join(dir, f));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const write = (name: string, text: string, mode = 0o600) => {
  const file = path.join(dir, name);
  fs.writeFileSync(file, text, { mode });
  fs.chmodSync(file, mode);
  return file;
};

const ALICE = 'alice-token-0123456789abcdefghijklmnopq';
const GRAFANA = 'grafana-token-0123456789abcdefghijklmno';
const goodFile = () =>
  [
    '# operators',
    tokenLine({ name: 'alice', scope: 'admin' }, ALICE),
    '',
    `  ${tokenLine({ name: 'grafana', scope: 'read' }, GRAFANA)}  `,
  ].join('\n');

describe('API token file', () => {
  it('maps each operator\'s token to its name and scope; the file holds only SHA-256 hashes', () => {
    const file = write('tokens', goodFile());
    const text = fs.readFileSync(file, 'utf8');
    expect(text).not.toContain(ALICE);
    expect(text).toContain(`alice admin sha256:${hashToken(ALICE)}`);
    const ops = loadOperatorTokens(file);
    expect(ops.size).toBe(2);
    expect(ops.authenticate(`Bearer ${ALICE}`)).toEqual({ name: 'alice', scope: 'admin' });
    expect(ops.authenticate(`Bearer ${GRAFANA}`)).toEqual({ name: 'grafana', scope: 'read' });
  });

  it('knows only "Bearer <exact token>"', () => {
    const ops = parseTokenFile(goodFile(), 't');
    for (const h of [undefined, '', ALICE, `bearer ${ALICE}`, `Bearer ${ALICE}x`, `Bearer ${ALICE.slice(1)}`, `Bearer  ${ALICE}`, `Bearer ${ALICE} `, `Basic ${ALICE}`, `Bearer ${hashToken(ALICE)}`, `Bearer ${'a'.repeat(100_000)}`]) {
      expect(ops.authenticate(h), String(h).slice(0, 40)).toBeUndefined();
    }
  });

  it('new tokens are 32 random bytes, base64url, and differ', () => {
    const a = newToken();
    expect(a).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(newToken()).not.toBe(a);
    expect(parseTokenFile(tokenLine({ name: 'x', scope: 'read' }, a), 't').authenticate(`Bearer ${a}`)).toEqual({ name: 'x', scope: 'read' });
  });

  it('refuses a file group or others can access, one owned by another user, a symlink, a missing file', () => {
    expect(() => loadOperatorTokens(write('open', goodFile(), 0o644))).toThrow(/open to group or others \(mode 644\): chmod 600 it/);
    expect(() => loadOperatorTokens(write('group', goodFile(), 0o640))).toThrow(/mode 640/);
    expect(() => loadOperatorTokens(path.join(dir, 'missing'))).toThrow(/API token file .*missing does not exist/);
    const link = path.join(dir, 'link');
    fs.symlinkSync(write('target', goodFile()), link);
    expect(() => loadOperatorTokens(link)).toThrow(/is a symbolic link/);
    if (process.geteuid?.() === 0) {
      const foreign = write('foreign', goodFile());
      fs.chownSync(foreign, 65534, 65534);
      expect(() => loadOperatorTokens(foreign)).toThrow(/belongs to uid 65534, not root or this process's uid 0: chown it/);
    }
    expect(() => readSecretFile(dir, 'token file', 1000)).toThrow(/is not a regular file/);
  });

  it('refuses malformed lines, naming file and line, and never echoes a token', () => {
    const bad = (text: string) => () => parseTokenFile(text, 'tokens');
    expect(bad('# nobody\n')).toThrow(/names no operator/);
    // The file of the single shared token of earlier versions: told how to migrate.
    expect(bad(`${ALICE}\n`)).toThrow(/tokens:1: holds a bare token, the format before per-operator tokens/);
    expect(bad(`alice admin ${ALICE}`)).toThrow(/tokens:1: the token of alice must be given as sha256:<64 lowercase hex digits>, never the token itself/);
    expect(bad(`alice admin ${ALICE}`)).not.toThrow(new RegExp(ALICE));
    expect(bad(`alice root sha256:${hashToken(ALICE)}`)).toThrow(/scope "root" of alice is not one of read, admin/);
    expect(bad(`-alice admin sha256:${hashToken(ALICE)}`)).toThrow(/operator name "-alice"/);
    expect(bad(`alice admin sha256:${hashToken(ALICE)} extra`)).toThrow(/expected 3 fields, found 4/);
    expect(bad(`${tokenLine({ name: 'a', scope: 'admin' }, ALICE)}\n${tokenLine({ name: 'a', scope: 'read' }, GRAFANA)}`)).toThrow(/tokens:2: operator a appears twice/);
    expect(bad(`${tokenLine({ name: 'a', scope: 'admin' }, ALICE)}\n${tokenLine({ name: 'b', scope: 'read' }, ALICE)}`)).toThrow(/tokens:2: b has the same token as an operator above/);
    expect(bad(`alice admin sha256:${hashToken(ALICE).toUpperCase()}`)).toThrow(/sha256:<64 lowercase hex digits>/);
  });
});

describe("batonctl's token (readToken)", () => {
  it('takes one token from the environment or the file, and refuses anything more before it reaches a header', () => {
    const t = newToken();
    expect(readToken({ env: { BATON_API_TOKEN: ` ${t}\n` } })).toBe(t);
    expect(readToken({ env: {}, tokenFile: write('mine', `${t}\n`) })).toBe(t);
    expect(readToken({ env: {} })).toBeUndefined();
    // A second line (a comment, a second token) would put a newline into the Authorization header.
    expect(() => readToken({ env: {}, tokenFile: write('two', `${t}\n# mine\n`) })).toThrow(/token file .*two: not a single API token/);
    expect(() => readToken({ env: { BATON_API_TOKEN: `${t} ${t}` } })).toThrow(/BATON_API_TOKEN: not a single API token/);
    expect(() => readToken({ env: { BATON_API_TOKEN: `${t} ${t}` } })).not.toThrow(new RegExp(t));
  });
});
