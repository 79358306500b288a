// Bad input on the control socket (claims 18–24): random bytes, random JSON and schema-breaking
// datagrams into decodeDatagram, then a flood of forged and malformed datagrams over real UDP
// into a real ControlServer. Nothing may register, the target directory may not change, and the
// drop counters must add up to exactly what was sent, reason by reason as docs/protocol.md lists
// them. The only answer a forged datagram may get is "ack ok:false" to a heartbeat, update or
// unregister that carried the right secret for a registration that does not exist.
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import fc from 'fast-check';
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import type { TSchema } from '@sinclair/typebox';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TargetDirectory } from '../../controller/control/directory.js';
import { ControlSchemas, type ControlType, decodeDatagram, FromAgent, FromApplication, MAX_DATAGRAM_BYTES } from '../../controller/control/messages.js';
import { ControlServer } from '../../controller/control/server.js';
import { createLogger } from '../../controller/log.js';
import { broken, check, checkAsync, defineOwn, PROTO_KEYS, prototypeFingerprint, runs, SEED, valid, watchProcessErrors } from './fuzz.js';

const log = createLogger({}, 'silent');
const TYPES = Object.keys(ControlSchemas) as ControlType[];
const fromApp = FromApplication as readonly string[];
const checks = Object.fromEntries(TYPES.map((t) => [t, TypeCompiler.Compile(ControlSchemas[t] as TSchema)])) as Record<ControlType, TypeCheck<TSchema>>;
/** The largest payload a UDP datagram can carry over IPv4. */
const UDP_MAX = 65_507;
const DVIPA_PORT = 7000;

let inputs = 0;
const watch = watchProcessErrors();
const untouched = prototypeFingerprint();

afterAll(() => {
  watch.stop();
  console.log(`control fuzz: ${inputs} inputs, seed ${SEED}`);
});

/** The drop reason the decoding steps of docs/protocol.md give, in their order; undefined: decodes. */
function decodeVerdict(buf: Buffer): string | undefined {
  if (buf.length > MAX_DATAGRAM_BYTES) return 'too-large';
  let value: unknown;
  try {
    value = JSON.parse(buf.toString('utf8'));
  } catch {
    return 'not-json';
  }
  const type = value !== null && typeof value === 'object' ? (value as { type?: unknown }).type : undefined;
  if (typeof type !== 'string' || !fromApp.includes(type)) return 'unexpected-type';
  return checks[type as ControlType].Check(value) ? undefined : 'schema';
}

const hex = (n: number) => fc.stringMatching(new RegExp(`^[0-9a-f]{${n}}$`));
const json = (v: unknown) => Buffer.from(JSON.stringify(v));

/** A datagram and the reason the server must drop it for. */
interface Forged {
  buf: Buffer;
  reason: string;
  /** Types that carried the right secret: the server counts them as accepted datagrams. */
  authentic?: string;
}

function forgeries(secret: string): fc.Arbitrary<Forged> {
  const appDatagram = fc.constantFrom(...FromApplication).chain((type) => valid(ControlSchemas[type]).map((v) => v as Record<string, unknown>));
  const noise = fc
    .oneof(
      fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)),
      fc.json({ maxDepth: 3 }).map((t) => Buffer.from(t)),
      fc.tuple(fc.dictionary(fc.oneof(fc.string({ maxLength: 6 }), fc.constantFrom('v', 'type', 'token', 'id', 'ports', ...PROTO_KEYS)), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 5 }), fc.constantFrom(...TYPES, ...PROTO_KEYS)).map(([fields, type]) => {
        const o: Record<string, unknown> = { v: 1 };
        for (const [k, val] of Object.entries(fields)) defineOwn(o, k, val);
        defineOwn(o, 'type', type);
        return json(o);
      }),
    )
    // Noise that happens to decode carries no secret: it must be refused for its token.
    .map((buf): Forged => ({ buf, reason: decodeVerdict(buf) ?? 'bad-token' }))
    .filter((f) => f.reason !== 'bad-token' || !f.buf.includes(secret));
  return fc
    .oneof(
      noise,
      // What batond sends, sent to it: only applications' types are taken.
      fc.constantFrom(...FromAgent).chain((type) => valid(ControlSchemas[type]).map((v) => ({ buf: json(v), reason: 'unexpected-type' }))),
      // Well-formed, but the secret is wrong.
      fc.tuple(appDatagram, hex(64).filter((t) => t !== secret)).map(([d, token]) => ({ buf: json({ ...d, token }), reason: 'bad-token' })),
      // One schema violation, secret right or wrong: the schema is checked first.
      fc.tuple(appDatagram, fc.boolean()).chain(([d, right]) =>
        broken(ControlSchemas[d.type as ControlType], right ? { ...d, token: secret } : d).map((b) => {
          const buf = json(b.value);
          return { buf, reason: decodeVerdict(buf) ?? `not broken: ${b.where}` };
        }),
      ),
      // The right secret, for a port no DVIPA serves.
      fc.tuple(valid(ControlSchemas.register), fc.integer({ min: 1, max: 65535 }).filter((p) => p !== DVIPA_PORT)).map(([d, foreign]) => {
        const r = d as Record<string, unknown> & { ports: number[] };
        return { buf: json({ ...r, token: secret, ports: [...r.ports.slice(0, 63), foreign] }), reason: 'port', authentic: 'register' };
      }),
      // The right secret, for a registration that does not exist.
      fc.constantFrom(...(['heartbeat', 'update', 'unregister'] as const)).chain((type) =>
        valid(ControlSchemas[type]).map((d) => ({ buf: json({ ...(d as object), token: secret }), reason: 'unknown-registration', authentic: type })),
      ),
      // Too large, however well-formed inside.
      appDatagram.map((d) => {
        const text = JSON.stringify({ ...d, token: secret });
        return { buf: Buffer.from(text.slice(0, -1) + ' '.repeat(MAX_DATAGRAM_BYTES) + '}'), reason: 'too-large' };
      }),
    )
    // A datagram past what UDP carries cannot be sent at all; decodeDatagram alone sees those.
    .filter((f) => f.buf.length <= UDP_MAX);
}

describe('decodeDatagram', () => {
  it('random bytes and JSON: never throws, refuses with the documented reason in the documented order', () => {
    const anyDatagram = fc.oneof(
      fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
      fc.json({ maxDepth: 4 }).map((t) => Buffer.from(t)),
      fc.jsonValue({ maxDepth: 3 }).map((v) => json(v)),
      fc.tuple(fc.constantFrom(...TYPES, ...PROTO_KEYS, 'x'), fc.dictionary(fc.constantFrom('v', 'token', 'id', 'app', 'role', 'ports', 'load', ...PROTO_KEYS), fc.jsonValue({ maxDepth: 2 }))).map(([type, fields]) => {
        const o: Record<string, unknown> = {};
        for (const [k, val] of Object.entries(fields)) defineOwn(o, k, val);
        defineOwn(o, 'type', type);
        return json(o);
      }),
    );
    check(
      'decodeDatagram: random',
      fc.property(anyDatagram, (buf) => {
        inputs++;
        const got = decodeDatagram(buf, FromApplication);
        const want = decodeVerdict(buf);
        if (want === undefined) expect(got.ok).toBe(true);
        else expect(got).toMatchObject({ ok: false, reason: want });
      }),
      runs(15_000),
    );
  });

  it('valid datagrams of every type: taken when an application may send them, unexpected-type otherwise', () => {
    check(
      'decodeDatagram: valid',
      fc.property(fc.constantFrom(...TYPES).chain((t) => valid(ControlSchemas[t])), (d) => {
        inputs++;
        const got = decodeDatagram(json(d), FromApplication);
        const type = (d as { type: string }).type;
        if (fromApp.includes(type)) expect(got).toEqual({ ok: true, msg: d });
        else expect(got).toMatchObject({ ok: false, reason: 'unexpected-type' });
      }),
      runs(5_000),
    );
  });

  it('one schema violation (wrong type, extra or prototype key, missing key, bad token or id, too many ports): schema, or unexpected-type when the type itself broke', () => {
    const damaged = fc.constantFrom(...FromApplication).chain((type) => valid(ControlSchemas[type]).chain((v) => broken(ControlSchemas[type], v as Record<string, unknown>)));
    check(
      'decodeDatagram: schema violations',
      fc.property(damaged, ({ value, where }) => {
        inputs++;
        const buf = json(value);
        const got = decodeDatagram(buf, FromApplication);
        const typeBroke = typeof value.type !== 'string' || !fromApp.includes(value.type);
        const want = buf.length > MAX_DATAGRAM_BYTES ? 'too-large' : typeBroke ? 'unexpected-type' : 'schema';
        expect(got, where).toMatchObject({ ok: false, reason: want });
        expect(prototypeFingerprint()).toBe(untouched);
      }),
      runs(10_000),
    );
  });
});

describe('a real ControlServer under a flood of forged datagrams', () => {
  const secret = randomBytes(32).toString('hex');
  const directory = new TargetDirectory(60_000);
  let changes = 0;
  directory.on('change', () => changes++);
  const metricDrops = new Map<string, number>();
  const metricDatagrams = new Map<string, number>();
  const bump = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
  let server: ControlServer;
  let port = 0;
  const client = dgram.createSocket('udp4');
  const replies: Array<Record<string, unknown>> = [];

  beforeAll(async () => {
    // ControlServer binds the port it is given: take a free one from the kernel, retrying the rare race.
    for (let attempt = 0; ; attempt++) {
      const probe = dgram.createSocket('udp4');
      port = await new Promise<number>((r) => probe.bind(0, '127.0.0.1', () => r(probe.address().port)));
      await new Promise<void>((r) => probe.close(() => r()));
      server = new ControlServer({
        node: 'n2',
        port,
        secret: Buffer.from(secret),
        dvipaPorts: () => [DVIPA_PORT],
        directory,
        log,
        metrics: { datagram: (t) => bump(metricDatagrams, t), drop: (r) => bump(metricDrops, r) },
      });
      try {
        await server.start();
        break;
      } catch (err) {
        if (attempt >= 4) throw err;
      }
    }
    client.on('message', (buf) => replies.push(JSON.parse(buf.toString('utf8')) as Record<string, unknown>));
    await new Promise<void>((r) => client.bind(0, '127.0.0.1', () => r()));
  });

  afterAll(() => {
    server.close();
    client.close();
    directory.close();
  });

  const totalDropped = () => [...server.dropped.values()].reduce((a, b) => a + b, 0);

  async function until(cond: () => boolean, what: string): Promise<void> {
    const deadline = Date.now() + 2_000;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setImmediate(r));
    }
  }

  const send = (buf: Buffer) =>
    new Promise<void>((resolve, reject) => client.send(buf, port, '127.0.0.1', (err) => (err ? reject(err) : resolve())));

  it('drops every one, counted by its reason; nothing registers, the directory never changes', async () => {
    const forged = forgeries(secret);
    let sent = 0;
    const expected = new Map<string, number>();
    const authentic = new Map<string, number>();
    await checkAsync(
      'control server: flood',
      fc.asyncProperty(fc.array(forged, { minLength: 50, maxLength: 150 }), async (batch) => {
        const before = new Map(server.dropped);
        const base = totalDropped();
        const repliesBefore = replies.length;
        let sentNow = 0;
        // Windows small enough for the socket buffers: a lost datagram would be the kernel's
        // doing, not the server's, and the exact count below would be meaningless.
        let window = 0;
        for (const f of batch) {
          if (window + f.buf.length > 48 * 1024 || f.buf.length > 8 * 1024) {
            await until(() => totalDropped() - base === sentNow, 'the server to drop everything sent so far');
            window = 0;
          }
          await send(f.buf);
          sent++;
          sentNow++;
          window += f.buf.length;
          inputs++;
        }
        await until(() => totalDropped() - base === batch.length, 'the server to drop the whole batch');

        const want = new Map<string, number>();
        for (const f of batch) {
          bump(want, f.reason);
          bump(expected, f.reason);
          if (f.authentic) bump(authentic, f.authentic);
        }
        for (const [reason, n] of want) expect(server.dropped.get(reason)! - (before.get(reason) ?? 0), reason).toBe(n);
        expect(server.counts()).toMatchObject({ routers: 0, targets: 0 });
        expect(directory.all()).toEqual([]);
        const acks = want.get('unknown-registration') ?? 0;
        await until(() => replies.length - repliesBefore >= acks, 'the acks');
        for (const r of replies.slice(repliesBefore)) expect(r).toMatchObject({ type: 'ack', ok: false });
      }),
      runs(120),
    );
    // Nothing late: no reply beyond the acks, no registration pushed afterwards.
    await new Promise((r) => setTimeout(r, 100));
    console.log(`control flood: ${sent} datagrams over UDP, dropped ${JSON.stringify(Object.fromEntries([...server.dropped].sort()))}`);
    expect(totalDropped()).toBe(sent);
    expect(new Map([...server.dropped].sort())).toEqual(new Map([...expected].sort()));
    expect(new Map([...metricDrops].sort())).toEqual(new Map([...expected].sort()));
    expect(new Map([...metricDatagrams].sort())).toEqual(new Map([...authentic].sort()));
    expect(replies).toHaveLength(expected.get('unknown-registration') ?? 0);
    expect(replies.every((r) => r.type === 'ack' && r.ok === false)).toBe(true);
    expect(changes).toBe(0);
    expect(directory.seq).toBe(0);
    expect(sent).toBeGreaterThanOrEqual(runs(120) * 50);
  });
});

describe('nothing escaped', () => {
  it('no uncaught exception, no unhandled rejection, no polluted prototype', () => {
    expect(watch.errors).toEqual([]);
    expect(prototypeFingerprint()).toBe(untouched);
    expect(inputs).toBeGreaterThanOrEqual(runs(30_000));
  });
});
