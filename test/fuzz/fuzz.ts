// Shared by the fuzz suites: the seed, a run wrapper that names the seed when a property fails,
// a watch on process-level errors, and generators driven by the TypeBox schemas the decoders use.
//
// Generators come from the schemas on purpose: a valid value of any message type, and a copy of
// it broken at one place in a way the schema forbids (wrong type, extra key, missing key, out of
// range, too long, off pattern, too many items). The oracle is then exact: the valid one must be
// accepted, the broken one refused with the reason the protocol docs give for it.
import fc from 'fast-check';
import { Kind, type TSchema } from '@sinclair/typebox';

/** One seed for every suite; BATON_FUZZ_SEED replays another run, BATON_FUZZ_SCALE runs longer. */
export const SEED = Number(process.env.BATON_FUZZ_SEED ?? 0x0ba70);
const SCALE = Number(process.env.BATON_FUZZ_SCALE ?? 1);

export const runs = (n: number): number => Math.max(1, Math.round(n * SCALE));

function replayHint(name: string, err: unknown): Error {
  const cause = (err as { cause?: unknown }).cause;
  const why = cause instanceof Error ? `\ncause: ${cause.message}` : '';
  return new Error(`fuzz "${name}" failed with seed ${SEED} (replay: BATON_FUZZ_SEED=${SEED} npx vitest run test/fuzz)\n${(err as Error).message}${why}`, { cause });
}

export function check<T>(name: string, prop: fc.IProperty<T>, numRuns: number): void {
  try {
    fc.assert(prop, { seed: SEED, numRuns, endOnFailure: false });
  } catch (err) {
    throw replayHint(name, err);
  }
}

export async function checkAsync<T>(name: string, prop: fc.IAsyncProperty<T>, numRuns: number): Promise<void> {
  try {
    await fc.assert(prop, { seed: SEED, numRuns, endOnFailure: false });
  } catch (err) {
    throw replayHint(name, err);
  }
}

/**
 * Records uncaught exceptions and unhandled rejections while a suite runs. Vitest reports them
 * too, but as a failure of the whole run, not of the suite that caused them; this names it.
 */
export function watchProcessErrors(): { errors: unknown[]; stop(): void } {
  const errors: unknown[] = [];
  const onError = (err: unknown) => errors.push(err);
  process.on('uncaughtException', onError);
  process.on('unhandledRejection', onError);
  return {
    errors,
    stop() {
      process.off('uncaughtException', onError);
      process.off('unhandledRejection', onError);
    },
  };
}

/** Keys that would pollute a prototype if a decoder assigned them instead of defining them. */
export const PROTO_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf', '__defineGetter__'];

/** What Object.prototype holds, names and values; compare after a run to catch pollution. */
export function prototypeFingerprint(): string {
  return Object.getOwnPropertyNames(Object.prototype)
    .sort()
    .map((name) => {
      const d = Object.getOwnPropertyDescriptor(Object.prototype, name)!;
      return `${name}=${'value' in d ? String(d.value) : 'accessor'}`;
    })
    .join(';');
}

/** Sets a key as an own enumerable property, even `__proto__` (assignment would set the prototype). */
export function defineOwn(target: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
}

type Schema = TSchema & Record<string, unknown>;

const isObject = (s: Schema) => s.type === 'object';
const isUnknown = (s: Schema) => s[Kind] === 'Unknown';

// Building an arbitrary (stringMatching parses its regex) costs far more than drawing from it.
const built = new WeakMap<TSchema, fc.Arbitrary<unknown>>();

/** A value the schema accepts. Only the subset of JSON Schema Baton's schemas use is handled. */
export function valid(schema: TSchema): fc.Arbitrary<unknown> {
  let arb = built.get(schema);
  if (!arb) {
    arb = build(schema);
    built.set(schema, arb);
  }
  return arb;
}

function build(schema: TSchema): fc.Arbitrary<unknown> {
  const s = schema as Schema;
  if ('const' in s) return fc.constant(s.const);
  if (Array.isArray(s.anyOf)) return fc.oneof(...(s.anyOf as TSchema[]).map(valid));
  if (isUnknown(s)) return fc.jsonValue({ maxDepth: 3 });
  switch (s.type) {
    case 'boolean':
      return fc.boolean();
    case 'integer':
      return fc.integer({ min: (s.minimum as number | undefined) ?? -(2 ** 40), max: (s.maximum as number | undefined) ?? 2 ** 40 });
    case 'number':
      return fc.double({ min: (s.minimum as number | undefined) ?? -1e12, max: (s.maximum as number | undefined) ?? 1e12, noNaN: true, noDefaultInfinity: true });
    case 'string': {
      const min = (s.minLength as number | undefined) ?? 0;
      const max = (s.maxLength as number | undefined) ?? 64;
      const re = typeof s.pattern === 'string' ? new RegExp(s.pattern) : undefined;
      const base = re ? fc.stringMatching(re).map((v) => v.slice(0, max)) : fc.string({ maxLength: Math.min(max, 64), unit: 'binary' });
      return base.filter((v) => v.length >= min && v.length <= max && (!re || re.test(v)));
    }
    case 'array': {
      const items = valid(s.items as TSchema);
      const minLength = (s.minItems as number | undefined) ?? 0;
      const maxLength = Math.min((s.maxItems as number | undefined) ?? 4, minLength + 4);
      return s.uniqueItems ? fc.uniqueArray(items, { minLength, maxLength, selector: (v) => JSON.stringify(v) }) : fc.array(items, { minLength, maxLength });
    }
    case 'object': {
      const props = s.properties as Record<string, TSchema>;
      const required = (s.required as string[] | undefined) ?? [];
      const model = Object.fromEntries(Object.entries(props).map(([k, v]) => [k, valid(v)]));
      return fc.record(model, { requiredKeys: required });
    }
  }
  throw new Error(`no generator for schema ${JSON.stringify(s)}`);
}

/** One place in a value and the schema that governs it. */
interface Site {
  path: (string | number)[];
  schema: Schema;
}

function sites(schema: TSchema, value: unknown, path: (string | number)[] = [], skip: ReadonlySet<string> = new Set()): Site[] {
  const s = schema as Schema;
  const here: Site[] = isUnknown(s) ? [] : [{ path, schema: s }];
  if (isObject(s) && value && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, sub] of Object.entries(s.properties as Record<string, TSchema>)) {
      if (path.length === 0 && skip.has(k)) continue;
      if (k in (value as object)) here.push(...sites(sub, (value as Record<string, unknown>)[k], [...path, k]));
    }
  }
  if (s.type === 'array' && Array.isArray(value)) value.forEach((v, i) => here.push(...sites(s.items as TSchema, v, [...path, i])));
  return here;
}

const HUGE = 70 * 1024;

/** Values a site's schema refuses, whatever the rest of the message. */
function violations(s: Schema, current: unknown, atRoot: ReadonlySet<string> | undefined): fc.Arbitrary<{ kind: string; apply: (v: unknown) => unknown }> {
  const replace = (kind: string, value: unknown) => ({ kind, apply: () => value });
  const notOf = (kind: string, values: unknown[]) => fc.constantFrom(...values.map((v) => replace(kind, v)));
  const out: fc.Arbitrary<{ kind: string; apply: (v: unknown) => unknown }>[] = [];
  if ('const' in s || Array.isArray(s.anyOf)) {
    const allowed = 'const' in s ? [s.const] : (s.anyOf as Schema[]).map((a) => a.const);
    out.push(notOf('literal', ['x-not-allowed', 2, 0, null, true, [], {}, ...PROTO_KEYS].filter((v) => !allowed.includes(v))));
  } else if (s.type === 'boolean') {
    out.push(notOf('wrong-type', ['true', 0, 1, null, [], {}]));
  } else if (s.type === 'integer' || s.type === 'number') {
    const wrong: unknown[] = ['1', null, true, [], {}];
    if (s.type === 'integer') wrong.push(1.5);
    if (typeof s.minimum === 'number') wrong.push(s.minimum - 1, -1e300);
    if (typeof s.maximum === 'number') wrong.push(s.maximum + 1, 1e300);
    out.push(notOf('wrong-number', wrong));
  } else if (s.type === 'string') {
    out.push(notOf('wrong-type', [7, null, false, [], {}]));
    if (typeof s.maxLength === 'number') {
      const max = s.maxLength;
      out.push(fc.constantFrom(max + 1, max + 100, HUGE).map((n) => replace('too-long', 'a'.repeat(n))));
    }
    if (typeof s.minLength === 'number' && s.minLength > 0) out.push(fc.constant(replace('too-short', '')));
    if (typeof s.pattern === 'string') {
      const re = new RegExp(s.pattern);
      const base = typeof current === 'string' ? current : '';
      out.push(
        fc
          .tuple(fc.nat(base.length), fc.constantFrom('/', ' ', '\u0000', '\n', '"', '\\', 'é', '\u{1F600}', '..%2f', '<'))
          .map(([at, bad]) => base.slice(0, at) + bad + base.slice(at))
          .filter((v) => !re.test(v))
          .map((v) => replace('pattern', v)),
      );
      // Patterns bound their length too ({0,62}): a huge run of allowed characters breaks them.
      const huge = 'A'.repeat(HUGE);
      if (!re.test(huge)) out.push(fc.constant(replace('huge', huge)));
    }
  } else if (s.type === 'array') {
    out.push(notOf('wrong-type', [{}, 'a', 1, null]));
    const arr = Array.isArray(current) ? current : [];
    if (typeof s.maxItems === 'number' && arr.length > 0) {
      const n = s.maxItems + 1;
      out.push(fc.constant({ kind: 'too-many', apply: () => Array.from({ length: n }, (_, i) => arr[i % arr.length]) }));
    }
    if (typeof s.minItems === 'number' && s.minItems > 0) out.push(fc.constant(replace('too-few', [])));
    if (s.uniqueItems && arr.length > 0) out.push(fc.constant({ kind: 'duplicate', apply: () => [...arr, arr[0]] }));
  } else if (isObject(s)) {
    // The root stays an object: framing refuses any other header before a schema is consulted.
    if (!atRoot) out.push(notOf('wrong-type', [[], 'a', 1, null]));
    if (s.additionalProperties === false) {
      out.push(
        fc.constantFrom(...PROTO_KEYS, 'unexpectedKey').chain((key) =>
          fc.jsonValue({ maxDepth: 2 }).map((extra) => ({
            kind: `extra-key ${key}`,
            apply: (v: unknown) => {
              const copy = structuredClone(v) as Record<string, unknown>;
              defineOwn(copy, key, extra);
              return copy;
            },
          })),
        ),
      );
    }
    const present = ((s.required as string[] | undefined) ?? []).filter((k) => current && typeof current === 'object' && k in current && !atRoot?.has(k));
    if (present.length > 0) {
      out.push(
        fc.constantFrom(...present).map((key) => ({
          kind: `missing ${key}`,
          apply: (v: unknown) => {
            const copy = structuredClone(v) as Record<string, unknown>;
            delete copy[key];
            return copy;
          },
        })),
      );
    }
  }
  if (out.length === 0) throw new Error(`no violation for schema ${JSON.stringify(s)}`);
  return fc.oneof(...out);
}

export interface Broken {
  value: Record<string, unknown>;
  /** Where the value was broken, JSON-pointer style, and how. */
  where: string;
}

/**
 * A copy of `value` (valid for `schema`) broken at one site. `skip` names top-level keys not to
 * touch (the frame's own `blobs`, which framing checks before any schema does).
 */
export function broken(schema: TSchema, value: Record<string, unknown>, skip: ReadonlySet<string> = new Set()): fc.Arbitrary<Broken> {
  const all = sites(schema, value, [], skip);
  return fc.constantFrom(...all).chain((site) =>
    violations(site.schema, get(value, site.path), site.path.length === 0 ? skip : undefined).map((v) => ({
      value: set(value, site.path, v.apply(get(value, site.path))),
      where: `/${site.path.join('/')} ${v.kind}`,
    })),
  );
}

function get(value: unknown, path: (string | number)[]): unknown {
  return path.reduce<unknown>((v, k) => (v as Record<string | number, unknown>)[k], value);
}

function set(root: Record<string, unknown>, path: (string | number)[], replacement: unknown): Record<string, unknown> {
  if (path.length === 0) return replacement as Record<string, unknown>;
  const copy = structuredClone(root);
  const parent = get(copy, path.slice(0, -1)) as Record<string | number, unknown>;
  const key = path[path.length - 1]!;
  if (typeof key === 'string') defineOwn(parent as Record<string, unknown>, key, replacement);
  else parent[key] = replacement;
  return copy;
}

/** Byte-level damage to a buffer: what a broken peer or a corrupting middlebox might deliver. */
export function mutatedBytes(original: Uint8Array): fc.Arbitrary<Buffer> {
  const len = original.length;
  const u32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n >>> 0);
    return b;
  };
  type Edit = (b: Buffer) => Buffer;
  const edit: fc.Arbitrary<Edit> = fc.oneof<fc.Arbitrary<Edit>[]>(
    fc.tuple(fc.nat(Math.max(0, len - 1)), fc.nat(7)).map(([at, bit]) => (b: Buffer) => {
      if (b.length > 0) b[at % b.length] = (b[at % b.length] ?? 0) ^ (1 << bit);
      return b;
    }),
    fc.tuple(fc.nat(Math.max(0, len - 1)), fc.nat(255)).map(([at, byte]) => (b: Buffer) => {
      if (b.length > 0) b[at % b.length] = byte;
      return b;
    }),
    fc.tuple(fc.nat(len), fc.nat(len)).map(([a, z]) => (b: Buffer) => Buffer.concat([b.subarray(0, Math.min(a, z)), b.subarray(Math.max(a, z))])),
    fc.tuple(fc.nat(len), fc.uint8Array({ maxLength: 16 })).map(([at, ins]) => (b: Buffer) => Buffer.concat([b.subarray(0, at), Buffer.from(ins), b.subarray(at)])),
    fc.nat(len).map((at) => (b: Buffer) => b.subarray(0, at)),
    fc.tuple(fc.nat(len), fc.nat(len)).map(([a, z]) => (b: Buffer) => Buffer.concat([b, b.subarray(Math.min(a, z), Math.max(a, z))])),
    // Length fields are where a decoder is most fragile: put edge values into either prefix.
    fc.tuple(fc.constantFrom(0, 4), fc.constantFrom(0, 1, 3, 4, 5, 0x7fffffff, 0xffffffff, 64 * 1024, 64 * 1024 + 1, 64 * 1024 * 1024 + 1)).map(([at, n]) => (b: Buffer) => {
      if (b.length >= at + 4) u32(n).copy(b, at);
      return b;
    }),
  );
  return fc.array(edit, { minLength: 1, maxLength: 4 }).map((edits) => edits.reduce<Buffer>((b, e) => e(b), Buffer.from(original)));
}

/** Cut points that split a buffer into chunks as a socket might deliver them. */
export function chunked(buf: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (buf.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let from = 0;
  for (const p of [...points, buf.length]) {
    if (p > from) out.push(buf.subarray(from, p));
    from = Math.max(from, p);
  }
  return out;
}

// ---- hostile JSON: what every decoder of JSON text must survive -------------------------------
//
// Not schema-driven: inputs chosen for what they do to a parser and to what runs after it. Deep
// nesting (V8 parses 10^5 levels, but JSON.stringify of the result overflows the stack: one
// datagram killed a batond that way), numbers past a double or exactly at its edges, strings up
// to a size limit, keys that pollute a prototype if assigned, NUL bytes (escaped, and raw, which
// JSON forbids), and byte strings that are not UTF-8 (a lenient decoder would turn them into
// U+FFFD, so two different byte strings could mean one message).

export interface HostileFragment {
  kind: string;
  /** A JSON value as bytes (or, for the invalid kinds, bytes that are meant to be refused). */
  bytes: Buffer;
}

const deepArray = (n: number) => `${'['.repeat(n)}${']'.repeat(n)}`;
const deepObject = (n: number) => `${'{"a":'.repeat(n)}0${'}'.repeat(n)}`;
const deepMixed = (n: number) => `${'[{"k":'.repeat(n)}null${'}]'.repeat(n)}`;

/** Depths around every limit: just past MAX_JSON_DEPTH (64), thousands, the 30,700, and 10^5. */
export const HOSTILE_DEPTHS = [65, 70, 1_000, 30_700, 100_000] as const;

const fixedFragments: Array<[string, string | Buffer]> = [
  ['huge-number 1e400', '1e400'],
  ['huge-number -1e400', '-1e400'],
  ['huge-number 400 digits', `1${'0'.repeat(400)}`],
  ['huge-number 2^64', '18446744073709551616'],
  ['tiny-number 1e-400', '1e-400'],
  ['negative zero', '-0'],
  ['long fraction', `0.${'1'.repeat(2000)}`],
  ['proto keys', '{"__proto__":{"polluted":1},"constructor":{"prototype":{"polluted":1}},"prototype":{"polluted":1}}'],
  ['proto key nested', '{"a":{"__proto__":{"polluted":1}}}'],
  ['escaped NUL', '"a\\u0000b\\u0000"'],
  ['raw NUL in string', Buffer.from([0x22, 0x61, 0x00, 0x62, 0x22])],
  ['raw NUL outside', Buffer.from([0x00])],
  ['lone surrogate escape', '"\\ud800"'],
  ['invalid UTF-8 0xff', Buffer.from([0x22, 0xff, 0x22])],
  ['invalid UTF-8 truncated', Buffer.from([0x22, 0xc3, 0x22])],
  ['invalid UTF-8 overlong', Buffer.from([0x22, 0xc0, 0xaf, 0x22])],
  ['invalid UTF-8 surrogate', Buffer.from([0x22, 0xed, 0xa0, 0x80, 0x22])],
  ['BOM', Buffer.from([0xef, 0xbb, 0xbf, 0x22, 0x61, 0x22])],
];

/**
 * A hostile JSON fragment for a value position. Sizes go up to maxBytes (the surface's limit) and
 * once past it, so both the size bound and what lies behind it are reached.
 */
export function hostileFragment(maxBytes: number): fc.Arbitrary<HostileFragment> {
  const frag = (kind: string, text: string | Buffer): HostileFragment => ({ kind, bytes: Buffer.isBuffer(text) ? text : Buffer.from(text) });
  return fc.oneof(
    fc.constantFrom(...HOSTILE_DEPTHS).chain((n) =>
      fc.constantFrom(frag(`deep-array ${n}`, deepArray(n)), frag(`deep-object ${n}`, deepObject(n)), frag(`deep-mixed ${n}`, deepMixed(n))),
    ),
    fc.constantFrom(...fixedFragments.map(([k, t]) => frag(k, t))),
    fc.constantFrom(1_000, Math.max(1, maxBytes - 64), maxBytes + 1).map((n) => frag(`long-string ${n}`, `"${'a'.repeat(n)}"`)),
    fc.constantFrom(1_000, Math.max(1, Math.floor(maxBytes / 7))).map((n) => frag(`many-escapes ${n}`, `"${'\\u0000'.repeat(n)}"`)),
    fc.constantFrom(1_000, Math.max(1, Math.floor(maxBytes / 2))).map((n) => frag(`wide-array ${n}`, `[${Array(n).fill('0').join(',')}]`)),
  );
}

const MARK = '@@baton-fuzz-hole@@';

/**
 * JSON text of `template` with the value at `key` (a top-level key) replaced by the fragment's
 * bytes, verbatim; key undefined: the fragment is the whole text.
 */
export function embed(template: Record<string, unknown>, key: string | undefined, fragment: HostileFragment): Buffer {
  if (key === undefined) return fragment.bytes;
  const copy = { ...template };
  defineOwn(copy, key, MARK);
  const [before, after] = JSON.stringify(copy).split(`"${MARK}"`) as [string, string];
  return Buffer.concat([Buffer.from(before), fragment.bytes, Buffer.from(after)]);
}
