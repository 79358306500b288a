// Adding and removing a virtual IP, cluster-wide. The distributor applies the change to itself and
// then to every other node through their APIs (a forwarded request applies locally only); the
// answer reports each node, so a node that was down is visible and the request can be repeated
// (adding the same DVIPA again is a no-op where it is already held).
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import { DvipaSpecSchema } from '../../agent/dvipa-set.js';
import { canonicalIp, IpAddressSchema } from '../../flow.js';
import type { ApiContext } from '../server.js';
import { errorText } from '../../input.js';
import { LOCAL_ONLY_HEADER, problemDetail } from '../forward.js';
import { ProblemSchema } from '../schemas.js';

/** An IPv4 or IPv6 address in any valid form (batond reads it as canonical text): /v1/dvipas/2001:db8::10. */
const AddressParams = Type.Object({ address: IpAddressSchema });
const ForceQuery = Type.Object({ force: Type.Boolean({ default: false }) }, { additionalProperties: false });
const NodeResults = Type.Array(Type.Object({ node: Type.String(), ok: Type.Boolean(), error: Type.Optional(Type.String()) }));
const MoveBody = Type.Object({ node: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' }) }, { additionalProperties: false });
const MoveResult = Type.Object({
  address: Type.String(),
  from: Type.String(),
  to: Type.String(),
  ownEntries: Type.Integer({ description: 'connections the old distributor serves itself, given an entry naming it' }),
  ms: Type.Integer({ description: 'from the request until the new distributor said it is active' }),
});
const FanOutResult = Type.Object({ address: Type.String(), complete: Type.Boolean(), nodes: NodeResults });

export function dvipaRoutes(ctx: ApiContext): FastifyPluginAsync {
  /** Applies the change on every other node; the distributor has already applied it to itself. */
  const fanOut = async (request: FastifyRequest, method: string, path: string, body?: unknown) => {
    const others = ctx.config.nodes.filter((n) => n.name !== ctx.admin.self.name);
    const caller = ctx.callerOf(request);
    const results = await Promise.all(
      others.map(async (n) => {
        try {
          const res = await ctx.forwarder.send(n, { method, path, body }, caller, { [LOCAL_ONLY_HEADER]: '1' });
          return res.status < 300 ? { node: n.name, ok: true } : { node: n.name, ok: false, error: problemDetail(res.status, res.body) };
        } catch (err) {
          return { node: n.name, ok: false, error: errorText(err) };
        }
      }),
    );
    const nodes = [{ node: ctx.admin.self.name, ok: true }, ...results];
    if (nodes.some((n) => !n.ok)) request.log.warn({ path, nodes }, 'DVIPA change not applied on every node: repeat it once they are back');
    return { complete: nodes.every((n) => n.ok), nodes };
  };

  return async (app) => {
    app.post<{ Body: Static<typeof DvipaSpecSchema> }>(
      '/v1/dvipas',
      {
        schema: {
          summary: 'Add a virtual IP with its ports on every node (the distributor answers ARP for it)',
          tags: ['cluster'],
          security: [{ bearer: [] }],
          body: DvipaSpecSchema,
          response: { 200: FanOutResult, 400: ProblemSchema, 401: ProblemSchema, 403: ProblemSchema, 409: ProblemSchema },
        },
      },
      async (request, reply) => {
        if (request.headers[LOCAL_ONLY_HEADER]) {
          const { address } = await ctx.admin.addDvipa(request.body);
          return { address, complete: true, nodes: [{ node: ctx.admin.self.name, ok: true }] };
        }
        if (!ctx.admin.isDistributor) return ctx.forward(ctx.admin.distributor, request, reply);
        const added = await ctx.admin.addDvipa(request.body);
        return { address: added.address, ...(await fanOut(request, 'POST', '/v1/dvipas', { ...request.body, address: added.address })) };
      },
    );

    app.delete<{ Params: Static<typeof AddressParams>; Querystring: Static<typeof ForceQuery> }>(
      '/v1/dvipas/:address',
      {
        schema: {
          summary: 'Remove a virtual IP an operator added, on every node; refused while connections use it unless force=true',
          tags: ['cluster'],
          security: [{ bearer: [] }],
          params: AddressParams,
          querystring: ForceQuery,
          response: { 200: FanOutResult, 400: ProblemSchema, 401: ProblemSchema, 403: ProblemSchema, 404: ProblemSchema, 409: ProblemSchema },
        },
      },
      async (request, reply) => {
        const address = canonicalIp(request.params.address);
        if (request.headers[LOCAL_ONLY_HEADER]) {
          await ctx.admin.removeDvipa(address, true);
          return { address, complete: true, nodes: [{ node: ctx.admin.self.name, ok: true }] };
        }
        if (!ctx.admin.isDistributor) return ctx.forward(ctx.admin.distributor, request, reply);
        await ctx.admin.removeDvipa(address, request.query.force);
        return { address, ...(await fanOut(request, 'DELETE', `/v1/dvipas/${address}`)) };
      },
    );

    app.post<{ Params: Static<typeof AddressParams>; Body: Static<typeof MoveBody> }>(
      '/v1/dvipas/:address/move',
      {
        schema: {
          summary: 'Move the DVIPA to another distributor (keepalived\'s): the table is handed over before VRRP changes, no connection is lost',
          tags: ['cluster'],
          security: [{ bearer: [] }],
          params: AddressParams,
          body: MoveBody,
          response: { 200: MoveResult, 400: ProblemSchema, 401: ProblemSchema, 403: ProblemSchema, 404: ProblemSchema, 409: ProblemSchema, 504: ProblemSchema },
        },
      },
      async (request, reply) => {
        if (!ctx.admin.isDistributor) return ctx.forward(ctx.admin.distributor, request, reply);
        return ctx.admin.moveDvipa(request.params.address, request.body.node);
      },
    );
  };
}
