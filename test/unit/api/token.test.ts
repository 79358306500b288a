import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { bearerMatches, loadApiToken } from '../../../controller/api/token.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-token-'));
afterEach(() => {
  for (const f of fs.readdirSync(dir)) fs.rmSync(path.join(dir, f));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const write = (name: string, text: string, mode: number) => {
  const file = path.join(dir, name);
  fs.writeFileSync(file, text, { mode });
  fs.chmodSync(file, mode);
  return file;
};

describe('API token', () => {
  it('reads a root-only file, trimmed; the environment overrides it', () => {
    const file = write('t', 'abcdefghijklmnopqrstuvwxyz\n', 0o600);
    expect(loadApiToken(file, {})).toBe('abcdefghijklmnopqrstuvwxyz');
    expect(loadApiToken(file, { BATON_API_TOKEN: 'from-the-environment-1234' })).toBe('from-the-environment-1234');
  });

  it('refuses a file others can read, a missing file, and a short token, saying what to do', () => {
    expect(() => loadApiToken(write('open', 'abcdefghijklmnopqrstuvwxyz', 0o644), {})).toThrow(/readable by others \(mode 644\): chmod 600/);
    expect(() => loadApiToken(path.join(dir, 'missing'), {})).toThrow(/create it: head -c 32 \/dev\/urandom/);
    expect(() => loadApiToken(write('short', 'abc', 0o600), {})).toThrow(/at least 16 characters/);
  });

  it('matches only "Bearer <exact token>"', () => {
    const token = 'abcdefghijklmnopqrstuvwxyz';
    expect(bearerMatches(`Bearer ${token}`, token)).toBe(true);
    expect(bearerMatches(`Bearer ${token}x`, token)).toBe(false);
    expect(bearerMatches(`bearer ${token}`, token)).toBe(false);
    expect(bearerMatches(token, token)).toBe(false);
    expect(bearerMatches(undefined, token)).toBe(false);
  });
});
