// Bad input on the control socket (claims 18–24, version 2): random bytes, random JSON, hostile
// JSON (nesting 65 to 10^5 deep, numbers past a double, strings up to the size limit, prototype
// keys, NUL bytes, invalid UTF-8) and schema-breaking datagrams into decodeDatagram, both ways,
// untagged, wrongly tagged and tagged with the right key (a secret-holding attacker); then a
// flood of all of it, plus replays and batond's own datagrams sent back, over real UDP into a
// real ControlServer. Nothing may register, the target directory may not change, the drop
// counters must add up to exactly what was sent, reason by reason as docs/protocol.md lists them,
// and nothing may throw, escape to the process, pollute Object.prototype, or make a refusal's
// detail (what gets logged) longer than a line.
import { createHmac, randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import fc from 'fast-check';
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import type { TSchema } from '@sinclair/typebox';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TargetDirectory } from '../../controller/control/directory.js';
import {
  CONTROL_MAX_DEPTH, type ControlMessage, ControlSchemas, type ControlType, decodeDatagram, type Direction, encodeDatagram, FromAgent, FromApplication, MAX_DATAGRAM_BYTES, challengeRequest,
} from '../../controller/control/messages.js';
import type { ControlServer } from '../../controller/control/server.js';
import { parseJson } from '../../controller/input.js';
import { createLogger } from '../../controller/log.js';
import { startControlServer } from '../helpers/control.js';
import { until } from '../helpers/wait.js';
import { broken, check, checkAsync, defineOwn, embed, hostileFragment, PROTO_KEYS, prototypeFingerprint, runs, SEED, valid, watchProcessErrors } from './fuzz.js';

const log = createLogger({}, 'silent');
const TYPES = Object.keys(ControlSchemas) as ControlType[];
const checks = Object.fromEntries(TYPES.map((t) => [t, TypeCompiler.Compile(ControlSchemas[t] as TSchema)])) as Record<ControlType, TypeCheck<TSchema>>;
/** The largest payload a UDP datagram can carry over IPv4. */
const UDP_MAX = 65_507;
const DVIPA_PORT = 7000;
/** The longest detail a refusal may carry: it is logged, so it is bounded whatever was sent. */
const MAX_DETAIL = 300;
const KEY = Buffer.from(randomBytes(32).toString('hex'));

let inputs = 0;
const watch = watchProcessErrors();
const untouched = prototypeFingerprint();

afterAll(() => {
  watch.stop();
  console.log(`control fuzz: ${inputs} inputs, seed ${SEED}`);
});

// ---- the oracle: docs/protocol.md's checks, in their order, written out independently --------

/** The labels as docs/protocol.md gives them. */
const LABEL: Record<Direction, string> = { 'to-batond': 'baton control v2: application to batond\n', 'to-application': 'baton control v2: batond to application\n' };
const tagOf = (key: Buffer, direction: Direction, body: Buffer) => createHmac('sha256', key).update(LABEL[direction]).update(body).digest();
const seal = (key: Buffer, direction: Direction, body: Buffer) => Buffer.concat([tagOf(key, direction, body), body]);
const CHALLENGE_REQUEST = /^\{"v":2,"type":"challenge-request","cnonce":"[0-9a-f]{32}"\}$/;

/** The drop reason for a datagram received in `direction`; undefined: it decodes. */
function decodeVerdict(buf: Buffer, direction: Direction): string | undefined {
  const allowed: readonly string[] = direction === 'to-batond' ? FromApplication : FromAgent;
  if (buf.length > MAX_DATAGRAM_BYTES) return 'too-large';
  if (buf.length <= 32) return 'bad-mac';
  const tag = buf.subarray(0, 32);
  const body = buf.subarray(32);
  if (direction === 'to-batond' && tag.every((b) => b === 0)) return CHALLENGE_REQUEST.test(body.toString('latin1')) ? undefined : 'bad-mac';
  if (!tag.equals(tagOf(KEY, direction, body))) return 'bad-mac';
  const parsed = parseJson(body, { maxBytes: MAX_DATAGRAM_BYTES, maxDepth: CONTROL_MAX_DEPTH });
  if (!parsed.ok) return parsed.reason;
  const value = parsed.value;
  const type = value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as { type?: unknown }).type : undefined;
  if (typeof type !== 'string' || !allowed.includes(type) || type === 'challenge-request') return 'unexpected-type';
  return checks[type as ControlType].Check(value) ? undefined : 'schema';
}

function expectVerdict(buf: Buffer, direction: Direction, where = ''): void {
  inputs++;
  const got = decodeDatagram(buf, KEY, direction, direction === 'to-batond' ? FromApplication : FromAgent);
  const want = decodeVerdict(buf, direction);
  if (want === undefined) expect(got.ok, where).toBe(true);
  else {
    expect(got, where).toMatchObject({ ok: false, reason: want });
    if (!got.ok) expect(got.detail.length, where).toBeLessThanOrEqual(MAX_DETAIL);
  }
}

// ---- generators for datagrams -----------------------------------------------------------------

const json = (v: unknown) => Buffer.from(JSON.stringify(v));
const hex = (n: number) => fc.stringMatching(new RegExp(`^[0-9a-f]{${n}}$`));
const directions = fc.constantFrom<Direction>('to-batond', 'to-application');

/** A valid body of any type, as an object. */
const anyValid = fc.constantFrom(...TYPES).chain((t) => valid(ControlSchemas[t]).map((v) => v as Record<string, unknown>));

/** Random objects with control-ish and prototype keys, any `type`. */
const randomObject = fc
  .tuple(fc.dictionary(fc.oneof(fc.string({ maxLength: 6 }), fc.constantFrom('v', 'type', 'id', 'n', 'nonce', 'cnonce', 'ports', 'targets', ...PROTO_KEYS)), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 6 }), fc.constantFrom(...TYPES, ...PROTO_KEYS, 'x'))
  .map(([fields, type]) => {
    const o: Record<string, unknown> = { v: 2 };
    for (const [k, val] of Object.entries(fields)) defineOwn(o, k, val);
    defineOwn(o, 'type', type);
    return json(o);
  });

/** Bodies as bytes: random, random JSON, random objects, hostile JSON alone or inside a valid datagram. */
const datagramBodies: fc.Arbitrary<Buffer> = fc.oneof(
  fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)),
  fc.json({ maxDepth: 4 }).map((t) => Buffer.from(t)),
  randomObject,
  fc.tuple(anyValid, hostileFragment(MAX_DATAGRAM_BYTES)).chain(([d, frag]) => fc.constantFrom(undefined, ...Object.keys(d)).map((k) => embed(d, k, frag))),
);

/** How a body becomes a datagram: untagged, tagged wrongly (guessed key, other direction), or tagged right. */
function datagramsOf(bodies: fc.Arbitrary<Buffer>, direction: Direction): fc.Arbitrary<{ buf: Buffer; how: string }> {
  const other: Direction = direction === 'to-batond' ? 'to-application' : 'to-batond';
  return fc.tuple(bodies, fc.constantFrom('raw', 'zero-tag', 'guessed-key', 'other-direction', 'right', 'right', 'right')).map(([body, how]) => {
    switch (how) {
      case 'raw':
        return { buf: body, how };
      case 'zero-tag':
        return { buf: Buffer.concat([Buffer.alloc(32), body]), how };
      case 'guessed-key':
        return { buf: seal(Buffer.from(randomBytes(32).toString('hex')), direction, body), how };
      case 'other-direction':
        return { buf: seal(KEY, other, body), how };
      default:
        return { buf: seal(KEY, direction, body), how };
    }
  });
}

describe('decodeDatagram', () => {
  it('random and hostile bodies, untagged, wrongly or rightly tagged, either way: never throws, refuses with the documented reason in the documented order, a bounded detail', () => {
    check(
      'decodeDatagram: random and hostile',
      fc.property(directions.chain((dir) => datagramsOf(datagramBodies, dir).map((d) => ({ ...d, dir }))), ({ buf, how, dir }) => {
        expectVerdict(buf, dir, `${dir} ${how}`);
        expect(prototypeFingerprint()).toBe(untouched);
      }),
      runs(6_000),
    );
  });

  it('the issue\'s datagram and 10^5-deep nesting, arrays and objects, every way: refused unread or bounded', () => {
    const deep = (open: string, close: string, n: number) => Buffer.from(`{"type":${open.repeat(n)}${close.repeat(n)}}`);
    const bodies = [deep('[', ']', 30_700), deep('[', ']', 100_000), deep('{"a":', '}', 100_000), deep('[', ']', 30_000), deep('{"a":', '}', 12_000), deep('[', ']', CONTROL_MAX_DEPTH)];
    for (const body of bodies) {
      for (const dir of ['to-batond', 'to-application'] as const) {
        for (const buf of [body, seal(KEY, dir, body), seal(KEY, dir === 'to-batond' ? 'to-application' : 'to-batond', body)]) expectVerdict(buf, dir);
      }
    }
    expect(decodeDatagram(seal(KEY, 'to-batond', bodies[3]!), KEY, 'to-batond', FromApplication)).toMatchObject({ ok: false, reason: 'too-deep' });
  });

  it('valid datagrams of every type, tagged for the receiver: taken when the sender may send them, unexpected-type otherwise', () => {
    check(
      'decodeDatagram: valid',
      fc.property(anyValid, directions, (d, dir) => {
        inputs++;
        const allowed: readonly string[] = dir === 'to-batond' ? FromApplication : FromAgent;
        const buf = d.type === 'challenge-request' ? challengeRequest(d.cnonce as string) : seal(KEY, dir, json(d));
        const got = decodeDatagram(buf, KEY, dir, dir === 'to-batond' ? FromApplication : FromAgent);
        if (allowed.includes(d.type as string)) expect(got).toEqual({ ok: true, msg: d });
        else expect(got).toMatchObject({ ok: false, reason: d.type === 'challenge-request' ? 'bad-mac' : 'unexpected-type' });
      }),
      runs(4_000),
    );
  });

  it('one schema violation (wrong type, extra or prototype key, missing key, bad nonce, id or counter, too many ports), rightly tagged: schema, or unexpected-type when the type itself broke', () => {
    const sendable = FromApplication.filter((t) => t !== 'challenge-request');
    const damaged = fc.constantFrom(...sendable).chain((type) => valid(ControlSchemas[type]).chain((v) => broken(ControlSchemas[type], v as Record<string, unknown>)));
    check(
      'decodeDatagram: schema violations',
      fc.property(damaged, ({ value, where }) => {
        inputs++;
        const buf = seal(KEY, 'to-batond', json(value));
        const got = decodeDatagram(buf, KEY, 'to-batond', FromApplication);
        const typeBroke = typeof value.type !== 'string' || !(sendable as readonly string[]).includes(value.type);
        const want = buf.length > MAX_DATAGRAM_BYTES ? 'too-large' : typeBroke ? 'unexpected-type' : 'schema';
        expect(got, where).toMatchObject({ ok: false, reason: want });
        if (!got.ok) expect(got.detail.length, where).toBeLessThanOrEqual(MAX_DETAIL);
        expect(prototypeFingerprint()).toBe(untouched);
      }),
      runs(6_000),
    );
  });
});

// ---- a real ControlServer under a flood ---------------------------------------------------------

/** A datagram for the server, and what it must do with it. */
interface Forged {
  buf: Buffer;
  /** The drop reason; undefined: answered (a well-formed challenge-request). */
  reason: string | undefined;
  /** The type, when the datagram decodes: the server counts it as accepted before its state checks. */
  decoded?: string;
}

describe('a real ControlServer under a flood of forged, hostile and replayed datagrams', () => {
  const directory = new TargetDirectory(60_000, 0);
  let changes = 0;
  const metricDrops = new Map<string, number>();
  const metricDatagrams = new Map<string, number>();
  const bump = (m: Map<string, number>, k: string, n = 1) => m.set(k, (m.get(k) ?? 0) + n);
  let server: ControlServer;
  let port = 0;
  const client = dgram.createSocket('udp4');
  /** Every answer, decoded as the SDK would; `answers` counts them by type ('refused' if one does not decode). */
  const replies: Array<ControlMessage<(typeof FromAgent)[number]> | undefined> = [];
  const answers = new Map<string, number>();
  const answered = (type: string) => answers.get(type) ?? 0;
  /** The flood client's own registration (a target), kept alive by a fresh heartbeat per batch. */
  let id = '';
  let counter = 0;
  /** Its datagrams so far, each with the counter it carried: replayed, they are refused. */
  const sentByUs: Array<{ n: number; buf: Buffer }> = [];

  const send = (buf: Buffer) => new Promise<void>((resolve, reject) => client.send(buf, port, '127.0.0.1', (err) => (err ? reject(err) : resolve())));
  /** The waits below come once or more per input: polled every millisecond, not the default 5. */
  const PER_INPUT_POLL_MS = 1;
  const last = <K extends ControlType>(type: K) => replies.filter((m) => m?.type === type).pop() as ControlMessage<K>;

  beforeAll(async () => {
    ({ server, port } = await startControlServer({ secret: KEY, directory, log, dvipaPorts: [DVIPA_PORT], metrics: { datagram: (t) => bump(metricDatagrams, t), drop: (r) => bump(metricDrops, r) } }));
    client.on('message', (buf) => {
      const d = decodeDatagram(buf, KEY, 'to-application', FromAgent);
      replies.push(d.ok ? d.msg : undefined);
      bump(answers, d.ok ? d.msg.type : 'refused');
    });
    await new Promise<void>((r) => client.bind(0, '127.0.0.1', () => r()));
    await send(challengeRequest('c'.repeat(32)));
    await until('the challenge', () => answered('challenge') === 1);
    await send(encodeDatagram(KEY, 'to-batond', 'register', { nonce: last('challenge').nonce, role: 'target', app: 'fuzz-target', ports: [DVIPA_PORT], capacity: 10 }));
    await until('the registration', () => answered('registered') === 1);
    id = last('registered').id;
    await until('the directory to show it', () => directory.local().length === 1);
    directory.on('change', () => changes++);
    replies.length = 0;
    answers.clear();
    metricDatagrams.clear();
  });

  afterAll(() => {
    server.close();
    client.close();
    directory.close();
  });

  /**
   * Our registration's datagrams sent again, or new ones with a counter already used: refused as
   * replays. Made when the batch is sent (after that batch's fresh heartbeat), from what was sent.
   */
  const replays: fc.Arbitrary<() => Forged> = fc.oneof(
    fc.nat().map((i) => (): Forged => ({ buf: sentByUs[i % sentByUs.length]!.buf, reason: 'replay', decoded: 'heartbeat' })),
    fc.tuple(fc.nat(), fc.integer({ min: 0, max: 1000 })).map(([i, capacity]) => (): Forged => ({
      buf: encodeDatagram(KEY, 'to-batond', 'update', { id, n: 1 + (i % counter), capacity }),
      reason: 'replay',
      decoded: 'update',
    })),
  );

  const forgeries: fc.Arbitrary<Forged | (() => Forged)> = fc
    .oneof<fc.Arbitrary<Forged | (() => Forged)>[]>(
      // Noise, hostile JSON, in every tagging: the oracle says which reason.
      datagramsOf(datagramBodies, 'to-batond').map(({ buf }): Forged => {
        const reason = decodeVerdict(buf, 'to-batond');
        return { buf, reason: reason ?? 'decodes', decoded: reason ? undefined : 'decodes' };
      }).filter((f) => f.reason !== 'decodes'),
      // What batond sends, rightly tagged for an application, sent to batond.
      fc.constantFrom(...FromAgent).chain((type) => valid(ControlSchemas[type]).map((v): Forged => ({ buf: seal(KEY, 'to-application', json(v)), reason: 'bad-mac' }))),
      // batond's types tagged for batond: only applications' types are taken.
      fc.constantFrom(...FromAgent).chain((type) => valid(ControlSchemas[type]).map((v): Forged => ({ buf: seal(KEY, 'to-batond', json(v)), reason: 'unexpected-type' }))),
      // A register with a nonce batond never issued.
      valid(ControlSchemas.register).map((v): Forged => ({ buf: seal(KEY, 'to-batond', json(v)), reason: 'bad-nonce', decoded: 'register' })),
      // Heartbeats, updates, unregisters naming a registration that does not exist.
      fc.constantFrom('heartbeat', 'update', 'unregister' as const).chain((type) =>
        valid(ControlSchemas[type]).filter((v) => (v as { id: string }).id !== id).map((v): Forged => ({ buf: seal(KEY, 'to-batond', json(v)), reason: 'unknown-registration', decoded: type })),
      ),
      // Well-formed challenge-requests: answered, cost nothing.
      hex(32).map((cnonce): Forged => ({ buf: challengeRequest(cnonce), reason: undefined, decoded: 'challenge-request' })),
      replays,
    )
    // A datagram past what UDP carries cannot be sent at all; decodeDatagram alone sees those.
    .filter((f) => typeof f === 'function' || f.buf.length <= UDP_MAX);

  it('drops every one, counted by its reason; nothing registers, nothing changes, every answer is batond\'s', async () => {
    let sent = 0;
    const expected = new Map<string, number>();
    const accepted = new Map<string, number>();
    let challenges = 0;
    let unknown = 0;
    const totalDropped = () => [...server.dropped.values()].reduce((a, b) => a + b, 0);
    await checkAsync(
      'control server: flood',
      fc.asyncProperty(fc.array(forgeries, { minLength: 30, maxLength: 100 }), async (drawn) => {
        // A fresh heartbeat keeps our registration alive and moves its counter on.
        const beat = encodeDatagram(KEY, 'to-batond', 'heartbeat', { id, n: ++counter });
        const acksBefore = answered('ack');
        await send(beat);
        await until('the heartbeat\'s ack', () => answered('ack') > acksBefore, 5_000, PER_INPUT_POLL_MS);
        sentByUs.push({ n: counter, buf: beat });
        bump(accepted, 'heartbeat');
        const batch = drawn.map((f) => (typeof f === 'function' ? f() : f));

        const before = new Map(server.dropped);
        const base = totalDropped();
        const answeredBefore = metricDatagrams.get('challenge-request') ?? 0;
        const handled = () => totalDropped() - base + (metricDatagrams.get('challenge-request') ?? 0) - answeredBefore;
        let sentNow = 0;
        // Windows small enough for the socket buffers: a lost datagram would be the kernel's
        // doing, not the server's, and the exact count below would be meaningless.
        let window = 0;
        for (const f of batch) {
          if (window + f.buf.length > 48 * 1024 || f.buf.length > 8 * 1024) {
            await until('the server to handle everything sent so far', () => handled() === sentNow, 5_000, PER_INPUT_POLL_MS);
            window = 0;
          }
          await send(f.buf);
          sent++;
          sentNow++;
          window += f.buf.length;
          inputs++;
        }
        await until('the server to handle the whole batch', () => handled() === batch.length, 5_000, PER_INPUT_POLL_MS);

        const want = new Map<string, number>();
        for (const f of batch) {
          if (f.reason) {
            bump(want, f.reason);
            bump(expected, f.reason);
          } else challenges++;
          if (f.decoded) bump(accepted, f.decoded);
          if (f.reason === 'unknown-registration') unknown++;
        }
        for (const [reason, n] of want) expect(server.dropped.get(reason)! - (before.get(reason) ?? 0), reason).toBe(n);
        expect(server.counts()).toMatchObject({ routers: 0, targets: 1 });
        expect(directory.local().map((t) => [t.app, t.capacity])).toEqual([['fuzz-target', 10]]);
      }),
      runs(120),
    );
    await until('every answer', () => answered('challenge') === challenges && answered('ack') === unknown + counter);
    // Nothing late: no answer beyond the challenges and acks, no change pushed afterwards.
    await new Promise((r) => setTimeout(r, 100));
    console.log(`control flood: ${sent} datagrams over UDP, dropped ${JSON.stringify(Object.fromEntries([...server.dropped].sort()))}`);
    expect(new Map([...server.dropped].sort())).toEqual(new Map([...expected].sort()));
    expect(new Map([...metricDrops].sort())).toEqual(new Map([...expected].sort()));
    expect(new Map([...metricDatagrams].sort())).toEqual(new Map([...accepted].sort()));
    // Every answer is tagged by batond for an application; acks are ok only for our own heartbeats.
    expect(Object.fromEntries(answers)).toEqual({ challenge: challenges, ack: unknown + counter });
    const acks = replies.filter((m): m is ControlMessage<'ack'> => m?.type === 'ack');
    expect(acks.filter((a) => a.ok).every((a) => a.id === id)).toBe(true);
    expect(acks.filter((a) => !a.ok)).toHaveLength(unknown);
    expect(changes).toBe(0);
    expect(sent).toBeGreaterThanOrEqual(runs(120) * 30);
  });
});

describe('nothing escaped', () => {
  it('no uncaught exception, no unhandled rejection, no polluted prototype', () => {
    expect(watch.errors).toEqual([]);
    expect(prototypeFingerprint()).toBe(untouched);
    expect(inputs).toBeGreaterThanOrEqual(runs(16_000));
  });
});
