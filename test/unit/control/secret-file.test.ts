// The control secret file, read the same way by batond and every application
// (readControlSecret): 64 hex digits, nothing more, and never more than a few KiB read.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readControlSecret } from '../../../controller/control/messages.js';
import { ensureControlSecret } from '../../../controller/control/server.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-secret-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const write = (name: string, text: string) => {
  const file = path.join(dir, name);
  fs.writeFileSync(file, text, { mode: 0o600 });
  return file;
};

describe('control secret file', () => {
  it('batond creates it once, root-only, and both sides read the same key from it', () => {
    const file = path.join(dir, 'new', 'control.secret');
    const key = ensureControlSecret(file);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(ensureControlSecret(file)).toEqual(key);
    expect(readControlSecret(file)).toEqual(key);
    expect(key.toString()).toMatch(/^[0-9a-f]{64}$/);
  });

  it('refuses, by name, a file that is not 64 hex digits, not a regular file, too large or missing', () => {
    expect(() => readControlSecret(write('short', 'abc\n'))).toThrow(/control secret .*short must hold 64 hex digits/);
    expect(() => readControlSecret(dir)).toThrow(/cannot read the control secret .*: not a regular file/);
    expect(() => readControlSecret(write('big', 'a'.repeat(5000)))).toThrow(/5000 bytes, more than a secret/);
    expect(() => readControlSecret(path.join(dir, 'missing'))).toThrow(/cannot read the control secret .*missing/);
  });
});
