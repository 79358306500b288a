// The target node's side of a handoff: what batond does to the socket and says to whom, in which
// order. Channels are reduced to what the relay uses of them (send), the socket steps are recorded
// (sockets.ts is the seam); the lab tests do both for real.
import { describe, expect, it } from 'vitest';
import type { FlowKey } from '../../../controller/flow.js';
import { createLogger } from '../../../controller/log.js';
import type { Channel } from '../../../controller/transfer/channel.js';
import type { HandoffSockets } from '../../../controller/transfer/sockets.js';
import { type OfferPolicy, type TargetApp, TargetRelay } from '../../../controller/transfer/target-relay.js';
import { connToWire, type Decoded } from '../../../controller/transfer/messages.js';
import { sampleState } from '../../helpers/state.js';

const log = createLogger({}, 'silent');
const FLOW: FlowKey = { family: 4, clientAddress: '10.203.0.100', clientPort: 40000, vipAddress: '10.203.0.10', vipPort: 7000 };

/** One list for everything, so the order across sockets, descriptors and messages shows. */
function world() {
  const events: string[] = [];
  const channel = (who: string) => ({ send: (type: string) => (events.push(`${who}:${type}`), true) }) as unknown as Channel<never>;
  let nextFd = 10;
  const sockets: HandoffSockets = {
    inspect: () => {
      throw new Error('not at the target');
    },
    snapshot: () => {
      throw new Error('not at the target');
    },
    delta: () => {
      throw new Error('not at the target');
    },
    resume: () => undefined,
    quietClock: () => {
      throw new Error('not at the target');
    },
    reinstate: (state, peeked) => (events.push(`reinstate ${state.remote.port} peeked=${peeked.toString()}`), nextFd++),
    complete: (fd, sent, received) => void events.push(`complete fd${fd} sent=${sent.toString()} received=${received.toString()}`),
    goLive: (fd, ts) => void events.push(`goLive fd${fd} ts=${ts}`),
    release: (fd) => void events.push(`release fd${fd}`),
    discard: (fd) => void events.push(`discard fd${fd}`),
  };
  const orphans: Array<{ flow: FlowKey; connId: string }> = [];
  // Offers come from the distributor (n1) here, to a DVIPA, within bounds: what offer-checks.test.ts refuses is not at issue.
  const policy: OfferPolicy = {
    isDvipa: (address) => address === FLOW.vipAddress,
    distributor: 'n1',
    confirmOwner: () => Promise.reject(new Error('the distributor needs no confirmation')),
    offersPerPeer: 100,
    offerBytesPerPeer: 1 << 20,
    targetCapacity: 2,
  };
  const relay = new TargetRelay(log, 10_000, sockets, policy, (flow, connId) => orphans.push({ flow, connId }));
  const peer = channel('peer');
  const app = (opts: Partial<TargetApp> = {}): TargetApp => {
    const descriptors = { send: (fd: number, connId: string) => void events.push(`descriptor fd${fd} (${connId})`) };
    const t: TargetApp = { name: 't', ports: [7000], channel: channel('app') as unknown as TargetApp['channel'], descriptors, decides: false, capacity: 0, ...opts };
    relay.register(t);
    return t;
  };
  return { events, relay, peer, app, orphans };
}

// The send queue holds 'reply' (sent) then 'tail' (never transmitted by the routing node).
const state = sampleState({ sendQueue: Buffer.from('replytail'), unsentLength: 4 });
function offer(connId: string): Decoded<'offer'> {
  const { conn, queues } = connToWire(state);
  return { msg: { v: 1, type: 'offer', connId, from: 'n1', target: { node: 'n3', port: 7000 }, conn, appState: { user: 'alice' } }, blobs: [...queues, Buffer.from('GET')] } as Decoded<'offer'>;
}
const msg = (type: string, connId: string, extra: Record<string, unknown> = {}, blobs: Buffer[] = []) => ({ msg: { v: 1, type, connId, ...extra }, blobs }) as unknown as Decoded<never>;
const commit = (connId: string, unsentLength: number) => msg('commit', connId, { unsentLength, window: state.window }, [Buffer.from('late')]);

describe('TargetRelay: batond reinstates, completes and makes live; the application gets a live socket', () => {
  it('an application that does not decide: accepted at once, completed, live with the old clock, then handed over', () => {
    const w = world();
    w.app();
    w.relay.fromPeer(w.peer as never, offer('c1') as never, 'n1');
    expect(w.events).toEqual(['reinstate 40000 peeked=GET', 'peer:accept']);
    w.events.length = 0;
    // The routing node transmitted 2 of the 4 tail bytes after its snapshot: they become sent here.
    w.relay.fromPeer(w.peer as never, commit('c1', 2) as never, 'n1');
    w.relay.fromPeer(w.peer as never, msg('live', 'c1', { timestamp: 777 }) as never, 'n1');
    expect(w.events).toEqual([
      'complete fd10 sent=ta received=late',
      'peer:ready',
      'goLive fd10 ts=777',
      // The descriptor before the message naming it; batond's own copy closed after.
      'descriptor fd10 (c1)',
      'app:transferred',
      'release fd10',
    ]);
    expect(w.relay.page({ limit: 10 }).entries).toMatchObject([{ connId: 'c1', flow: FLOW }]);
    w.relay.close();
  });

  it('live right after accept (the routing node had nothing to commit): the snapshot goes live as it was', () => {
    const w = world();
    w.app();
    w.relay.fromPeer(w.peer as never, offer('c') as never, 'n1');
    w.relay.fromPeer(w.peer as never, msg('live', 'c', { timestamp: 5 }) as never, 'n1');
    expect(w.events).toEqual(['reinstate 40000 peeked=GET', 'peer:accept', 'goLive fd10 ts=5', 'descriptor fd10 (c)', 'app:transferred', 'release fd10']);
    w.relay.close();
  });

  it('an application that decides is asked first; reinstated only on yes; a no goes back as the reason', () => {
    const w = world();
    const t = w.app({ decides: true });
    w.relay.fromPeer(w.peer as never, offer('yes') as never, 'n1');
    w.relay.fromPeer(w.peer as never, offer('no') as never, 'n1');
    expect(w.events).toEqual(['app:decide', 'app:decide']);
    w.relay.fromApp(t, msg('decided', 'yes', { accept: true }));
    w.relay.fromApp(t, msg('decided', 'no', { accept: false, reason: 'not my tenant' }));
    expect(w.events.slice(2)).toEqual(['reinstate 40000 peeked=GET', 'peer:accept', 'peer:reject']);
    // A second answer, or one for an offer already answered, changes nothing.
    w.relay.fromApp(t, msg('decided', 'yes', { accept: true }));
    expect(w.events).toHaveLength(5);
    w.relay.close();
  });

  it('capacity: offers beyond what the application holds are refused without asking it; a release makes room', () => {
    const w = world();
    const t = w.app({ capacity: 1 });
    w.relay.fromPeer(w.peer as never, offer('a') as never, 'n1');
    w.relay.fromPeer(w.peer as never, offer('b') as never, 'n1');
    expect(w.events).toEqual(['reinstate 40000 peeked=GET', 'peer:accept', 'peer:reject']);
    w.relay.fromPeer(w.peer as never, commit('a', 4) as never, 'n1');
    w.relay.fromPeer(w.peer as never, msg('live', 'a') as never, 'n1');
    w.events.length = 0;
    w.relay.fromPeer(w.peer as never, offer('c') as never, 'n1');
    expect(w.events).toEqual(['peer:reject']);
    expect(w.relay.released(t, 'a')).toEqual(FLOW);
    w.relay.fromPeer(w.peer as never, offer('d') as never, 'n1');
    expect(w.events.slice(1)).toEqual(['reinstate 40000 peeked=GET', 'peer:accept']);
    w.relay.close();
  });

  it("an application that names no capacity gets the cluster's default (limits.targetCapacity); 0 is no limit", () => {
    const w = world();
    w.app({ capacity: undefined });
    for (const id of ['a', 'b', 'c']) w.relay.fromPeer(w.peer as never, offer(id) as never, 'n1');
    expect(w.events.filter((e) => e.startsWith('peer:'))).toEqual(['peer:accept', 'peer:accept', 'peer:reject']);
    w.relay.close();
    const unbounded = world();
    unbounded.app({ capacity: 0 });
    for (const id of ['a', 'b', 'c']) unbounded.relay.fromPeer(unbounded.peer as never, offer(id) as never, 'n1');
    expect(unbounded.events.filter((e) => e.startsWith('peer:'))).toEqual(['peer:accept', 'peer:accept', 'peer:accept']);
    unbounded.relay.close();
  });

  it('live without a closing clock: estimated from the snapshot, never behind it', () => {
    const w = world();
    w.app();
    w.relay.fromPeer(w.peer as never, offer('c') as never, 'n1');
    w.relay.fromPeer(w.peer as never, commit('c', 4) as never, 'n1');
    w.relay.fromPeer(w.peer as never, msg('live', 'c') as never, 'n1');
    const ts = Number(/goLive fd10 ts=(\d+)/.exec(w.events.join('\n'))![1]);
    expect(ts).toBeGreaterThanOrEqual(state.timestamp + 1000);
    expect(ts).toBeLessThan(state.timestamp + 2000);
    w.relay.close();
  });

  it('an abort drops the reinstated socket silently; a deciding application is told its offer is gone', () => {
    const w = world();
    w.app();
    w.relay.fromPeer(w.peer as never, offer('c') as never, 'n1');
    w.relay.fromPeer(w.peer as never, msg('abort', 'c', { reason: 'rolled back' }) as never, 'n1');
    expect(w.events).toEqual(['reinstate 40000 peeked=GET', 'peer:accept', 'discard fd10']);
    const d = world();
    d.app({ decides: true });
    d.relay.fromPeer(d.peer as never, offer('c') as never, 'n1');
    d.relay.fromPeer(d.peer as never, msg('abort', 'c', { reason: 'rolled back' }) as never, 'n1');
    expect(d.events).toEqual(['app:decide', 'app:abort']);
    w.relay.close();
    d.relay.close();
  });

  it('a commit that cannot be applied is refused and the socket dropped', () => {
    const w = world();
    w.app();
    w.relay.fromPeer(w.peer as never, offer('c') as never, 'n1');
    w.relay.fromPeer(w.peer as never, commit('c', 9) as never, 'n1');
    expect(w.events.slice(2)).toEqual(['discard fd10', 'peer:reject']);
    w.relay.close();
  });
});

describe('TargetRelay when the application dies mid-transfer', () => {
  it('a live that arrives after the application died releases the flow (it was routed here)', () => {
    const w = world();
    const t = w.app();
    w.relay.fromPeer(w.peer as never, offer('c1') as never, 'n1');
    w.relay.unregister(t);
    expect(w.events).toEqual(['reinstate 40000 peeked=GET', 'peer:accept', 'peer:reject', 'discard fd10']);
    w.relay.fromPeer(w.peer as never, msg('live', 'c1') as never, 'n1');
    expect(w.orphans).toEqual([{ connId: 'c1', flow: FLOW }]);
    w.relay.close();
  });

  it('a transfer the routing node rolled back leaves nothing to release', () => {
    const w = world();
    const t = w.app();
    w.relay.fromPeer(w.peer as never, offer('c2') as never, 'n1');
    w.relay.unregister(t);
    w.relay.fromPeer(w.peer as never, msg('abort', 'c2') as never, 'n1');
    expect(w.orphans).toEqual([]);
    w.relay.close();
  });
});
