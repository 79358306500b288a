// The control socket's datagrams (claims 18–24): one JSON object per UDP datagram, one schema per
// type, version 1. Applications send register/heartbeat/update/unregister with their node's
// control secret; batond answers registered/ack and pushes targets to routing applications.
// Documented in docs/protocol.md ("Control socket").
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';

export const CONTROL_VERSION = 1;
/** Datagrams larger than this are dropped unread: a full target list for 1024 instances fits. */
export const MAX_DATAGRAM_BYTES = 60 * 1024;

const Name = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' });
const Port = Type.Integer({ minimum: 1, maximum: 65535 });
const Count = Type.Integer({ minimum: 0, maximum: 1_000_000 });
const Token = Type.String({ minLength: 64, maxLength: 64, pattern: '^[0-9a-f]{64}$' });
const RegistrationId = Type.String({ pattern: '^[0-9a-f]{16}$' });

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
  /** Claim 20: the registration says which role the application plays. */
  register: datagram('register', {
    token: Token,
    role: Type.Union([Type.Literal('router'), Type.Literal('target')]),
    app: Name,
    instance: Type.Optional(Name),
    ports: Type.Array(Port, { minItems: 1, maxItems: 64 }),
    capacity: Type.Optional(Count),
    load: Type.Optional(Count),
  }),
  heartbeat: datagram('heartbeat', { token: Token, id: RegistrationId }),
  update: datagram('update', { token: Token, id: RegistrationId, capacity: Type.Optional(Count), load: Type.Optional(Count) }),
  unregister: datagram('unregister', { token: Token, id: RegistrationId }),
  registered: datagram('registered', { id: RegistrationId, node: Name, heartbeatMs: Count, expiryMs: Count }),
  /** Claims 21, 22: the full list of target applications on the DVIPA, on registration and on every change. */
  targets: datagram('targets', { seq: Count, targets: Type.Array(TargetInfoSchema, { maxItems: 1024 }) }),
  /** Answer to a heartbeat or update; error when the registration is unknown (expired: register again). */
  ack: datagram('ack', { id: RegistrationId, ok: Type.Boolean(), error: Type.Optional(Type.String({ maxLength: 256 })) }),
} as const;

export type ControlType = keyof typeof ControlSchemas;
export type ControlMessage<K extends ControlType = ControlType> = K extends ControlType ? Static<(typeof ControlSchemas)[K]> : never;

const checks = Object.fromEntries(Object.entries(ControlSchemas).map(([k, s]) => [k, TypeCompiler.Compile(s as TSchema)])) as Record<ControlType, TypeCheck<TSchema>>;

export const FromApplication = ['register', 'heartbeat', 'update', 'unregister'] as const;
export const FromAgent = ['registered', 'targets', 'ack'] as const;

export type DecodeResult<K extends ControlType> = { ok: true; msg: ControlMessage<K> } | { ok: false; reason: 'too-large' | 'not-json' | 'unexpected-type' | 'schema'; detail: string };

/** Parses and validates one datagram; never throws: a bad datagram is a reason to count. */
export function decodeDatagram<K extends ControlType>(buf: Buffer, allowed: readonly K[]): DecodeResult<K> {
  if (buf.length > MAX_DATAGRAM_BYTES) return { ok: false, reason: 'too-large', detail: `${buf.length} bytes` };
  let value: unknown;
  try {
    value = JSON.parse(buf.toString('utf8'));
  } catch (err) {
    return { ok: false, reason: 'not-json', detail: (err as Error).message };
  }
  const type = (value as { type?: unknown } | null)?.type;
  if (typeof type !== 'string' || !(allowed as readonly string[]).includes(type)) {
    return { ok: false, reason: 'unexpected-type', detail: JSON.stringify(type) ?? 'undefined' };
  }
  const check = checks[type as ControlType];
  if (!check.Check(value)) {
    const first = check.Errors(value).First();
    return { ok: false, reason: 'schema', detail: first ? `${first.path || '/'}: ${first.message}` : 'schema mismatch' };
  }
  return { ok: true, msg: value as ControlMessage<K> };
}

export function encodeDatagram<K extends ControlType>(type: K, body: Omit<ControlMessage<K>, 'v' | 'type'>): Buffer {
  return Buffer.from(JSON.stringify({ v: CONTROL_VERSION, type, ...body }));
}
