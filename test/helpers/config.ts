// A valid cluster file of two nodes, for tests of the config reader: each call a fresh copy.
import type { ClusterConfig } from '../../controller/config/cluster.js';

export const sampleConfig = (): ClusterConfig => ({
  version: 1,
  instance: 'lab',
  dvipa: { addresses: ['10.203.0.10'], ports: [80, 7000] },
  distributors: ['n1'],
  controlPort: 4701,
  api: { port: 4702, tokenFile: '/etc/baton/api-token' },
  tls: { caFile: '/etc/baton/ca.crt' },
  xdpMode: 'native',
  handoffStepTimeoutMs: 2000,
  releaseGraceMs: 3000,
  nodes: [
    { name: 'n1', id: 1, address: '10.203.0.11', mac: '02:00:00:00:00:01', interface: 'eth0', peerPort: 4700, agentSocket: '/run/baton/n1.sock', controlSecretFile: '/run/baton/n1.secret', certFile: '/etc/baton/n1.crt', keyFile: '/etc/baton/n1.key' },
    { name: 'n2', id: 2, address: '10.203.0.12', mac: '02:00:00:00:00:02', interface: 'eth0', peerPort: 4700, agentSocket: '/run/baton/n2.sock', controlSecretFile: '/run/baton/n2.secret', certFile: '/etc/baton/n2.crt', keyFile: '/etc/baton/n2.key' },
  ],
});
