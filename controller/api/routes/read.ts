// Read-only views: this node, the cluster, the DVIPA, targets, recent transfers, stats, metrics.
// Every one needs an operator token of scope read or admin, but /v1/node, the health check (access.ts).
import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import { connectionId } from '../../flow.js';
import type { ApiContext } from '../server.js';
import { ClusterNodeSchema, DistributionSchema, DvipaSchema, NodeSchema, StatsSchema, TargetInfoSchema, TransferSchema } from '../schemas.js';

export function readRoutes(ctx: ApiContext): FastifyPluginAsync {
  return async (app) => {
    app.get('/v1/node', { schema: { summary: 'This node: identity, role, uptime, XDP program. Open to anyone (the health check)', tags: ['cluster'], security: [], response: { 200: NodeSchema } } }, async () => ctx.admin.node());
    app.get(
      '/v1/status',
      { schema: { summary: 'Who distributes the DVIPAs: the active distributor, its backups, replication sequence and lag, takeovers', tags: ['cluster'], response: { 200: DistributionSchema } } },
      async () => ctx.admin.distribution(),
    );
    app.get(
      '/v1/nodes',
      { schema: { summary: 'The cluster as this node sees it (reachable: its batond reported within the expiry)', tags: ['cluster'], response: { 200: Type.Object({ nodes: Type.Array(ClusterNodeSchema) }) } } },
      async () => ({ nodes: ctx.admin.nodes() }),
    );
    app.get('/v1/dvipas', { schema: { summary: 'The cluster\'s virtual IPs and ports', tags: ['cluster'], response: { 200: Type.Object({ dvipas: Type.Array(DvipaSchema) }) } } }, async () => ({
      dvipas: ctx.admin.dvipas(),
    }));
    app.get(
      '/v1/targets',
      { schema: { summary: 'Target application instances, cluster-wide, with load, weight and drain state', tags: ['targets'], response: { 200: Type.Object({ targets: Type.Array(TargetInfoSchema) }) } } },
      async () => ({ targets: ctx.admin.targets() }),
    );
    app.get<{ Querystring: { limit: number } }>(
      '/v1/transfers',
      {
        schema: {
          summary: 'Recent handoffs this node coordinated, newest first, with per-step durations',
          tags: ['connections'],
          querystring: Type.Object({ limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }) }, { additionalProperties: false }),
          response: { 200: Type.Object({ transfers: Type.Array(TransferSchema) }) },
        },
      },
      async (request) => ({ transfers: ctx.admin.transfers(request.query.limit).map((t) => (t.flow ? { ...t, id: connectionId(t.flow) } : t)) }),
    );
    app.get('/v1/stats', { schema: { summary: 'XDP verdict counters, routing-table size, transfers, control socket', tags: ['cluster'], response: { 200: StatsSchema } } }, async () => ctx.admin.stats());
    app.get('/metrics', { schema: { summary: 'Prometheus metrics', tags: ['metrics'], produces: ['text/plain'] } }, async (_request, reply) =>
      reply.type(ctx.metrics.registry.contentType).send(await ctx.metrics.text()),
    );
  };
}
