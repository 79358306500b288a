// The REST API's request and response schemas (TypeBox → JSON Schema). Fastify validates requests
// with them and serialises responses through them; @fastify/swagger turns them into OpenAPI 3.
import { Type, type Static } from '@sinclair/typebox';
import { TargetInfoSchema } from '../control/messages.js';
import { HANDOFF_STEPS } from '../transfer/handoff-phases.js';
import { MAX_PAGE } from '../agent/paged-map.js';

const Name = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' });
const Endpoint = Type.Object({ address: Type.String(), port: Type.Integer() });
/** The wire field connId (transfer/messages.ts): names a connection's handoffs, not the connection. */
const HandoffId = Type.String({ description: 'the handoff id (n1.e26ac130f728), kept as the connection moves; not its connection id' });

export const ProblemSchema = Type.Object(
  { type: Type.String(), title: Type.String(), status: Type.Integer(), detail: Type.String(), instance: Type.String() },
  { additionalProperties: true, description: 'RFC 9457 problem details (application/problem+json)' },
);

export const NodeSchema = Type.Object({
  name: Type.String(),
  id: Type.Integer(),
  address: Type.String(),
  role: Type.Union([Type.Literal('distributor'), Type.Literal('backup'), Type.Literal('node')]),
  instance: Type.String(),
  uptimeSeconds: Type.Integer(),
  xdp: Type.Union([Type.Null(), Type.Object({ mode: Type.String(), programId: Type.Integer(), interface: Type.String(), pinDir: Type.String() })]),
});

export const ClusterNodeSchema = Type.Object({
  name: Type.String(),
  id: Type.Integer(),
  address: Type.String(),
  role: Type.Union([Type.Literal('distributor'), Type.Literal('backup'), Type.Literal('node')]),
  self: Type.Boolean(),
  reachable: Type.Boolean(),
  lastReportMs: Type.Union([Type.Integer(), Type.Null()]),
  targets: Type.Integer(),
  api: Type.String(),
});

export const DvipaSchema = Type.Object({
  address: Type.String(),
  ports: Type.Array(Type.Integer()),
  distributor: Type.String(),
  source: Type.Union([Type.Literal('config'), Type.Literal('api')], { description: 'config: the cluster file\'s; api: added by an operator' }),
});

export const ConnectionSchema = Type.Object({
  id: Type.String({ description: '<client ip>:<port>_<dvipa>:<port>' }),
  client: Endpoint,
  vip: Endpoint,
  state: Type.Union([Type.Literal('frozen'), Type.Literal('forward'), Type.Literal('released'), Type.Literal('finished'), Type.Literal('served')]),
  node: Type.String(),
  packets: Type.Optional(Type.Integer()),
  bytes: Type.Optional(Type.Integer()),
  ageSeconds: Type.Optional(Type.Integer()),
  connId: Type.Optional(HandoffId),
  app: Type.Optional(Type.String()),
  instance: Type.Optional(Type.String()),
});

export const ConnectionQuerySchema = Type.Object(
  {
    state: Type.Optional(Type.Union([Type.Literal('frozen'), Type.Literal('forward'), Type.Literal('released'), Type.Literal('finished'), Type.Literal('served')])),
    node: Type.Optional(Name),
    client: Type.Optional(Type.String({ maxLength: 45, pattern: '^[0-9a-fA-F:.]+$' })),
    limit: Type.Integer({ minimum: 1, maximum: MAX_PAGE, default: 100 }),
    /** The next of the page before; absent for the first page. Opaque. */
    cursor: Type.Optional(Type.String({ pattern: '^[1-9][0-9]{0,14}$' })),
  },
  { additionalProperties: false },
);
export type ConnectionQuery = Static<typeof ConnectionQuerySchema>;

export const ConnectionParamsSchema = Type.Object({ id: Type.String({ minLength: 9, maxLength: 110 }) });
export const MoveBodySchema = Type.Object({ node: Name }, { additionalProperties: false });
export const MoveResultSchema = Type.Object({ id: Type.String(), from: Type.String(), to: Type.String(), connId: HandoffId });

export const TargetParamsSchema = Type.Object({ node: Name, instance: Name });
export const TargetChangeSchema = Type.Object(
  {
    weight: Type.Optional(Type.Integer({ minimum: 0, maximum: 1000, description: 'relative share of new connections; 0 takes none' })),
    draining: Type.Optional(Type.Boolean({ description: 'true: no new connections' })),
  },
  { additionalProperties: false, minProperties: 1 },
);

export const TimingsSchema = Type.Object({
  exportUs: Type.Number(),
  offerRttUs: Type.Number(),
  importUs: Type.Number(),
  freezeUs: Type.Number(),
  deltaUs: Type.Number(),
  commitRttUs: Type.Number(),
  routeUs: Type.Number(),
  closeUs: Type.Optional(Type.Number({ description: 'route switched until live was sent: waiting for the routing application to report its clock at the close, or next to nothing when the old socket was quiet and batond read it' })),
  totalUs: Type.Number(),
});

export const TransferSchema = Type.Object({
  connId: HandoffId,
  id: Type.Optional(Type.String({ description: 'the connection id of its 4-tuple; absent when the handoff failed before the socket could be read' })),
  at: Type.String(),
  from: Type.String({ description: 'the routing application that handed it off' }),
  target: Type.String({ description: 'the node it went to' }),
  client: Type.String(),
  outcome: Type.Union([Type.Literal('done'), Type.Literal('failed')]),
  step: Type.Optional(Type.Union(HANDOFF_STEPS.map((s) => Type.Literal(s)), { description: 'the step that failed (docs/protocol.md, "One handoff")' })),
  reason: Type.Optional(Type.String()),
  timings: Type.Optional(TimingsSchema),
});

export const DrainResultSchema = Type.Object({
  node: Type.String(),
  targetsDrained: Type.Integer(),
  moved: Type.Integer(),
  failed: Type.Integer(),
  connections: Type.Array(
    Type.Object({ id: Type.String(), to: Type.Optional(Type.String()), ok: Type.Boolean(), error: Type.Optional(Type.String()) }),
  ),
});

/** Who distributes the DVIPAs, and how the backups keep up (GET /v1/status). */
export const DistributionSchema = Type.Object({
  /** The active distributor as this node knows it, and since when (ms since the epoch; null: assumed, nobody announced yet). */
  active: Type.String(),
  activeSince: Type.Union([Type.Integer(), Type.Null()]),
  /** The other distributors of the cluster file, in order of preference. */
  backups: Type.Array(Type.String()),
  dvipas: Type.Array(Type.String(), { description: 'the DVIPAs they distribute' }),
  /** This node: active or standby distributor, or not a distributor (node). */
  self: Type.Union([Type.Literal('active'), Type.Literal('standby'), Type.Literal('node')]),
  takeovers: Type.Integer({ description: 'times this batond took over from another distributor' }),
  /** On the active distributor: one stream per backup. */
  streams: Type.Array(
    Type.Object({ backup: Type.String(), session: Type.String(), sentSeq: Type.Integer(), ackedSeq: Type.Integer(), lagEntries: Type.Integer(), snapshotting: Type.Boolean() }),
  ),
  /** On a standby distributor: the stream it applies (null: none yet). */
  replica: Type.Union([
    Type.Null(),
    Type.Object({ from: Type.String(), session: Type.String(), seq: Type.Integer(), synced: Type.Boolean(), lastAppliedAt: Type.Union([Type.Integer(), Type.Null()]) }),
  ]),
});

export const StatsSchema = Type.Object({
  xdp: Type.Union([Type.Null(), Type.Record(Type.String(), Type.Object({ packets: Type.Integer(), bytes: Type.Integer() }))]),
  routingTable: Type.Union([
    Type.Null(),
    Type.Object({
      entries: Type.Integer(),
      capacity: Type.Integer(),
      quota: Type.Object({ handedOffEntries: Type.Integer(), entriesPerSource: Type.Integer() }, { description: 'limits.handedOffEntries and limits.entriesPerSource as in force' }),
      quotaRefused: Type.Object({ total: Type.Integer(), perSource: Type.Integer() }, { description: 'new handed-off connections each quota refused since start' }),
    }),
  ]),
  transfers: Type.Object({ recent: Type.Integer(), done: Type.Integer(), failed: Type.Integer() }),
  control: Type.Object({ routers: Type.Integer(), targets: Type.Integer(), dropped: Type.Record(Type.String(), Type.Integer()) }),
  targets: Type.Integer(),
});

export { TargetInfoSchema };
