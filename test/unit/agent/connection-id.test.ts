import { describe, expect, it } from 'vitest';
import { connectionId, parseConnectionId } from '../../../controller/agent/connection-id.js';
import type { FlowKey } from '../../../controller/agent/routing-table.js';

describe('connection ids', () => {
  it.each<FlowKey>([
    { family: 4, clientAddress: '10.203.0.50', clientPort: 41234, vipAddress: '10.203.0.10', vipPort: 7000 },
    { family: 6, clientAddress: 'fd00::5', clientPort: 1, vipAddress: 'fd00::10', vipPort: 65535 },
  ])('round-trips %o', (flow) => {
    expect(parseConnectionId(connectionId(flow))).toEqual(flow);
  });

  it('formats IPv4 as client_dvipa', () => {
    expect(connectionId({ family: 4, clientAddress: '10.0.0.5', clientPort: 40000, vipAddress: '10.0.0.100', vipPort: 80 })).toBe('10.0.0.5:40000_10.0.0.100:80');
  });

  it.each([
    ['no separator', '10.0.0.5:40000'],
    ['a bad address', '10.0.0.500:1_10.0.0.1:80'],
    ['port 0', '10.0.0.5:0_10.0.0.1:80'],
    ['a big port', '10.0.0.5:70000_10.0.0.1:80'],
    ['mixed families', '[fd00::1]:5_10.0.0.1:80'],
    ['junk', '../../etc_passwd'],
  ])('rejects %s with the expected form', (_why, id) => {
    expect(() => parseConnectionId(id)).toThrow(/want <client ip>:<port>_<dvipa>:<port>/);
  });
});
