// The control socket's datagrams (claims 18–24), version 2: each one is a 32-byte HMAC-SHA256 tag
// followed by one JSON object, one schema per type. The tag proves that whoever sent it holds the
// node's control secret; the secret itself never travels. The tag covers a label naming the
// direction, so a datagram batond sent is never valid sent back to it, and the other way round.
// The one datagram without a tag is `challenge-request`, whose exact bytes are fixed: nothing an
// attacker sends unauthenticated is handed to a JSON parser.
// Documented in docs/protocol.md ("Control socket").
import { createHmac, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import { BatonError } from '../errors.js';
import { bounded, describeInput, errorText, parseJson } from '../input.js';

export const CONTROL_VERSION = 2;
/** Datagrams larger than this (tag included) are dropped unread. */
export const MAX_DATAGRAM_BYTES = 60 * 1024;
export const TAG_BYTES = 32;
/**
 * Nesting allowed in a body: the deepest schema is `targets` (object, array, object); one level
 * more lets a body that is one level off be refused by its schema with a path, anything deeper
 * is refused before JSON.parse sees it.
 */
export const CONTROL_MAX_DEPTH = 4;

/** Who a datagram is for: the tag covers it, so it cannot be reflected to the other side. */
export type Direction = 'to-batond' | 'to-application';
const LABELS: Record<Direction, Buffer> = {
  'to-batond': Buffer.from('baton control v2: application to batond\n'),
  'to-application': Buffer.from('baton control v2: batond to application\n'),
};

const Name = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' });
const Port = Type.Integer({ minimum: 1, maximum: 65535 });
const Count = Type.Integer({ minimum: 0, maximum: 1_000_000 });
const RegistrationId = Type.String({ pattern: '^[0-9a-f]{16}$' });
/** The application's nonce in challenge-request: 16 random bytes. */
const ClientNonce = Type.String({ pattern: '^[0-9a-f]{32}$' });
/** batond's nonce in challenge: 32 bytes it can check when they come back (challenges.ts). */
const Nonce = Type.String({ pattern: '^[0-9a-f]{64}$' });
/** Per-registration counter: every datagram carries a larger one than the last. */
const Counter = Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER });

export const TargetInfoSchema = Type.Object(
  {
    node: Name,
    app: Name,
    instance: Name,
    port: Port,
    capacity: Count,
    load: Count,
    /** Operator's relative share of new connections (REST API); 0 takes none. Default 100. */
    weight: Type.Integer({ minimum: 0, maximum: 1000 }),
    /** Operator drained it: routing applications send it no new connections. */
    draining: Type.Boolean(),
  },
  { additionalProperties: false },
);
export type TargetInfo = Static<typeof TargetInfoSchema>;

function datagram<K extends string, T extends Record<string, TSchema>>(type: K, fields: T) {
  return Type.Object({ v: Type.Literal(CONTROL_VERSION), type: Type.Literal(type), ...fields }, { additionalProperties: false });
}

export const ControlSchemas = {
  /** Untagged, fixed bytes (challengeRequest()): asks batond for a nonce to register with. */
  'challenge-request': datagram('challenge-request', { cnonce: ClientNonce }),
  /** batond's answer, tagged: proves batond holds the secret, and gives a single-use nonce. */
  challenge: datagram('challenge', { cnonce: ClientNonce, nonce: Nonce }),
  /** Claim 20: the registration says which role the application plays. */
  register: datagram('register', {
    nonce: Nonce,
    role: Type.Union([Type.Literal('router'), Type.Literal('target')]),
    app: Name,
    instance: Type.Optional(Name),
    ports: Type.Array(Port, { minItems: 1, maxItems: 64 }),
    capacity: Type.Optional(Count),
    load: Type.Optional(Count),
  }),
  heartbeat: datagram('heartbeat', { id: RegistrationId, n: Counter }),
  update: datagram('update', { id: RegistrationId, n: Counter, capacity: Type.Optional(Count), load: Type.Optional(Count) }),
  unregister: datagram('unregister', { id: RegistrationId, n: Counter }),
  /** Echoes the register's nonce: the application knows which registration this answers. */
  registered: datagram('registered', { id: RegistrationId, nonce: Nonce, node: Name, heartbeatMs: Count, expiryMs: Count }),
  /**
   * Claims 21, 22: the full list of target applications on the DVIPA, on registration and on every
   * change. `n` is batond's own counter for this registration: a replayed push is refused.
   */
  targets: datagram('targets', { id: RegistrationId, n: Counter, seq: Count, targets: Type.Array(TargetInfoSchema, { maxItems: 1024 }) }),
  /**
   * Answer to a heartbeat or update, echoing its `n`; ok false when the registration is unknown
   * (expired, or batond restarted: register again).
   */
  ack: datagram('ack', { id: RegistrationId, n: Counter, ok: Type.Boolean(), error: Type.Optional(Type.String({ maxLength: 256 })) }),
} as const;

export type ControlType = keyof typeof ControlSchemas;
export type ControlMessage<K extends ControlType = ControlType> = K extends ControlType ? Static<(typeof ControlSchemas)[K]> : never;

const checks = Object.fromEntries(Object.entries(ControlSchemas).map(([k, s]) => [k, TypeCompiler.Compile(s as TSchema)])) as Record<ControlType, TypeCheck<TSchema>>;

export const FromApplication = ['challenge-request', 'register', 'heartbeat', 'update', 'unregister'] as const;
export const FromAgent = ['challenge', 'registered', 'ack', 'targets'] as const;

/** Why a datagram was refused, in the order the checks run (docs/protocol.md). */
export type DecodeRefusal = 'too-large' | 'bad-mac' | 'encoding' | 'too-deep' | 'not-json' | 'unexpected-type' | 'schema';
export type DecodeResult<K extends ControlType> = { ok: true; msg: ControlMessage<K> } | { ok: false; reason: DecodeRefusal; detail: string };

/** A control secret file: 64 hex digits (and a newline), nothing else; a few KiB at most is read. */
const SECRET_TEXT = /^[0-9a-f]{64}$/;
const MAX_SECRET_FILE_BYTES = 4096;

/**
 * The node's control secret, as batond and every application read it: the HMAC key is the file's
 * 64 hex digits as written (ASCII), so both sides hold the same bytes.
 */
export function readControlSecret(file: string): Buffer {
  let text: string;
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) throw new Error('not a regular file');
    if (st.size > MAX_SECRET_FILE_BYTES) throw new Error(`${st.size} bytes, more than a secret`);
    text = fs.readFileSync(file, 'utf8').trim();
  } catch (err) {
    throw new BatonError('E_CONFIG', `cannot read the control secret ${file}: ${errorText(err)}`, { step: 'control' });
  }
  if (!SECRET_TEXT.test(text)) throw new BatonError('E_CONFIG', `control secret ${file} must hold 64 hex digits`, { step: 'control' });
  return Buffer.from(text);
}

/** The tag of a body sent in a direction: HMAC-SHA256(key, label || body). */
export function datagramTag(key: Buffer, direction: Direction, body: Buffer): Buffer {
  return createHmac('sha256', key).update(LABELS[direction]).update(body).digest();
}

/** tag || body. */
export function sealDatagram(key: Buffer, direction: Direction, body: Buffer): Buffer {
  return Buffer.concat([datagramTag(key, direction, body), body]);
}

const ZERO_TAG = Buffer.alloc(TAG_BYTES);
const challengeRequestBody = (cnonce: string) => `{"v":${CONTROL_VERSION},"type":"challenge-request","cnonce":"${cnonce}"}`;
const CHALLENGE_REQUEST_BYTES = TAG_BYTES + challengeRequestBody('0'.repeat(32)).length;
const [CR_HEAD, CR_TAIL] = challengeRequestBody('\u0000').split('\u0000') as [string, string];

/** The only untagged datagram: 32 zero bytes, then exactly this JSON, byte for byte. */
export function challengeRequest(cnonce: string): Buffer {
  return Buffer.concat([ZERO_TAG, Buffer.from(challengeRequestBody(cnonce))]);
}

/**
 * Checks and decodes one datagram; never throws: a bad datagram is a reason to count. The tag is
 * checked before anything else is read (a challenge-request is matched against its fixed bytes
 * instead, when `allowed` takes one); only then is the body parsed, with its size, encoding and
 * nesting bounded first.
 */
export function decodeDatagram<K extends ControlType>(buf: Buffer, key: Buffer, direction: Direction, allowed: readonly K[]): DecodeResult<K> {
  if (buf.length > MAX_DATAGRAM_BYTES) return { ok: false, reason: 'too-large', detail: `${buf.length} bytes` };
  if (buf.length <= TAG_BYTES) return { ok: false, reason: 'bad-mac', detail: `${buf.length} bytes: no room for a tag and a body` };
  const tag = buf.subarray(0, TAG_BYTES);
  const body = buf.subarray(TAG_BYTES);
  if ((allowed as readonly string[]).includes('challenge-request') && tag.equals(ZERO_TAG)) {
    const text = buf.length === CHALLENGE_REQUEST_BYTES ? body.toString('latin1') : '';
    const cnonce = text.startsWith(CR_HEAD) && text.endsWith(CR_TAIL) ? text.slice(CR_HEAD.length, -CR_TAIL.length) : '';
    if (!/^[0-9a-f]{32}$/.test(cnonce)) return { ok: false, reason: 'bad-mac', detail: `untagged, ${buf.length} bytes, not a challenge-request` };
    return { ok: true, msg: { v: CONTROL_VERSION, type: 'challenge-request', cnonce } as ControlMessage<K> };
  }
  if (!timingSafeEqual(tag, datagramTag(key, direction, body))) return { ok: false, reason: 'bad-mac', detail: `${buf.length} bytes` };
  // Past the tag, the sender holds the secret; its datagram is still bounded like any input.
  const parsed = parseJson(body, { maxBytes: MAX_DATAGRAM_BYTES, maxDepth: CONTROL_MAX_DEPTH });
  if (!parsed.ok) return { ok: false, reason: parsed.reason, detail: parsed.detail };
  const value = parsed.value;
  const type = value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as { type?: unknown }).type : undefined;
  if (typeof type !== 'string' || !(allowed as readonly string[]).includes(type) || type === 'challenge-request') {
    return { ok: false, reason: 'unexpected-type', detail: describeInput(type) };
  }
  const check = checks[type as ControlType];
  if (!check.Check(value)) {
    const first = check.Errors(value).First();
    return { ok: false, reason: 'schema', detail: first ? `${bounded(first.path || '/', 64)}: ${bounded(first.message, 120)}` : 'schema mismatch' };
  }
  return { ok: true, msg: value as ControlMessage<K> };
}

/** A tagged datagram of a type, from its body's fields. */
export function encodeDatagram<K extends Exclude<ControlType, 'challenge-request'>>(key: Buffer, direction: Direction, type: K, body: Omit<ControlMessage<K>, 'v' | 'type'>): Buffer {
  return sealDatagram(key, direction, Buffer.from(JSON.stringify({ v: CONTROL_VERSION, type, ...body })));
}
