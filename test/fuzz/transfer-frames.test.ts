// Bad input on the stream links (node↔node over TCP, application↔node over a Unix socket): random
// and damaged bytes into the frame decoder, random and schema-breaking headers into decodeMessage
// for every side of every link, and a real Channel on a loopback TCP connection fed garbage.
// Refusals must be E_PROTOCOL errors carrying the reason docs/protocol.md gives, never anything
// else; a Channel must count each refusal, close only when the byte stream is broken, and never
// pass a refused message on.
import net from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isBatonError } from '../../controller/errors.js';
import { createLogger } from '../../controller/log.js';
import { inputErrors } from '../../controller/input.js';
import { Channel, channelRejections } from '../../controller/transfer/channel.js';
import { encodeFrame, FrameDecoder, MAX_HEADER_BYTES, type Frame, REJECT_REASONS as REASONS, type RejectReason, rejectionOf } from '../../controller/transfer/framing.js';
import { Accepts, decodeMessage, header, type MessageType, Schemas } from '../../controller/transfer/messages.js';
import { cryptoInfo } from '../../native/ktls.js';
import type { TlsCipher, TlsVersion } from '../../controller/transfer/tls-keys.js';
import { useTcpPairs } from '../helpers/loopback.js';
import { broken, check, checkAsync, chunked, defineOwn, embed, hostileFragment, mutatedBytes, PROTO_KEYS, prototypeFingerprint, runs, SEED, valid, watchProcessErrors } from './fuzz.js';

const log = createLogger({}, 'silent');

/** Blobs each type carries, as the message table in docs/protocol.md gives them. */
const DOC_BLOBS: Record<MessageType, number> = {
  hello: 0, welcome: 0, handoff: 2, offer: 4, accept: 0, reject: 0, commit: 1, ready: 0, live: 0, abort: 0,
  decide: 1, decided: 0, transferred: 2, release: 0, move: 0, moved: 0, route: 0, routed: 0, listeners: 0, probe: 0, probed: 0, served: 0, serving: 0, done: 0, closed: 0, failed: 0,
  replica: 0, 'replica-ack': 0, distributor: 0,
};
const KEYS_AT: Partial<Record<MessageType, number>> = { handoff: 1, offer: 3 };
/** The keys blob a header's tls suite calls for (zero keys of the right sizes), empty without one. */
function keysFor(header: Record<string, unknown>): Buffer {
  const t = header.tls as { version: TlsVersion; cipher: TlsCipher } | undefined;
  if (!t) return Buffer.alloc(0);
  const chacha = t.cipher === 'chacha20-poly1305';
  const dir = { key: Buffer.alloc(t.cipher === 'aes-128-gcm' ? 16 : 32), salt: Buffer.alloc(chacha ? 0 : 4), iv: Buffer.alloc(chacha ? 12 : 8), recSeq: 7n };
  return Buffer.concat([cryptoInfo(t.version, t.cipher, dir), cryptoInfo(t.version, t.cipher, dir)]);
}
/** A frame's blobs as its type documents them, the TLS keys as its header's suite wants them. */
function documentedBlobs(header: Record<string, unknown>, fill: (i: number) => Buffer): Buffer[] {
  const type = header.type as MessageType;
  return Array.from({ length: DOC_BLOBS[type] }, (_, i) => (i === KEYS_AT[type] ? keysFor(header) : fill(i)));
}
const TYPES = Object.keys(Schemas) as MessageType[];
const SIDES = Object.entries(Accepts) as Array<[string, readonly MessageType[]]>;
const MESSAGE_REASONS: RejectReason[] = ['schema', 'unexpected-type', 'blob-count'];
const STREAM_REASONS: RejectReason[] = ['framing', 'too-large'];

let inputs = 0;
const watch = watchProcessErrors();
const untouched = prototypeFingerprint();

/** A frame as it travels: lengths, JSON header (with its blob lengths), blobs. Built by hand so a header may exceed the limit. */
function wire(header: Record<string, unknown>, blobs: Buffer[]): Buffer {
  const h = { ...header };
  if (blobs.length > 0) h.blobs = blobs.map((b) => b.length);
  const json = Buffer.from(JSON.stringify(h), 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeUInt32BE(4 + json.length + blobs.reduce((n, b) => n + b.length, 0), 0);
  prefix.writeUInt32BE(json.length, 4);
  return Buffer.concat([prefix, json, ...blobs]);
}

/** The reason docs/protocol.md gives for refusing this frame on this side, or undefined if it is acceptable. */
function expectedReason(header: Record<string, unknown>, blobs: Buffer[], schemaOk: boolean, side: readonly MessageType[]): RejectReason | undefined {
  const h = { ...header, ...(blobs.length > 0 ? { blobs: blobs.map((b) => b.length) } : {}) };
  if (Buffer.byteLength(JSON.stringify(h)) > MAX_HEADER_BYTES) return 'too-large';
  if (typeof header.type !== 'string' || !side.includes(header.type as MessageType)) return 'unexpected-type';
  // header.blobs is part of the schema: more than four is a schema violation before a count one.
  if (!schemaOk || blobs.length > 4) return 'schema';
  if (blobs.length !== DOC_BLOBS[header.type as MessageType]) return 'blob-count';
  // TLS keys (handoff's second blob, offer's fourth): empty without a tls suite, that suite's two structs with one.
  const keys = KEYS_AT[header.type as MessageType];
  if (keys !== undefined && !blobs[keys]!.equals(keysFor(header))) return 'schema';
  return undefined;
}

/** Decodes one wire frame on one side: the message, or the reason it was refused. */
function receive(bytes: Buffer, side: readonly MessageType[]): { ok: true; type: string; blobs: number } | { ok: false; reason: RejectReason } {
  let frames: Frame[];
  try {
    frames = new FrameDecoder().push(bytes);
  } catch (err) {
    const reason = rejectionOf(err);
    if (!reason || !STREAM_REASONS.includes(reason)) throw err;
    return { ok: false, reason };
  }
  expect(frames).toHaveLength(1);
  try {
    const d = decodeMessage(frames[0]!, side);
    return { ok: true, type: d.msg.type, blobs: d.blobs.length };
  } catch (err) {
    const reason = rejectionOf(err);
    if (!reason || !MESSAGE_REASONS.includes(reason)) throw err;
    return { ok: false, reason };
  }
}

const blobOf = fc.uint8Array({ maxLength: 24 }).map((a) => Buffer.from(a));
/** A valid header of any type, without the blobs key (the frame adds it). */
const validHeader = fc.constantFrom(...TYPES).chain((type) =>
  valid(Schemas[type]).map((v) => {
    const { blobs: _blobs, ...rest } = v as Record<string, unknown>;
    return rest;
  }),
);

beforeAll(() => {
  inputs = 0;
});

afterAll(() => {
  watch.stop();
  console.log(`transfer fuzz: ${inputs} inputs, seed ${SEED}`);
});

describe('frame decoder under random and damaged bytes', () => {
  const invariants = (frames: Frame[]) => {
    for (const f of frames) {
      expect(typeof f.header === 'object' && f.header !== null && !Array.isArray(f.header)).toBe(true);
      expect(f.blobs.map((b) => b.length)).toEqual(f.header.blobs ?? []);
    }
  };

  /** Every frame the decoder gives, one at a time as a Channel takes them, and the reason it stopped. */
  const feed = (chunks: Buffer[]) => {
    const d = new FrameDecoder(1024 * 1024);
    const frames: Frame[] = [];
    for (const c of chunks) {
      d.append(c);
      try {
        for (let f = d.next(); f; f = d.next()) frames.push(f);
      } catch (err) {
        const reason = rejectionOf(err);
        if (!reason || !STREAM_REASONS.includes(reason)) throw err;
        return { frames, reason };
      }
    }
    return { frames, reason: undefined };
  };

  it('random bytes in random chunks: frames that keep their invariants, or framing/too-large', () => {
    const bytes = fc.oneof(
      fc.uint8Array({ maxLength: 300 }),
      // Plausible prefixes reach further into the decoder than uniform noise does.
      fc.tuple(fc.nat(400), fc.nat(400), fc.uint8Array({ maxLength: 300 })).map(([f, h, rest]) => {
        const b = Buffer.alloc(8);
        b.writeUInt32BE(f, 0);
        b.writeUInt32BE(h, 4);
        return Buffer.concat([b, rest]);
      }),
    );
    check(
      'decoder: random bytes',
      fc.property(bytes, fc.array(fc.nat(), { maxLength: 6 }), (raw, cuts) => {
        inputs++;
        const out = feed(chunked(Buffer.from(raw), cuts));
        invariants(out.frames);
      }),
      runs(15_000),
    );
  });

  it('damaged valid streams: the same frames and the same verdict however the bytes are chunked', () => {
    const stream = fc.array(fc.tuple(validHeader, fc.array(blobOf, { maxLength: 3 })), { minLength: 1, maxLength: 3 }).map((fs) => Buffer.concat(fs.map(([h, b]) => wire(h, b))));
    check(
      'decoder: damaged streams',
      fc.property(stream.chain((s) => mutatedBytes(s)), fc.array(fc.nat(), { maxLength: 8 }), (bytes, cuts) => {
        inputs++;
        const whole = feed([bytes]);
        const pieces = feed(chunked(bytes, cuts));
        invariants(pieces.frames);
        // The frames before a violation are delivered whether or not it came in the same read.
        expect(pieces.reason).toBe(whole.reason);
        expect(pieces.frames).toEqual(whole.frames);
      }),
      runs(8_000),
    );
  });
});

describe('decodeMessage on every side of every link', () => {
  it('random headers: refused only with a message reason; accepted only if the side may get it with its blob count', () => {
    const junkType = fc.oneof(fc.constantFrom(...TYPES), fc.constantFrom(...PROTO_KEYS), fc.string({ maxLength: 12 }), fc.jsonValue({ maxDepth: 1 }));
    const header = fc.tuple(fc.dictionary(fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom('v', 'connId', 'node', 'blobs', ...PROTO_KEYS)), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 6 }), junkType, fc.constantFrom(1, 2, '1'));
    check(
      'decodeMessage: random headers',
      fc.property(header, fc.nat(4), ([fields, type, v], blobCount) => {
        const h: Record<string, unknown> = {};
        for (const [k, val] of Object.entries(fields)) defineOwn(h, k, val);
        defineOwn(h, 'type', type);
        defineOwn(h, 'v', v);
        const frame: Frame = { header: h, blobs: Array.from({ length: blobCount }, () => Buffer.alloc(1)) };
        for (const [, side] of SIDES) {
          inputs++;
          try {
            const d = decodeMessage(frame, side);
            expect(side).toContain(d.msg.type);
            expect(d.blobs).toHaveLength(DOC_BLOBS[d.msg.type]);
          } catch (err) {
            expect(MESSAGE_REASONS).toContain(rejectionOf(err));
          }
        }
        expect(prototypeFingerprint()).toBe(untouched);
      }),
      runs(4_000),
    );
  });

  it('valid messages of every type: accepted where the side may get them, refused as unexpected elsewhere', () => {
    check(
      'decodeMessage: valid messages',
      fc.property(validHeader, fc.array(blobOf, { maxLength: 5 }), (header, blobs) => {
        const type = header.type as MessageType;
        // Half the frames carry the documented count, the rest whatever was drawn.
        const sent = blobs.length % 2 === 0 ? documentedBlobs(header, (i) => blobs[i] ?? Buffer.alloc(0)) : blobs;
        const bytes = wire(header, sent);
        for (const [name, side] of SIDES) {
          inputs++;
          const want = expectedReason(header, sent, true, side);
          const got = receive(bytes, side);
          expect(got, `${type} with ${sent.length} blobs on ${name}`).toEqual(want ? { ok: false, reason: want } : { ok: true, type, blobs: sent.length });
        }
      }),
      runs(3_000),
    );
  });

  it('valid frames with one schema violation (wrong type, extra or prototype key, huge string, missing key, out of range): refused with its reason', () => {
    const damaged = fc.constantFrom(...TYPES).chain((type) =>
      valid(Schemas[type]).chain((v) => {
        const { blobs: _blobs, ...header } = v as Record<string, unknown>;
        return broken(Schemas[type], header, new Set(['blobs'])).map((b) => ({ type, header: b.value, where: b.where }));
      }),
    );
    check(
      'decodeMessage: schema violations',
      fc.property(damaged, ({ type, header, where }) => {
        const sent = Array.from({ length: DOC_BLOBS[type] }, () => Buffer.from('q'));
        const bytes = wire(header, sent);
        for (const [name, side] of SIDES) {
          inputs++;
          const want = expectedReason(header, sent, false, side);
          expect(receive(bytes, side), `${type} broken at ${where} on ${name}`).toEqual({ ok: false, reason: want });
        }
        expect(prototypeFingerprint()).toBe(untouched);
      }),
      runs(3_000),
    );
  });
});

describe('a real Channel on a loopback TCP connection', () => {
  const pair = useTcpPairs();

  /** Both ends of a fresh connection: the client socket, and the server's wrapped in a Channel. */
  async function link(side: readonly MessageType[]): Promise<{ client: net.Socket; channel: Channel<MessageType> }> {
    // The channel destroys its end on a framing violation: writes still in flight get EPIPE/ECONNRESET at the client (ignored).
    const { client, server } = await pair();
    return { client, channel: new Channel<MessageType>(server, side, log) };
  }

  type Item = { kind: 'valid' | 'schema' | 'blob-count' | 'unexpected-type'; type: MessageType; bytes: Buffer };

  /** Frames for one side of a link: ones it takes, and ones it must refuse without closing. */
  const itemFor = (side: readonly MessageType[]): fc.Arbitrary<Item> => {
    const otherTypes = TYPES.filter((t) => !side.includes(t));
    const headerOf = (type: MessageType) =>
      valid(Schemas[type]).map((v) => {
        const { blobs: _b, ...h } = v as Record<string, unknown>;
        return h;
      });
    const blobs = (n: number, fill: string) => Array.from({ length: n }, () => Buffer.from(fill));
    return fc.oneof(
      fc.constantFrom(...side).chain((type) => headerOf(type).map((h) => ({ kind: 'valid' as const, type, bytes: wire(h, documentedBlobs(h, () => Buffer.from('blob'))) }))),
      fc.constantFrom(...side).chain((type) =>
        headerOf(type).chain((h) =>
          broken(Schemas[type], h, new Set(['blobs', 'type'])).map((b) => {
            const sent = blobs(DOC_BLOBS[type], 'b');
            const tooLarge = expectedReason(b.value, sent, false, side) === 'too-large';
            // A header past 64 KiB breaks the stream; this list holds only what leaves it usable.
            return { kind: 'schema' as const, type, bytes: tooLarge ? wire({ v: 1, type, connId: '/' }, sent) : wire(b.value, sent) };
          }),
        ),
      ),
      fc.constantFrom(...side).chain((type) => headerOf(type).map((h) => ({ kind: 'blob-count' as const, type, bytes: wire(h, blobs(DOC_BLOBS[type] === 1 ? 2 : 1, 'x')) }))),
      fc.constantFrom(...otherTypes).chain((type) => headerOf(type).map((h) => ({ kind: 'unexpected-type' as const, type, bytes: wire(h, blobs(DOC_BLOBS[type], 'y')) }))),
    );
  };
  const items = Object.fromEntries(SIDES.map(([name, side]) => [name, fc.array(itemFor(side), { maxLength: 12 })]));

  /** What ends the stream: nothing (a clean close), a byte sequence that breaks framing, or one too large. */
  const ending = fc.oneof(
    fc.constant<{ reason?: RejectReason; bytes: Buffer }>({ bytes: Buffer.alloc(0) }),
    fc.constantFrom(0, 1, 3).map((n) => ({ reason: 'framing' as const, bytes: Buffer.from([0, 0, 0, n, 9, 9, 9, 9]) })),
    fc.constant({ reason: 'framing' as const, bytes: wire({ v: 1 }, []).fill(0x7b, 8) }),
    fc.constant({ reason: 'framing' as const, bytes: Buffer.concat([Buffer.from([0, 0, 0, 7, 0, 0, 0, 3]), Buffer.from('[1]')]) }),
    fc.constantFrom(0xffffffff, 64 * 1024 * 1024 + 1).map((n) => {
      const b = Buffer.alloc(8);
      b.writeUInt32BE(n, 0);
      return { reason: 'too-large' as const, bytes: b };
    }),
    fc.constant((() => {
      const b = Buffer.alloc(12);
      b.writeUInt32BE(8, 0);
      b.writeUInt32BE(MAX_HEADER_BYTES + 1, 4);
      return { reason: 'too-large' as const, bytes: b };
    })()),
  );

  it('on every side of every link: passes on exactly the valid messages, counts every refusal by reason, closes only on a broken stream', async () => {
    let linkRuns = 0;
    await checkAsync(
      'channel: garbage over TCP',
      fc.asyncProperty(fc.constantFrom(...SIDES).chain(([name, side]) => fc.tuple(fc.constant(side), items[name]!)), ending, fc.array(fc.nat(), { maxLength: 6 }), async ([side, sent], end, cuts) => {
        linkRuns++;
        inputs += sent.length + (end.reason ? 1 : 0);
        const { client, channel } = await link(side);
        const before = channelRejections();
        const got: string[] = [];
        channel.on('message', (d) => got.push(d.msg.type));
        const closed = new Promise<Error | undefined>((r) => channel.once('close', r));
        for (const c of chunked(Buffer.concat([...sent.map((i) => i.bytes), end.bytes]), cuts)) client.write(c);
        client.end();
        const err = await closed;
        client.destroy();

        expect(got).toEqual(sent.filter((i) => i.kind === 'valid').map((i) => i.type));
        const want = new Map<RejectReason, number>();
        for (const i of sent) if (i.kind !== 'valid') want.set(i.kind, (want.get(i.kind) ?? 0) + 1);
        if (end.reason) want.set(end.reason, (want.get(end.reason) ?? 0) + 1);
        expect(new Map([...channel.rejected].sort())).toEqual(new Map([...want].sort()));
        const after = channelRejections();
        for (const [reason, n] of Object.entries(after)) expect(n - before[reason as RejectReason], reason).toBe(want.get(reason as RejectReason) ?? 0);
        // A broken stream closes with the decoder's error; a clean end closes without one.
        expect(isBatonError(err, 'E_PROTOCOL')).toBe(end.reason !== undefined);
        expect(channel.isClosed).toBe(true);
      }),
      runs(250),
    );
    expect(linkRuns).toBe(runs(250));
    console.log(`channel: ${linkRuns} TCP connections, refusals ${JSON.stringify(channelRejections())}`);
  });

  it('a listener that closes the channel on a message hears nothing more from the same read', async () => {
    // The agent closes an application's link on a refused hello; a second hello in the same
    // segment must not register anything on the link it just gave up.
    const { client, channel } = await link(Accepts.agentFromTarget);
    const got: string[] = [];
    channel.on('message', (d) => {
      got.push(`${d.msg.type}:${(d.msg as { name?: string }).name}`);
      channel.close();
    });
    const closed = new Promise<void>((r) => channel.once('close', () => r()));
    client.write(Buffer.concat([wire({ v: 1, type: 'hello', role: 'peer', name: 'intruder' }, []), wire({ v: 1, type: 'hello', role: 'target', name: 'sneaky', ports: [7000] }, [])]));
    await closed;
    await new Promise((r) => setTimeout(r, 20));
    client.destroy();
    inputs += 2;
    expect(got).toEqual(['hello:intruder']);
  });
});

describe('hostile JSON in frame headers, on every side of every link (peer, agent socket, SDK)', () => {
  const pair = useTcpPairs();

  /** Valid headers to break, with the keys where a fragment replaces the value (undefined: the whole header). */
  const target = fc.constantFrom(...SIDES).chain(([, side]) =>
    fc.constantFrom(...side).chain((type) =>
      valid(Schemas[type]).chain((v) => {
        const { blobs: _b, ...fields } = v as Record<string, unknown>;
        return fc.constantFrom(undefined, ...Object.keys(fields)).map((key) => ({ side, type, fields, key }));
      }),
    ),
  );

  it('refused and counted, or delivered as a message that can be encoded again; no handler throws, no process error', async () => {
    let linkRuns = 0;
    await checkAsync(
      'channel: hostile JSON',
      fc.asyncProperty(target, hostileFragment(MAX_HEADER_BYTES), async ({ side, type, fields, key }, fragment) => {
        linkRuns++;
        inputs++;
        const { client, server } = await pair();
        const channel = new Channel<MessageType>(server, side, log, 'peer');
        const errorsBefore = inputErrors().peer;
        const before = channelRejections();
        const got: Array<Record<string, unknown>> = [];
        channel.on('message', (d) => {
          // What batond does with a message it took: relays it (offer, decide, transferred) or logs it.
          encodeFrame(header(d.msg.type, d.msg as never), d.blobs);
          got.push(d.msg as Record<string, unknown>);
        });
        const closed = new Promise<void>((r) => channel.once('close', () => r()));
        const json = embed(fields, key, fragment);
        const blobs = Array.from({ length: DOC_BLOBS[type] }, () => Buffer.from('b'));
        const prefix = Buffer.alloc(8);
        prefix.writeUInt32BE(4 + json.length + blobs.length, 0);
        prefix.writeUInt32BE(json.length, 4);
        client.end(Buffer.concat([prefix, json, ...blobs]));
        await closed;
        client.destroy();
        const after = channelRejections();
        const refused = REASONS.reduce((n, r) => n + after[r] - before[r], 0);
        expect(inputErrors().peer - errorsBefore, `${fragment.kind} at ${key ?? '(header)'}`).toBe(0);
        expect(refused + got.length, `${fragment.kind} at ${key ?? '(header)'}: one verdict`).toBe(1);
      }),
      runs(400),
    );
    expect(linkRuns).toBe(runs(400));
  });
});

describe('nothing escaped', () => {
  it('no uncaught exception, no unhandled rejection, no polluted prototype', () => {
    expect(watch.errors).toEqual([]);
    expect(prototypeFingerprint()).toBe(untouched);
    expect(inputs).toBeGreaterThanOrEqual(runs(80_000));
  });
});
