// The operator's name for a connection: its 4-tuple, client first, as it appears in the routing
// table on the distributor and on the node that serves it, so one id works on every node's API.
//   10.203.0.50:41234_10.203.0.10:7000      [fd00::5]:41234_[fd00::10]:7000
import net from 'node:net';
import { BatonError } from '../errors.js';
import type { FlowKey } from './routing-table.js';

const endpoint = (address: string, port: number, family: 4 | 6) => (family === 6 ? `[${address}]:${port}` : `${address}:${port}`);

export function connectionId(flow: FlowKey): string {
  return `${endpoint(flow.clientAddress, flow.clientPort, flow.family)}_${endpoint(flow.vipAddress, flow.vipPort, flow.family)}`;
}

const ENDPOINT = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/;

export function parseConnectionId(id: string): FlowKey {
  const bad = (why: string) => new BatonError('E_CONFIG', `connection id ${JSON.stringify(id)} ${why}: want <client ip>:<port>_<dvipa>:<port>`, { step: 'connection-id' });
  const halves = id.split('_');
  if (halves.length !== 2) throw bad('is not two endpoints joined by _');
  const [client, vip] = halves.map((h) => {
    const m = ENDPOINT.exec(h);
    if (!m) throw bad(`has a malformed endpoint ${JSON.stringify(h)}`);
    const address = m[1] ?? m[2]!;
    const family = m[1] !== undefined ? 6 : 4;
    if ((family === 4 && !net.isIPv4(address)) || (family === 6 && !net.isIPv6(address))) throw bad(`has an invalid address ${address}`);
    const port = Number(m[3]);
    if (port < 1 || port > 65535) throw bad(`has port ${port} out of range`);
    return { address, port, family: family as 4 | 6 };
  }) as [{ address: string; port: number; family: 4 | 6 }, { address: string; port: number; family: 4 | 6 }];
  if (client.family !== vip.family) throw bad('mixes IPv4 and IPv6');
  return { family: client.family, clientAddress: client.address, clientPort: client.port, vipAddress: vip.address, vipPort: vip.port };
}
