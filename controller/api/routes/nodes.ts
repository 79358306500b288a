// Draining a node: its target instances take no new connections, and every transferred connection
// it serves moves to the least loaded other node that serves the same port. The distributor runs
// it (it knows every connection from its table); other nodes forward the request there.
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import { BatonError } from '../../errors.js';
import type { ApiContext } from '../server.js';
import type { ConnectionView } from '../../agent/admin.js';
import { MAX_PAGE } from '../../agent/paged-map.js';
import { errorText } from '../../input.js';
import { problemDetail } from '../forward.js';
import { DrainResultSchema, ProblemSchema } from '../schemas.js';

const NodeParams = Type.Object({ name: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' }) });
/** Moves in flight at once during a drain: each is a handoff through an application. */
const DRAIN_CONCURRENCY = 8;

export function nodeRoutes(ctx: ApiContext): FastifyPluginAsync {
  return async (app) => {
    app.post<{ Params: Static<typeof NodeParams> }>(
      '/v1/nodes/:name/drain',
      {
        schema: {
          summary: 'Drain a node: no new connections to its targets; move every connection it serves elsewhere; report per connection',
          tags: ['cluster'],
          security: [{ bearer: [] }],
          params: NodeParams,
          response: { 200: DrainResultSchema, 401: ProblemSchema, 403: ProblemSchema, 404: ProblemSchema, 409: ProblemSchema },
        },
      },
      async (request, reply) => {
        const node = request.params.name;
        const target = ctx.config.nodes.find((n) => n.name === node);
        if (!target) throw new BatonError('E_NOT_FOUND', `node ${node} is not in the cluster`, { step: 'drain' });
        if (node === ctx.admin.distributor) throw new BatonError('E_HANDOFF_STATE', `${node} is the distributor: it serves no transferred connections`, { step: 'drain' });
        if (!ctx.admin.isDistributor) return ctx.forward(ctx.admin.distributor, request, reply);

        const caller = ctx.callerOf(request);
        const call = (on: string, method: string, path: string, body: unknown) => ctx.forwarder.send(ctx.config.nodes.find((x) => x.name === on)!, { method, path, body }, caller);
        const instances = [...new Set(ctx.admin.targets().filter((t) => t.node === node).map((t) => t.instance))];
        let targetsDrained = 0;
        for (const instance of instances) {
          const res = await call(node, 'PUT', `/v1/targets/${node}/${encodeURIComponent(instance)}`, { draining: true });
          if (res.status === 200) targetsDrained++;
          else request.log.warn({ node, instance, status: res.status, detail: problemDetail(res.status, res.body) }, 'drain: target instance not drained');
        }

        // Every connection the node serves, a page at a time (each page is O(page): handoffs go on meanwhile).
        const connections: ConnectionView[] = [];
        for (let cursor: string | undefined, first = true; first || cursor; first = false) {
          const page = ctx.admin.connections({ node, state: 'forward', limit: MAX_PAGE, cursor });
          connections.push(...page.connections);
          cursor = page.next;
        }
        const results: Array<{ id: string; to?: string; ok: boolean; error?: string }> = [];
        const queue = [...connections];
        const worker = async () => {
          for (let c = queue.shift(); c; c = queue.shift()) {
            const to = ctx.admin.destinationFor(c.vip.port, node);
            if (!to) {
              results.push({ id: c.id, ok: false, error: `no other node serves port ${c.vip.port}` });
              continue;
            }
            try {
              const res = await call(node, 'POST', `/v1/connections/${encodeURIComponent(c.id)}/transfer`, { node: to });
              results.push(res.status === 200 ? { id: c.id, to, ok: true } : { id: c.id, to, ok: false, error: problemDetail(res.status, res.body) });
            } catch (err) {
              results.push({ id: c.id, to, ok: false, error: errorText(err) });
            }
          }
        };
        await Promise.all(Array.from({ length: Math.min(DRAIN_CONCURRENCY, connections.length) }, worker));
        results.sort((a, b) => a.id.localeCompare(b.id));
        const moved = results.filter((r) => r.ok).length;
        request.log.info({ node, targetsDrained, moved, failed: results.length - moved }, 'node drained');
        return { node, targetsDrained, moved, failed: results.length - moved, connections: results };
      },
    );
  };
}
