// Operator changes to a target instance: its weight (share of new connections) and drain state.
// The instance's own node holds the setting; any node's API forwards the request there.
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import type { ApiContext } from '../server.js';
import { ProblemSchema, TargetChangeSchema, TargetInfoSchema, TargetParamsSchema } from '../schemas.js';

export function targetRoutes(ctx: ApiContext): FastifyPluginAsync {
  return async (app) => {
    app.put<{ Params: Static<typeof TargetParamsSchema>; Body: Static<typeof TargetChangeSchema> }>(
      '/v1/targets/:node/:instance',
      {
        schema: {
          summary: 'Set a target instance\'s weight or drain it (no new connections; live ones stay)',
          tags: ['targets'],
          security: [{ bearer: [] }],
          params: TargetParamsSchema,
          body: TargetChangeSchema,
          response: { 200: Type.Object({ targets: Type.Array(TargetInfoSchema) }), 400: ProblemSchema, 401: ProblemSchema, 403: ProblemSchema, 404: ProblemSchema },
        },
      },
      async (request, reply) => {
        const { node, instance } = request.params;
        if (node !== ctx.admin.self.name) return ctx.forward(node, request, reply);
        return { targets: ctx.admin.setTarget(instance, request.body) };
      },
    );
  };
}
