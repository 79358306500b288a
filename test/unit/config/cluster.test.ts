import { describe, expect, it } from 'vitest';
import { type ClusterConfig, parseClusterConfig } from '../../../controller/config/cluster.js';

const good = (): ClusterConfig => ({
  version: 1,
  instance: 'lab',
  dvipa: { address: '10.203.0.10', ports: [80, 7000] },
  distributor: 'n1',
  controlPort: 4701,
  xdpMode: 'native',
  handoffStepTimeoutMs: 2000,
  releaseGraceMs: 3000,
  nodes: [
    { name: 'n1', id: 1, address: '10.203.0.11', mac: '02:00:00:00:00:01', interface: 'eth0', peerPort: 4700, agentSocket: '/run/baton/n1.sock', controlSecretFile: '/run/baton/n1.secret' },
    { name: 'n2', id: 2, address: '10.203.0.12', mac: '02:00:00:00:00:02', interface: 'eth0', peerPort: 4700, agentSocket: '/run/baton/n2.sock', controlSecretFile: '/run/baton/n2.secret' },
  ],
});

describe('cluster config', () => {
  it('accepts a valid config', () => {
    expect(parseClusterConfig(good())).toEqual(good());
  });

  it.each([
    ['a distributor that is not a node', (c: any) => (c.distributor = 'n9'), /\/distributor: n9 is not one of the nodes/],
    ['a malformed MAC', (c: any) => (c.nodes[0].mac = '02:00'), /f.json:\/nodes\/0\/mac/],
    ['a DVIPA that is not IPv4', (c: any) => (c.dvipa.address = '10.0.0.300'), /\/dvipa\/address: 10.0.0.300 is not an IPv4 address/],
    ['duplicate node ids', (c: any) => (c.nodes[1].id = 1), /duplicate id 1/],
    ['an unknown key', (c: any) => (c.extra = true), /f.json:\/extra/],
  ])('rejects %s with file and path', (_n, mutate, message) => {
    const c = good();
    mutate(c);
    expect(() => parseClusterConfig(c, 'f.json')).toThrow(message);
  });
});
