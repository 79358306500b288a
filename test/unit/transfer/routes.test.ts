// RemoteRoutes: a node's route requests to the distributor over the peer link. The link awaits one
// answer per connection id at a time, so a connection's requests go one after the other: a
// release still unanswered when the kernel lets the connection go must not make its finished fail.
import { describe, expect, it } from 'vitest';
import { parseConnectionId } from '../../../controller/flow.js';
import { PendingReplies } from '../../../controller/transfer/channel.js';
import type { Body } from '../../../controller/transfer/messages.js';
import type { PeerLinks, PeerLink } from '../../../controller/transfer/peers.js';
import { RemoteRoutes } from '../../../controller/transfer/routes.js';

const FLOW = parseConnectionId('192.0.2.100:40000_192.0.2.10:7000');
const CONN = 'n1.0123456789ab';

function fakeLink() {
  const sent: Array<Body<'route'>> = [];
  const replies = new PendingReplies<PeerLink['replies'] extends PendingReplies<infer T> ? T : never>();
  const link = { channel: { send: (_type: string, body: Body<'route'>) => sent.push(body) }, replies } as unknown as PeerLink;
  const peers = { get: async () => link } as unknown as PeerLinks;
  const answer = (ok: boolean) => replies.deliver({ msg: { type: 'routed', connId: CONN, ok, ...(ok ? {} : { reason: 'no' }) }, blobs: [] } as never);
  return { sent, peers, answer };
}

const flush = () => new Promise((r) => setTimeout(r, 0));

describe('RemoteRoutes', () => {
  it('sends a connection\'s finished only once its release is answered, and both succeed', async () => {
    const { sent, peers, answer } = fakeLink();
    const routes = new RemoteRoutes(peers, () => 'n1', 1000);
    const release = routes.release(FLOW, CONN);
    const finished = routes.finished(FLOW, CONN);
    await flush();
    expect(sent.map((r) => r.op)).toEqual(['release']);
    expect(answer(true)).toBe(true);
    await release;
    await flush();
    expect(sent.map((r) => r.op)).toEqual(['release', 'finished']);
    expect(answer(true)).toBe(true);
    await expect(finished).resolves.toBeUndefined();
  });

  it('a refused request fails its own caller only; the next one for the connection still goes', async () => {
    const { sent, peers, answer } = fakeLink();
    const routes = new RemoteRoutes(peers, () => 'n1', 1000);
    const release = routes.release(FLOW, CONN);
    const finished = routes.finished(FLOW, CONN);
    await flush();
    answer(false);
    await expect(release).rejects.toThrow(/distributor n1 refused release: no/);
    await flush();
    expect(sent.map((r) => r.op)).toEqual(['release', 'finished']);
    answer(true);
    await expect(finished).resolves.toBeUndefined();
  });

  it('requests for different connections do not wait for each other', async () => {
    const { sent, peers } = fakeLink();
    const routes = new RemoteRoutes(peers, () => 'n1', 1000);
    void routes.release(FLOW, CONN).catch(() => undefined);
    void routes.release(FLOW, 'n1.ba9876543210').catch(() => undefined);
    await flush();
    expect(sent.map((r) => r.connId)).toEqual([CONN, 'n1.ba9876543210']);
  });
});
