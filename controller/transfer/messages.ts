// Every message Baton exchanges over its stream channels, one schema each (TypeBox → JSON Schema).
// Frames are decoded by framing.ts; this file validates the header, checks the blob count the type
// requires, and checks the message is one the receiving side of that channel may get. Anything
// else raises E_PROTOCOL and changes nothing. The protocol is documented in docs/protocol.md.
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import { BatonError, ERROR_CODES } from '../errors.js';
import { describeInput } from '../input.js';
import { beyondLimits } from './payload-limits.js';
import type { TcpConnectionState } from '../../native/repair.js';
import { EndpointSchema as Endpoint, FamilySchema, FlowSchema, IpAddressSchema, PortSchema as Port } from '../flow.js';
import type { Frame, RejectReason } from './framing.js';
import { TargetInfoSchema } from '../control/messages.js';
import { HANDOFF_STEPS } from './handoff-phases.js';
import { keysOf, type TlsInfo, TlsSchema, wipeKeys } from './tls-wire.js';

export const PROTOCOL_VERSION = 1;

export { MAX_APP_STATE_BYTES, MAX_PEEKED_BYTES, appStateRefusal } from './payload-limits.js';

const U32 = Type.Integer({ minimum: 0, maximum: 0xffffffff });
const Name = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' });
/** A TCP state as sock_diag names it (native/diag.ts), or GONE / UNKNOWN. */
const TcpStateName = Type.String({ pattern: '^[A-Z_0-9]{1,16}$' });
// Tested on its own too: a message that fails its schema is named by its id if it has one (decodeMessage).
const HANDOFF_ID = /^[A-Za-z0-9._-]{1,80}$/;
/**
 * The handoff id (wire field `connId`, e.g. n1.e26ac130f728): names one connection's handoffs, made
 * by the routing SDK at its first (sdk/handed-off.ts). Not the connection id, its 4-tuple (flow.ts).
 */
export const HandoffIdSchema = Type.String({ pattern: HANDOFF_ID.source });
/** Longest human-readable reason a message carries; header() cuts longer ones where they are sent. */
export const MAX_REASON = 512;
const Reason = Type.String({ maxLength: MAX_REASON });
/** An abstract Unix socket name (without the leading NUL): printable, no spaces. */
const FdAddress = Type.String({ minLength: 1, maxLength: 100, pattern: '^[!-~]+$' });

/** A replication stream's id (ha/replication-source.ts): 64 random bits, new at every attach. */
const ReplicaSession = Type.String({ pattern: '^[0-9a-f]{16}$' });
/** A replication stream's message number: 1 for its first, one more for each after. Exact in a double. */
const ReplicaSeq = Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER });
/**
 * A routing-table entry as replication carries it: what XDP steers by. The per-entry counters stay
 * behind: every write restarts them anyway (routing-table.ts).
 */
export const ReplicaEntrySchema = Type.Object(
  {
    state: Type.Union([Type.Literal('frozen'), Type.Literal('forward'), Type.Literal('released'), Type.Literal('finished')]),
    node: U32,
    mac: Type.String({ pattern: '^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$' }),
  },
  { additionalProperties: false },
);
/**
 * One flow's entry as it is now on the active distributor; null: it has none (removed). The null
 * is spelled as a const too, as every other single value in these schemas is, so that tools that
 * read the JSON Schema (the fuzzers' generators) see one allowed value.
 */
export const ReplicaChangeSchema = Type.Object({ flow: FlowSchema, entry: Type.Union([ReplicaEntrySchema, Type.Null({ const: null })]) }, { additionalProperties: false });
export type ReplicaChange = Static<typeof ReplicaChangeSchema>;
/**
 * Flows one probe, probed or serving message carries at most: 256 of the longest (IPv6, about 160
 * bytes of JSON each with its state) stay well inside a frame's 64 KiB header (1024 did not).
 */
export const MAX_FLOWS_PER_MESSAGE = 256;
/** Entries one replica message carries at most (a frame's 64 KiB header bounds them further: ha/replication.ts). */
export const MAX_REPLICA_CHANGES = 1024;

const WindowSchema = Type.Object(
  { sndWl1: U32, sndWnd: U32, maxWindow: U32, rcvWnd: U32, rcvWup: U32 },
  { additionalProperties: false },
);

/** TcpConnectionState without its byte queues, which travel as blobs (see connToWire). */
export const ConnMetaSchema = Type.Object(
  {
    family: FamilySchema,
    local: Endpoint,
    remote: Endpoint,
    sendSeq: U32,
    recvSeq: U32,
    unsentLength: U32,
    mss: Type.Integer({ minimum: 64, maximum: 65535 }),
    options: Type.Object(
      { timestamps: Type.Boolean(), sack: Type.Boolean(), windowScale: Type.Boolean() },
      { additionalProperties: false },
    ),
    sndWscale: Type.Integer({ minimum: 0, maximum: 14 }),
    rcvWscale: Type.Integer({ minimum: 0, maximum: 14 }),
    timestamp: U32,
    window: WindowSchema,
  },
  { additionalProperties: false },
);
export type ConnMeta = Static<typeof ConnMetaSchema>;

/**
 * A handoff's critical path, hop by hop, as the routing node's batond reports it in done: the
 * monotonic clock (controller/clock.ts, µs) at each send and receive, taken by the process that
 * sent or received; offerRx and acceptTx are the target node's (carried back in accept), the rest
 * the routing node's batond's. The SDK adds the routing application's own (HandoffTimings).
 */
const Us = Type.Number({ minimum: 0 });
export const HopClockSchema = Type.Object(
  {
    handoffRx: Us,
    offerTx: Us,
    offerRx: Type.Optional(Us),
    acceptTx: Type.Optional(Us),
    acceptRx: Us,
    /** When live went with done (the old socket was quiet): just before done. */
    liveTx: Type.Optional(Us),
    doneTx: Us,
  },
  { additionalProperties: false },
);
export type HopClock = Static<typeof HopClockSchema>;

export const TimingsSchema = Type.Object(
  {
    exportUs: Type.Number({ minimum: 0 }),
    offerRttUs: Type.Number({ minimum: 0 }),
    importUs: Type.Number({ minimum: 0 }),
    freezeUs: Type.Number({ minimum: 0 }),
    commitRttUs: Type.Number({ minimum: 0 }),
    deltaUs: Type.Number({ minimum: 0 }),
    routeUs: Type.Number({ minimum: 0 }),
    clock: Type.Optional(HopClockSchema),
  },
  { additionalProperties: false },
);
export type DistributorTimings = Static<typeof TimingsSchema>;

function message<K extends string, T extends Record<string, TSchema>>(type: K, fields: T) {
  return Type.Object(
    { v: Type.Literal(PROTOCOL_VERSION), type: Type.Literal(type), ...fields, blobs: Type.Optional(Type.Array(U32, { maxItems: 4 })) },
    { additionalProperties: false },
  );
}

export const Schemas = {
  /** First frame on every channel: who is speaking. Targets name the DVIPA ports they serve. */
  hello: message('hello', {
    role: Type.Union([Type.Literal('router'), Type.Literal('target'), Type.Literal('peer')]),
    name: Name,
    ports: Type.Optional(Type.Array(Port, { minItems: 1, maxItems: 64 })),
    /** Targets: the instance name offers may ask for (the one registered on the control socket). */
    instance: Type.Optional(Name),
    /** Applications: their inbox, where batond sends its end of the descriptor link (fd-exchange.ts). */
    fdAddress: Type.Optional(FdAddress),
    /** Targets: true when the application decides on each offer itself (decide/decided); otherwise batond accepts up to capacity. */
    decides: Type.Optional(Type.Boolean()),
    /** Targets: connections served at once beyond which batond refuses offers; 0 for no limit. */
    capacity: Type.Optional(Type.Integer({ minimum: 0, maximum: 100_000_000 })),
  }),
  /** batond → application, peer → peer: the node's name. To an application, after its descriptor link was sent. */
  welcome: message('welcome', {
    node: Name,
    /** To applications: the node's handoff step timeout, from which the SDK bounds its own wait. */
    handoffStepTimeoutMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 600_000 })),
  }),
  /**
   * Routing application → its agent: hand this connection to target. The socket's descriptor was
   * sent just before on the descriptor link, tagged with connId. Blobs: the peeked bytes, the TLS
   * keys (empty unless tls: controller/transfer/tls-wire.ts).
   */
  handoff: message('handoff', {
    connId: HandoffIdSchema,
    target: Type.Object({ node: Name, port: Port, instance: Type.Optional(Name) }, { additionalProperties: false }),
    appState: Type.Unknown(),
    tls: Type.Optional(TlsSchema),
  }),
  /** A connection offered for transfer. Blobs: send queue, receive queue, peeked bytes, TLS keys (tls-wire.ts). */
  offer: message('offer', {
    connId: HandoffIdSchema,
    from: Name,
    target: Type.Object({ node: Name, port: Port, instance: Type.Optional(Name) }, { additionalProperties: false }),
    conn: ConnMetaSchema,
    appState: Type.Unknown(),
    tls: Type.Optional(TlsSchema),
  }),
  accept: message('accept', { connId: HandoffIdSchema, importUs: Type.Number({ minimum: 0 }), clock: Type.Optional(Type.Object({ rx: Us, tx: Us }, { additionalProperties: false })) }),
  reject: message('reject', { connId: HandoffIdSchema, reason: Reason }),
  /** Distributor → target. Blob: the delta, to append while the target socket is still in repair mode. */
  commit: message('commit', { connId: HandoffIdSchema, unsentLength: U32, window: WindowSchema }),
  ready: message('ready', { connId: HandoffIdSchema }),
  /**
   * The route points at the target and the old socket is closed: leave repair mode and serve.
   * timestamp: the old socket's TCP timestamp clock when it was closed (absent if the routing
   * application never said: the target then estimates it).
   */
  live: message('live', { connId: HandoffIdSchema, timestamp: Type.Optional(U32) }),
  abort: message('abort', { connId: HandoffIdSchema, reason: Reason }),
  /** Agent → a target application that decides on offers: may it take this connection? Blob: the peeked bytes. */
  decide: message('decide', { connId: HandoffIdSchema, from: Name, client: Endpoint, appState: Type.Unknown() }),
  decided: message('decided', { connId: HandoffIdSchema, accept: Type.Boolean(), reason: Type.Optional(Reason) }),
  /**
   * Agent → target application: a live connection is yours. Its descriptor was sent just before on
   * the descriptor link, tagged with connId. Blobs: the peeked bytes (already at
   * the head of the socket's receive queue, for a look), and the tail the routing node never
   * transmitted (the application writes it first).
   */
  transferred: message('transferred', { connId: HandoffIdSchema, from: Name, client: Endpoint, appState: Type.Unknown(), tls: Type.Optional(TlsSchema), clock: Type.Optional(Type.Object({ liveRx: Us, tx: Us }, { additionalProperties: false })) }),
  /**
   * Owner of a connection → distributor: change the flow's routing-table entry (a transfer again,
   * started on a node that is not the distributor). The distributor checks the sender owns the flow.
   */
  route: message('route', {
    connId: HandoffIdSchema,
    op: Type.Union([Type.Literal('freeze'), Type.Literal('forward'), Type.Literal('unfreeze'), Type.Literal('release'), Type.Literal('finished'), Type.Literal('owner')]),
    flow: FlowSchema,
    /** forward: the new owner. owner: the node that claims to serve the flow (a target checking an offer). */
    target: Type.Optional(Name),
  }),
  routed: message('routed', { connId: HandoffIdSchema, ok: Type.Boolean(), reason: Type.Optional(Reason) }),
  /** Every node → every other node (claim 23): the target applications registered here, on change and as a heartbeat. */
  listeners: message('listeners', { node: Name, targets: Type.Array(TargetInfoSchema, { maxItems: 1024 }) }),
  /**
   * Distributor → a node: which of these flows does your kernel hold a socket for (sock_diag)? Asked
   * when a restarted distributor finds entries frozen by handoffs of its previous life, to give
   * each back to the node that served it or remove it (route-service.ts).
   */
  probe: message('probe', { connId: HandoffIdSchema, flows: Type.Array(FlowSchema, { minItems: 1, maxItems: MAX_FLOWS_PER_MESSAGE }) }),
  /** Answer to probe, one TCP state per flow in its order (ESTABLISHED, CLOSE_WAIT…, or GONE: no socket). */
  probed: message('probed', { connId: HandoffIdSchema, states: Type.Array(TcpStateName, { maxItems: MAX_FLOWS_PER_MESSAGE }) }),
  /**
   * A distributor taking over → every node: which connections to these DVIPAs does your kernel
   * serve (a sock_diag dump)? What the new distributor reconciles its replica with: it adds the
   * entries it lacks and drops those no node serves (ha/served.ts).
   */
  served: message('served', { connId: HandoffIdSchema, addresses: Type.Array(IpAddressSchema, { minItems: 1, maxItems: 64 }) }),
  /**
   * Answer to served, in pages of one dump (the dump is taken once: pages of separate dumps could
   * miss a flow that moved between them). last closes the answer; failed: the dump could not be
   * taken or was too large, the asker learns nothing from this node.
   */
  serving: message('serving', {
    connId: HandoffIdSchema,
    flows: Type.Array(FlowSchema, { maxItems: MAX_FLOWS_PER_MESSAGE }),
    /** One TCP state per flow, in its order (as probed's). */
    states: Type.Array(TcpStateName, { maxItems: MAX_FLOWS_PER_MESSAGE }),
    last: Type.Boolean(),
    failed: Type.Optional(Type.Boolean()),
  }),
  /** Target application → its agent: a transferred connection it served has closed. */
  release: message('release', { connId: HandoffIdSchema }),
  /**
   * Agent → target application: an operator asked (REST API) to move this connection to another
   * node. The application moves it at its next safe point with its own state, and answers moved.
   */
  move: message('move', { connId: HandoffIdSchema, node: Name }),
  moved: message('moved', { connId: HandoffIdSchema, ok: Type.Boolean(), reason: Type.Optional(Reason) }),
  /**
   * Distributor → routing application: the route points at the target. clockNeeded false: batond
   * read the old socket's final clock itself (it could send nothing more), so no closed is due.
   */
  done: message('done', { connId: HandoffIdSchema, timings: TimingsSchema, clockNeeded: Type.Optional(Type.Boolean()) }),
  /** Routing application → its agent, answering done: the old socket is closed, silently; its clock then. */
  closed: message('closed', { connId: HandoffIdSchema, timestamp: Type.Optional(U32) }),
  failed: message('failed', {
    connId: HandoffIdSchema,
    /** The handoff step that failed (handoff-phases.ts). */
    step: Type.Union(HANDOFF_STEPS.map((s) => Type.Literal(s))),
    /** One of the error table's codes (errors.ts): the application gets the same code batond raised. */
    code: Type.Union(ERROR_CODES.map((c) => Type.Literal(c))),
    reason: Reason,
  }),
  /**
   * Active distributor → a backup distributor, on the backup's inbound peer link: the routing table,
   * so that at takeover the backup's XDP program forwards every existing connection from the first
   * packet (controller/ha/replication.ts). One stream per attach, named by session; seq counts its
   * messages from 1 without a gap. snapshot: a page of the table walk; snapshot-end: the walk is
   * over, count the entries its pages carried (changes empty); changes: entries as they are after
   * a change, in the order made.
   */
  replica: message('replica', {
    session: ReplicaSession,
    seq: ReplicaSeq,
    kind: Type.Union([Type.Literal('snapshot'), Type.Literal('snapshot-end'), Type.Literal('changes')]),
    changes: Type.Array(ReplicaChangeSchema, { maxItems: MAX_REPLICA_CHANGES }),
    count: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })),
  }),
  /** Backup → active, on the same link: every message of session up to seq is applied to the backup's table. */
  'replica-ack': message('replica-ack', { session: ReplicaSession, seq: ReplicaSeq }),
  /**
   * A distributor → every peer, at each change of its role and every heartbeat: whether it is the
   * active distributor, and since when (ms since the epoch; 0 while it stands by). ha/active.ts.
   */
  distributor: message('distributor', { node: Name, active: Type.Boolean(), since: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER }) }),
} as const;

export type MessageType = keyof typeof Schemas;
export type Message<K extends MessageType = MessageType> = K extends MessageType ? Static<(typeof Schemas)[K]> : never;
export type Body<K extends MessageType> = Omit<Message<K>, 'v' | 'type' | 'blobs'>;

/** How many blobs each type carries; any other count is a protocol error. */
const BLOB_COUNT: Record<MessageType, number> = {
  hello: 0, welcome: 0, handoff: 2, offer: 4, accept: 0, reject: 0, commit: 1, ready: 0, live: 0, abort: 0,
  decide: 1, decided: 0, transferred: 2, route: 0, routed: 0, listeners: 0, probe: 0, probed: 0, served: 0, serving: 0, release: 0, move: 0, moved: 0, done: 0, closed: 0, failed: 0,
  replica: 0, 'replica-ack': 0, distributor: 0,
};

const checks = Object.fromEntries(
  Object.entries(Schemas).map(([k, s]) => [k, TypeCompiler.Compile(s as TSchema)]),
) as Record<MessageType, TypeCheck<TSchema>>;

/** What each side of each channel may receive. */
export const Accepts = {
  agentFromRouter: ['hello', 'handoff', 'closed'],
  agentFromTarget: ['hello', 'decided', 'release', 'moved'],
  agentFromPeer: ['hello', 'offer', 'commit', 'live', 'abort', 'route', 'listeners', 'probe', 'served', 'replica', 'distributor'],
  peerReplies: ['welcome', 'accept', 'reject', 'ready', 'routed', 'probed', 'serving', 'replica-ack'],
  router: ['welcome', 'done', 'failed'],
  target: ['welcome', 'decide', 'transferred', 'abort', 'move'],
} as const satisfies Record<string, readonly MessageType[]>;

export interface Decoded<K extends MessageType = MessageType> {
  msg: Message<K>;
  blobs: Buffer[];
}

export function decodeMessage<K extends MessageType>(frame: Frame, allowed: readonly K[]): Decoded<K> {
  const type = frame.header.type;
  if (typeof type !== 'string' || !(allowed as readonly string[]).includes(type)) {
    // The type is the sender's: described (type and a bounded prefix), never stringified.
    throw new BatonError('E_PROTOCOL', `unexpected message type ${describeInput(type)} (expected one of ${allowed.join(', ')})`, {
      step: 'validate',
      rejection: 'unexpected-type' satisfies RejectReason,
    });
  }
  const check = checks[type as MessageType];
  const h: Record<string, unknown> = frame.header;
  // Named in the error only if it looks like one: an invalid message's fields are the sender's.
  const connId = typeof h.connId === 'string' && HANDOFF_ID.test(h.connId) ? h.connId : undefined;
  if (!check.Check(h)) {
    const first = check.Errors(h).First();
    const where = first ? `${first.path || '/'}: ${first.message}` : 'schema mismatch';
    throw new BatonError('E_PROTOCOL', `invalid ${type} message at ${where}`, {
      step: 'validate',
      connId,
      rejection: 'schema' satisfies RejectReason,
    });
  }
  const want = BLOB_COUNT[type as MessageType];
  if (frame.blobs.length !== want) {
    throw new BatonError('E_PROTOCOL', `${type} message carries ${frame.blobs.length} blobs, expected ${want}`, { step: 'validate', rejection: 'blob-count' satisfies RejectReason });
  }
  const peekedAt = PEEKED_BLOB[type as MessageType];
  if (peekedAt !== undefined) {
    const why = beyondLimits(h.appState, frame.blobs[peekedAt]!);
    if (why) throw new BatonError('E_PROTOCOL', `${type} message refused: ${why}`, { step: 'validate', connId, rejection: 'schema' satisfies RejectReason });
  }
  const keysAt = KEYS_BLOB[type as MessageType];
  // Checked here like every field; the parsed copies are wiped at once (the blob is the one used).
  if (keysAt !== undefined) wipeKeys(keysOf(h.tls as TlsInfo | undefined, frame.blobs[keysAt]!, connId));
  return { msg: frame.header as unknown as Message<K>, blobs: frame.blobs };
}

/** The messages that carry a TLS session's keys, and which blob (checked against the suite). */
const KEYS_BLOB: Partial<Record<MessageType, number>> = { handoff: 1, offer: 3 };

/** The messages that carry application state, and which of their blobs holds the peeked bytes. */
const PEEKED_BLOB: Partial<Record<MessageType, number>> = { handoff: 0, offer: 2, decide: 0, transferred: 0 };


export function header<K extends MessageType>(type: K, body: Body<K>): Record<string, unknown> {
  const h: Record<string, unknown> = { v: PROTOCOL_VERSION, type, ...body };
  // A reason is an error's text, which may quote anything: cut to what the receiver's schema takes,
  // or the whole message would be refused there and its sender's peer left waiting.
  if (typeof h.reason === 'string' && h.reason.length > MAX_REASON) h.reason = `${h.reason.slice(0, MAX_REASON - 1)}…`;
  return h;
}

/** Splits a connection state into the JSON part and the three offer blobs. */
export function connToWire(state: TcpConnectionState): { conn: ConnMeta; queues: [Buffer, Buffer] } {
  const { sendQueue, recvQueue, ...meta } = state;
  return { conn: meta, queues: [sendQueue, recvQueue] };
}

export function connFromWire(conn: ConnMeta, sendQueue: Buffer, recvQueue: Buffer, connId?: string): TcpConnectionState {
  if (conn.unsentLength > sendQueue.length) {
    throw new BatonError('E_PROTOCOL', `unsentLength ${conn.unsentLength} exceeds send queue of ${sendQueue.length} bytes`, {
      connId,
      step: 'validate',
    });
  }
  return { ...conn, sendQueue, recvQueue };
}
