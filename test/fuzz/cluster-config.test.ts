// Bad input in the cluster file: batond reads it at start, and an operator's typo, a truncated
// copy or a hostile edit must end in one E_CONFIG error naming where, never in a stack overflow,
// a hang or a half-read config. Valid files broken by hostile JSON fragments (JSON is YAML) at
// every key, YAML-only constructs (aliases, anchors, tags, deep block nesting), and raw bytes.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { sampleConfig } from '../helpers/config.js';
import { type ClusterConfig, MAX_CONFIG_BYTES, readClusterConfig } from '../../controller/config/cluster.js';
import { isBatonError } from '../../controller/errors.js';
import { check, embed, hostileFragment, prototypeFingerprint, runs, SEED, watchProcessErrors } from './fuzz.js';

const good = sampleConfig();

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-config-fuzz-'));
const file = path.join(dir, 'cluster.yaml');
const watch = watchProcessErrors();
const untouched = prototypeFingerprint();
let inputs = 0;
let accepted = 0;

afterAll(() => {
  watch.stop();
  fs.rmSync(dir, { recursive: true, force: true });
  console.log(`config fuzz: ${inputs} inputs (${accepted} accepted), seed ${SEED}`);
});

/** Reads bytes as batond would: a config, or one E_CONFIG error of bounded length. Anything else fails. */
function read(bytes: Buffer): { ok: true; config: ClusterConfig } | { ok: false; message: string } {
  inputs++;
  fs.writeFileSync(file, bytes);
  try {
    return { ok: true, config: readClusterConfig(file) };
  } catch (err) {
    expect(isBatonError(err, 'E_CONFIG'), `not an E_CONFIG error: ${String(err).slice(0, 300)}`).toBe(true);
    const message = (err as Error).message;
    // Five errors at most, each line bounded: the message quotes positions, not the file.
    expect(message.length).toBeLessThan(2_000);
    return { ok: false, message };
  }
}

const KEYS = [undefined, ...Object.keys(good)];

/**
 * What a config read from hostile bytes must be when it is accepted, checked apart from the schema
 * (which already passed it): plain JSON data, nothing the YAML reader could make besides (a Date,
 * a Map or Set, bytes, a non-finite number, an object of another class); and when the bytes were
 * the good config with one key's value replaced, the good config at every other key.
 */
function expectAccepted(config: ClusterConfig, replaced?: string): void {
  accepted++;
  expect(JSON.parse(JSON.stringify(config))).toStrictEqual(config);
  if (replaced !== undefined) expect({ ...config, [replaced]: null }).toStrictEqual({ ...good, [replaced]: null });
}

describe('cluster config under hostile input', () => {
  it('a hostile JSON fragment at any key (or as the whole file): refused with E_CONFIG, or read as a valid config', () => {
    check(
      'config: hostile fragments',
      fc.property(hostileFragment(MAX_CONFIG_BYTES), fc.constantFrom(...KEYS), (fragment, key) => {
        const r = read(embed(good as unknown as Record<string, unknown>, key, fragment));
        if (r.ok) expectAccepted(r.config, key);
      }),
      // Deep YAML costs the parser ~0.4 s per 10^5 levels: a sample per run, every kind over a few seeds.
      runs(60),
    );
  });

  it('YAML-only constructs: deep block nesting, alias bombs, tags, anchors: refused with E_CONFIG', () => {
    const base = stringify(good);
    const cases: Array<[string, string]> = [
      ['block nesting 10^4', `${base}extra:\n${Array.from({ length: 10_000 }, (_, i) => `${' '.repeat(i + 1)}k${i}:`).join('\n')} 1\n`],
      ['flow nesting 10^5', `${base}extra: ${'['.repeat(100_000)}${']'.repeat(100_000)}\n`],
      ['flow mappings 10^5', `${base}extra: ${'{a: '.repeat(100_000)}1${'}'.repeat(100_000)}\n`],
      ['alias bomb', `a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n`],
      ['custom tag', `${base}extra: !!js/function "function(){}"\n`],
      ['merge key into a node', base.replace('nodes:\n', 'x: &n {name: evil}\nnodes:\n') + '  - <<: *n\n'],
      ['prototype key', `${base}__proto__:\n  polluted: 1\n`],
      ['duplicate key', `${base}instance: other\n`],
      ['past the size bound', `${base}# ${'x'.repeat(MAX_CONFIG_BYTES)}\n`],
    ];
    for (const [name, text] of cases) {
      const r = read(Buffer.from(text));
      expect(r.ok, name).toBe(false);
    }
  });

  it('random bytes and damaged valid files: E_CONFIG or a valid config, never anything else', () => {
    const valid = Buffer.from(stringify(good));
    check(
      'config: bytes',
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 512 }).map((a) => Buffer.from(a)),
          fc.tuple(fc.nat(valid.length), fc.uint8Array({ minLength: 1, maxLength: 8 })).map(([at, ins]) => Buffer.concat([valid.subarray(0, at), Buffer.from(ins), valid.subarray(at)])),
          fc.nat(valid.length).map((at) => valid.subarray(0, at)),
        ),
        (bytes) => {
          const r = read(bytes);
          if (r.ok) expectAccepted(r.config);
        },
      ),
      runs(500),
    );
  });

  it('nothing escaped: no process error, no polluted prototype', () => {
    expect(watch.errors).toEqual([]);
    expect(prototypeFingerprint()).toBe(untouched);
  });
});
