// A node's REST API in the test process: the real createApiServer on a real AgentAdmin built from
// the real parts of a node (target relay, directory, control server, transfer log, DVIPA set),
// without XDP or peer links. The DVIPA set's AddressHolder records hold/release instead of
// running `ip`, so it needs no root; what the kernel side does is covered by the lab tests.
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { AgentAdmin } from '../../controller/agent/admin.js';
import { ActiveDistributor } from '../../controller/ha/active.js';
import { type AddressHolder, DvipaSet } from '../../controller/agent/dvipa-set.js';
import { TransferLog } from '../../controller/agent/transfer-log.js';
import { createApiServer } from '../../controller/api/server.js';
import { type OperatorTokens, parseTokenFile, tokenLine } from '../../controller/api/token.js';
import { type ClusterConfig, parseClusterConfig } from '../../controller/config/cluster.js';
import { DvipaPolicy } from '../../controller/config/dvipa-policy.js';
import { TargetDirectory } from '../../controller/control/directory.js';
import { ControlServer } from '../../controller/control/server.js';
import { createLogger, type Logger } from '../../controller/log.js';
import { AgentMetrics } from '../../controller/metrics/metrics.js';
import type { PeerTlsMaterial } from '../../controller/transfer/peer-tls.js';
import type { HandoffSockets } from '../../controller/transfer/sockets.js';
import { DEFAULT_OFFER_BYTES_PER_PEER, DEFAULT_OFFERS_PER_PEER, TargetRelay } from '../../controller/transfer/target-relay.js';

/** Operators every API test knows: one per scope. */
export const ADMIN_TOKEN = 'test-admin-token-0123456789abcdefghij';
export const READ_TOKEN = 'test-read-token-0123456789abcdefghijk';
export const testOperators = (): OperatorTokens =>
  parseTokenFile(`${tokenLine({ name: 'alice', scope: 'admin' }, ADMIN_TOKEN)}\n${tokenLine({ name: 'grafana', scope: 'read' }, READ_TOKEN)}\n`, 'test-tokens');

/** A three-node cluster on loopback addresses: n1 the distributor. */
export function testCluster(opts: { stateDir: string; addresses: [string, string, string]; apiPort: number; certsDir?: string; dvipa?: { address: string; port: number }; plaintext?: boolean }): ClusterConfig {
  const certs = opts.certsDir ?? opts.stateDir;
  const node = (name: string, id: number, address: string) => ({
    name, id, address, mac: `02:00:00:00:00:0${id}`, interface: 'eth1', peerPort: 4700,
    agentSocket: path.join(opts.stateDir, `${name}.sock`), controlSecretFile: path.join(opts.stateDir, `${name}.secret`),
    certFile: path.join(certs, `${name}.crt`), keyFile: path.join(certs, `${name}.key`),
  });
  const dvipa = opts.dvipa ?? { address: '10.203.0.10', port: 7000 };
  return parseClusterConfig({
    version: 1, instance: 'apitest', dvipa: { addresses: [dvipa.address], ports: [dvipa.port] }, dvipaCidrs: ['10.203.0.0/24'], distributors: ['n1'], stateDir: opts.stateDir,
    controlPort: 4701, tls: { caFile: path.join(certs, 'ca.crt') },
    api: { port: opts.apiPort, tokenFile: path.join(opts.stateDir, 'api-tokens'), ...(opts.plaintext ? { insecurePlaintext: true } : {}) },
    xdpMode: 'generic', handoffStepTimeoutMs: 2000, releaseGraceMs: 3000,
    nodes: [node('n1', 1, opts.addresses[0]), node('n2', 2, opts.addresses[1]), node('n3', 3, opts.addresses[2])],
  });
}

export interface ApiNode {
  app: FastifyInstance;
  admin: AgentAdmin;
  metrics: AgentMetrics;
  relay: TargetRelay;
  directory: TargetDirectory;
  control: ControlServer;
  transfers: TransferLog;
  /** Where the DVIPA set keeps DVIPAs added through the API. */
  stateFile: string;
  close(): Promise<void>;
}

/** The sockets the relay reaches only when an offer arrives; a test that sends none never calls them. */
const NO_OFFERS: HandoffSockets = new Proxy({} as HandoffSockets, {
  get: (_t, step) => () => {
    throw new Error(`this test node takes no handoffs: ${String(step)} called`);
  },
});

export async function apiNode(opts: {
  config: ClusterConfig;
  self: string;
  operators?: OperatorTokens;
  tls?: PeerTlsMaterial;
  holder?: AddressHolder;
  sockets?: HandoffSockets;
  log?: Logger;
}): Promise<ApiNode> {
  const { config } = opts;
  const self = config.nodes.find((n) => n.name === opts.self)!;
  const log = opts.log ?? createLogger({}, 'silent');
  const directory = new TargetDirectory(3_600_000);
  // No directory of our own: nothing would remove it. testCluster names the test's, which it removes.
  if (config.stateDir === undefined) throw new Error(`apiNode ${opts.self}: cluster ${config.instance} has no stateDir`);
  const stateFile = path.join(config.stateDir, `${config.instance}-${self.name}.dvipas.json`);
  const holder = opts.holder ?? { hold: async () => undefined, release: async () => undefined };
  const dvipas = new DvipaSet(config.dvipa, stateFile, holder, new DvipaPolicy(config.dvipaCidrs, config.dvipa.addresses, config.nodes.map((n) => n.address)));
  await dvipas.load();
  // Offers from the distributor need no confirmation; this node has no peer links to ask it about others'.
  const relay = new TargetRelay(log, 60_000, opts.sockets ?? NO_OFFERS, {
    isDvipa: (address) => dvipas.has(address),
    distributor: () => config.distributors[0]!,
    confirmOwner: async (node) => {
      throw new Error(`this test node cannot ask the distributor whether ${node} serves a flow`);
    },
    offersPerPeer: DEFAULT_OFFERS_PER_PEER,
    offerBytesPerPeer: DEFAULT_OFFER_BYTES_PER_PEER,
    targetCapacity: 10_000,
  });
  const control = new ControlServer({ node: self.name, port: 0, secret: Buffer.from('0'.repeat(64)), dvipaPorts: () => dvipas.ports(), directory, log, applications: relay.applications });
  const transfers = new TransferLog();
  // Not the distributor: no XDP, no routing table.
  const metrics = new AgentMetrics(self.name, { xdp: () => undefined, routingTable: () => undefined, quotaRefused: () => ({}), targets: () => directory.all().length, closing: () => 0, distribution: () => undefined });
  const admin = new AgentAdmin({ config, self, startedAt: Date.now(), steering: undefined, relay, directory, control, transfers, metrics, log, dvipas, table: () => undefined, active: new ActiveDistributor(config, self.name) });
  const app = await createApiServer({ admin, metrics, config, operators: opts.operators ?? testOperators(), tls: opts.tls, log });
  await app.ready();
  return {
    app, admin, metrics, relay, directory, control, transfers, stateFile,
    async close() {
      await app.close();
      relay.close();
      directory.close();
      control.close();
    },
  };
}
