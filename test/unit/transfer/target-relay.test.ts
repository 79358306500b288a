// The target node's bookkeeping when its application dies in the middle of a transfer. Channels
// are reduced to what the relay uses of them (send), recorded; the lab covers the real sockets.
import { describe, expect, it } from 'vitest';
import type { FlowKey } from '../../../controller/agent/routing-table.js';
import { createLogger } from '../../../controller/log.js';
import type { Channel } from '../../../controller/transfer/channel.js';
import { type TargetApp, TargetRelay } from '../../../controller/transfer/target-relay.js';
import { connToWire, type Decoded } from '../../../controller/transfer/messages.js';
import { sampleState } from '../../helpers/state.js';

const log = createLogger({}, 'silent');
const recorder = () => {
  const sent: string[] = [];
  return { sent, channel: { send: (type: string) => (sent.push(type), true) } as unknown as Channel<never> };
};

function offer(connId: string): Decoded<'offer'> {
  const { conn, queues } = connToWire(sampleState());
  return { msg: { v: 1, type: 'offer', connId, from: 'n1', target: { node: 'n3', port: 7000 }, conn, appState: null }, blobs: [...queues, Buffer.alloc(0)] } as Decoded<'offer'>;
}
const msg = (type: string, connId: string) => ({ msg: { v: 1, type, connId }, blobs: [] }) as unknown as Decoded<never>;

describe('TargetRelay when the application dies mid-transfer', () => {
  it('a live that arrives after the application died releases the flow (it was routed here)', () => {
    const orphans: Array<{ flow: FlowKey; connId: string }> = [];
    const relay = new TargetRelay(log, 10_000, (flow, connId) => orphans.push({ flow, connId }));
    const peer = recorder();
    const app = recorder();
    const target: TargetApp = { name: 't', ports: [7000], channel: app.channel as unknown as TargetApp['channel'] };
    relay.register(target);
    relay.fromPeer(peer.channel as never, offer('c1') as never);
    relay.fromApp(target, msg('accept', 'c1'));
    relay.unregister(target);
    expect(peer.sent).toEqual(['accept', 'reject']);
    relay.fromPeer(peer.channel as never, msg('live', 'c1') as never);
    expect(orphans).toEqual([{ connId: 'c1', flow: { family: 4, clientAddress: '10.203.0.100', clientPort: 40000, vipAddress: '10.203.0.10', vipPort: 7000 } }]);
    relay.close();
  });

  it('a transfer the routing node rolled back leaves nothing to release', () => {
    const orphans: unknown[] = [];
    const relay = new TargetRelay(log, 10_000, (flow) => orphans.push(flow));
    const peer = recorder();
    const app = recorder();
    const target: TargetApp = { name: 't', ports: [7000], channel: app.channel as unknown as TargetApp['channel'] };
    relay.register(target);
    relay.fromPeer(peer.channel as never, offer('c2') as never);
    relay.unregister(target);
    relay.fromPeer(peer.channel as never, msg('abort', 'c2') as never);
    expect(orphans).toEqual([]);
    relay.close();
  });
});
