// GET /v1/stats on a distributor, through the real API server: fastify serialises a response
// through its schema and drops what the schema does not declare, so every field the admin
// returns must come out the other side.
import { ActiveDistributor } from '../../../controller/ha/active.js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AgentAdmin } from '../../../controller/agent/admin.js';
import { DvipaSet } from '../../../controller/agent/dvipa-set.js';
import { RouteService, type TableOps } from '../../../controller/agent/route-service.js';
import { createApiServer } from '../../../controller/api/server.js';
import { DvipaPolicy } from '../../../controller/config/dvipa-policy.js';
import type { FlowKey } from '../../../controller/flow.js';
import { createLogger } from '../../../controller/log.js';
import { apiNode, READ_TOKEN, testCluster, testOperators } from '../../helpers/api-node.js';

const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-api-stats-'));
afterAll(() => fs.rmSync(stateDir, { recursive: true, force: true }));

/** A table with no entries that takes every freeze: the quotas are the service's, not the map's. */
const table = { get: () => undefined, freeze: () => undefined, entries: () => [] } as unknown as TableOps;

describe('GET /v1/stats', () => {
  it('shows the routing table with its quotas and how often they refused', async () => {
    const base = testCluster({ stateDir, addresses: ['127.0.13.1', '127.0.13.2', '127.0.13.3'], apiPort: 4702, plaintext: true });
    const config = { ...base, limits: { handedOffEntries: 2, entriesPerSource: 1 } };
    const log = createLogger({}, 'silent');
    const routes = new RouteService(table, config, log, 10_000, 1024);
    const flow = (client: string): FlowKey => ({ family: 4, clientAddress: client, clientPort: 40000, vipAddress: config.dvipa.addresses[0]!, vipPort: 7000 });
    routes.freeze('n1', flow('10.0.0.1'));
    expect(() => routes.freeze('n1', { ...flow('10.0.0.1'), clientPort: 40001 })).toThrow(/limits.entriesPerSource/);
    routes.freeze('n1', flow('10.0.0.2'));
    expect(() => routes.freeze('n1', flow('10.0.0.3'))).toThrow(/limits.handedOffEntries/);

    // The parts of a node, as the API tests build them; the distributor's admin on top, with its table.
    const node = await apiNode({ config, self: 'n1', log });
    const self = config.nodes[0]!;
    const dvipas = new DvipaSet(config.dvipa, path.join(stateDir, 'dvipas.json'), { hold: async () => undefined, release: async () => undefined }, new DvipaPolicy(config.dvipaCidrs, config.dvipa.addresses, []));
    const admin = new AgentAdmin({ config, self, startedAt: Date.now(), relay: node.relay, directory: node.directory, control: node.control, transfers: node.transfers, metrics: node.metrics, log, dvipas, table: () => routes, active: new ActiveDistributor(config, 'n1') });
    const app = await createApiServer({ admin, metrics: node.metrics, config, operators: testOperators(), log });
    try {
      const res = await app.inject({ method: 'GET', url: '/v1/stats', headers: { authorization: `Bearer ${READ_TOKEN}` } });
      expect(res.statusCode).toBe(200);
      expect(res.json().routingTable).toEqual({ entries: 2, capacity: 1024, quota: { handedOffEntries: 2, entriesPerSource: 1 }, quotaRefused: { total: 1, perSource: 1 } });
    } finally {
      await app.close();
      await node.close();
      routes.close();
    }
  });
});
