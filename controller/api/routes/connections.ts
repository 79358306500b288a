// The connection routing table (distributor) or the connections served here (other nodes), and
// moving one live connection to another node. A move reaches the node serving the connection
// (forwarded there by the distributor, which knows from its table), whose target application
// hands it on through the ordinary transfer path, the client unaware.
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import { BatonError } from '../../errors.js';
import type { ApiContext } from '../server.js';
import { ConnectionParamsSchema, ConnectionQuerySchema, ConnectionSchema, MoveBodySchema, MoveResultSchema, ProblemSchema } from '../schemas.js';

export function connectionRoutes(ctx: ApiContext): FastifyPluginAsync {
  return async (app) => {
    app.get<{ Querystring: Static<typeof ConnectionQuerySchema> }>(
      '/v1/connections',
      {
        schema: {
          summary: 'Distributor: the connection routing table. Other nodes: the transferred connections they serve. Paginated, filterable.',
          tags: ['connections'],
          querystring: ConnectionQuerySchema,
          response: {
            200: Type.Object({
              total: Type.Optional(Type.Integer({ description: 'How many match, when a count is kept for the filter: none, or one of state, node, client' })),
              limit: Type.Integer(),
              connections: Type.Array(ConnectionSchema),
              next: Type.Optional(Type.String({ description: 'Pass as cursor for the next page; absent on the last' })),
            }),
            400: ProblemSchema,
          },
        },
      },
      async (request) => {
        const q = request.query;
        return { ...ctx.admin.connections(q), limit: q.limit };
      },
    );

    app.post<{ Params: Static<typeof ConnectionParamsSchema>; Body: Static<typeof MoveBodySchema> }>(
      '/v1/connections/:id/transfer',
      {
        schema: {
          summary: 'Move a live transferred connection to another node (the transfer-again path)',
          tags: ['connections'],
          security: [{ bearer: [] }],
          params: ConnectionParamsSchema,
          body: MoveBodySchema,
          response: { 200: MoveResultSchema, 400: ProblemSchema, 401: ProblemSchema, 403: ProblemSchema, 404: ProblemSchema, 409: ProblemSchema, 502: ProblemSchema, 504: ProblemSchema },
        },
      },
      async (request, reply) => {
        const { id } = request.params;
        const to = request.body.node;
        ctx.admin.checkDestination(to);
        const { servedBy } = ctx.admin.locate(id);
        if (servedBy === ctx.admin.self.name) return ctx.admin.moveHere(id, to);
        if (servedBy === to) throw new BatonError('E_HANDOFF_STATE', `connection ${id} is already served on ${to}`, { step: 'move' });
        if (servedBy) return ctx.forward(servedBy, request, reply);
        // Only the distributor knows every transferred connection: ask it, unless it is us.
        if (!ctx.admin.isDistributor) return ctx.forward(ctx.admin.distributor, request, reply);
        throw new BatonError('E_NOT_FOUND', `no transferred connection ${id}`, { step: 'move' });
      },
    );
  };
}
