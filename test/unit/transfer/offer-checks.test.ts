// What a target batond checks on an offer before it touches a socket (issue 11, item 7): the
// connection is to a DVIPA, on the port the chosen application registered and the offer names,
// the offer says it comes from the node whose certificate the link proved, that node is the
// distributor or serves the flow by the distributor's routing table, and no peer holds more than
// its share of offers and bytes. Every refusal is a reject with its reason, counted, and no socket
// call. And application state or peeked bytes beyond the SDK's own limits never reach the relay:
// the decoder refuses them. Socket steps are recorded (sockets.ts is the seam); the lab test
// (test/integration/transfer/untrusted-peers.test.ts) sends a forged offer to a real batond.
import { describe, expect, it } from 'vitest';
import type { FlowKey } from '../../../controller/flow.js';
import { MAX_JSON_DEPTH } from '../../../controller/input.js';
import { useTcpPairs } from '../../helpers/loopback.js';
import { createLogger } from '../../../controller/log.js';
import { Channel } from '../../../controller/transfer/channel.js';
import { Accepts, connToWire, type Decoded, decodeMessage, header, MAX_APP_STATE_BYTES, MAX_PEEKED_BYTES } from '../../../controller/transfer/messages.js';
import { MAX_PEEKED_BYTES as SDK_MAX_PEEKED_BYTES } from '../../../controller/sdk/router.js';
import type { HandoffSockets } from '../../../controller/transfer/sockets.js';
import { type OfferPolicy, type TargetApp, TargetRelay } from '../../../controller/transfer/target-relay.js';
import { sampleState } from '../../helpers/state.js';

const log = createLogger({}, 'silent');
const DVIPA = '10.203.0.10';
/** The SDK's limits (docs/protocol.md), which batond enforces too. */
const STATE_LIMIT = 32 * 1024;
const PEEKED_LIMIT = 256 * 1024;
const FLOW: FlowKey = { family: 4, clientAddress: '10.203.0.100', clientPort: 40000, vipAddress: DVIPA, vipPort: 7000 };

/** The owner question the relay asked the distributor, and how the test will answer it. */
interface Asked {
  node: string;
  flow: FlowKey;
  connId: string;
  answer(ok: boolean): Promise<void>;
}

function world(limits: Partial<Pick<OfferPolicy, 'offersPerPeer' | 'offerBytesPerPeer'>> = {}) {
  const events: string[] = [];
  const reasons: string[] = [];
  const channel = (who: string) =>
    ({
      send: (type: string, body: { reason?: string }) => {
        events.push(`${who}:${type}`);
        if (type === 'reject') reasons.push(body.reason ?? '');
        return true;
      },
    }) as unknown as Channel<never>;
  let nextFd = 10;
  const notHere = () => {
    throw new Error('not at the target');
  };
  const sockets: HandoffSockets = {
    inspect: notHere,
    snapshot: notHere,
    delta: notHere,
    resume: notHere,
    quietClock: notHere,
    reinstate: (state) => (events.push(`reinstate ${state.remote.port}`), nextFd++),
    complete: (fd) => void events.push(`complete fd${fd}`),
    goLive: (fd) => void events.push(`goLive fd${fd}`),
    release: (fd) => void events.push(`release fd${fd}`),
    discard: (fd) => void events.push(`discard fd${fd}`),
  };
  const asked: Asked[] = [];
  const policy: OfferPolicy = {
    isDvipa: (address) => address === DVIPA,
    distributor: 'n1',
    confirmOwner: (node, flow, connId) =>
      new Promise<void>((resolve, reject) => {
        asked.push({
          node,
          flow,
          connId,
          answer: async (ok) => {
            if (ok) resolve();
            else reject(new Error(`${node} does not serve this flow`));
            // The relay acts on the answer in a later microtask.
            await new Promise((r) => setImmediate(r));
          },
        });
      }),
    offersPerPeer: limits.offersPerPeer ?? 100,
    offerBytesPerPeer: limits.offerBytesPerPeer ?? 1 << 20,
    targetCapacity: 10_000,
  };
  const relay = new TargetRelay(log, 10_000, sockets, policy);
  const app = (opts: Partial<TargetApp> = {}): TargetApp => {
    const descriptors = { send: (fd: number, connId: string) => void events.push(`descriptor fd${fd} (${connId})`) };
    const t: TargetApp = { name: 't', ports: [7000], channel: channel('app') as unknown as TargetApp['channel'], descriptors, decides: false, capacity: 0, ...opts };
    relay.register(t);
    return t;
  };
  const links = { n1: channel('n1'), n3: channel('n3') };
  /** An offer arriving on the link authenticated as `on`. */
  const deliver = (on: 'n1' | 'n3', d: Decoded<never>) => relay.fromPeer(links[on] as never, d as never, on);
  return { events, reasons, relay, app, asked, deliver };
}

const state = sampleState({ sendQueue: Buffer.from('replytail'), unsentLength: 4 });

function offer(connId: string, over: { from?: string; port?: number; local?: { address: string; port: number } } = {}): Decoded<never> {
  const { conn, queues } = connToWire(over.local ? { ...state, local: over.local } : state);
  return {
    msg: { v: 1, type: 'offer', connId, from: over.from ?? 'n1', target: { node: 'n2', port: over.port ?? 7000 }, conn, appState: { user: 'alice' } },
    blobs: [...queues, Buffer.from('GET')],
  } as unknown as Decoded<never>;
}
const msg = (type: string, connId: string, extra: Record<string, unknown> = {}, blobs: Buffer[] = []) => ({ msg: { v: 1, type, connId, ...extra }, blobs }) as unknown as Decoded<never>;

describe('a target refuses an offer before any socket call', () => {
  it('from a node other than the one the link authenticated', () => {
    const w = world();
    w.app();
    // n3's certificate, n3's link, an offer that says it comes from the distributor.
    w.deliver('n3', offer('c', { from: 'n1' }));
    expect(w.events).toEqual(['n3:reject']);
    expect(w.reasons[0]).toMatch(/says it comes from n1 but arrived on n3's link/);
    expect(w.relay.refusals()).toMatchObject({ 'wrong-sender': 1 });
    expect(w.asked).toEqual([]);
    w.relay.close();
  });

  it('for a local address that is not a DVIPA of the cluster', () => {
    const w = world();
    w.app();
    w.deliver('n1', offer('c', { local: { address: '10.203.0.12', port: 7000 } }));
    expect(w.events).toEqual(['n1:reject']);
    expect(w.reasons[0]).toMatch(/10\.203\.0\.12, which is not a DVIPA/);
    expect(w.relay.refusals()).toMatchObject({ 'not-dvipa': 1 });
    w.relay.close();
  });

  it('for a local port other than the one the offer names and the application registered', () => {
    const w = world();
    w.app({ ports: [7000] });
    // The application on 7000 would be given a connection to port 22.
    w.deliver('n1', offer('c', { local: { address: DVIPA, port: 22 } }));
    expect(w.events).toEqual(['n1:reject']);
    expect(w.reasons[0]).toMatch(/port 22.*port 7000/);
    expect(w.relay.refusals()).toMatchObject({ 'wrong-port': 1 });
    w.relay.close();
  });

  it('beyond the offers a peer may have in flight, and beyond their bytes; other peers are not held back', () => {
    const w = world({ offersPerPeer: 2 });
    w.app();
    w.deliver('n1', offer('a'));
    w.deliver('n1', offer('b'));
    w.deliver('n1', offer('c'));
    expect(w.events).toEqual(['reinstate 40000', 'n1:accept', 'reinstate 40000', 'n1:accept', 'n1:reject']);
    expect(w.reasons[0]).toMatch(/n1 has 2 offers in flight here/);
    expect(w.relay.refusals()).toMatchObject({ 'peer-offers': 1 });
    // One goes live: room again.
    w.deliver('n1', msg('live', 'a', { timestamp: 1 }));
    w.events.length = 0;
    w.deliver('n1', offer('d'));
    expect(w.events).toEqual(['reinstate 40000', 'n1:accept']);
    w.relay.close();

    // Each offer holds 9 + 7 + 3 bytes (send queue, receive queue, peeked): the second would pass 30.
    const b = world({ offerBytesPerPeer: 30 });
    b.app();
    b.deliver('n1', offer('a'));
    b.deliver('n1', offer('b'));
    expect(b.events).toEqual(['reinstate 40000', 'n1:accept', 'n1:reject']);
    expect(b.reasons[0]).toMatch(/would hold 38 bytes here \(this one 19 bytes\), more than 30/);
    expect(b.relay.refusals()).toMatchObject({ 'peer-bytes': 1 });
    // An abort gives the bytes back.
    b.deliver('n1', msg('abort', 'a', { reason: 'rolled back' }));
    b.events.length = 0;
    b.deliver('n1', offer('c'));
    expect(b.events).toEqual(['reinstate 40000', 'n1:accept']);
    b.relay.close();
  });
});

describe('an offer from a node that is not the distributor: the distributor must say it serves the flow', () => {
  it('from the distributor: nothing to ask', () => {
    const w = world();
    w.app();
    w.deliver('n1', offer('c'));
    expect(w.asked).toEqual([]);
    expect(w.events).toEqual(['reinstate 40000', 'n1:accept']);
    w.relay.close();
  });

  it('a transfer again: the distributor is asked first; only its yes lets the socket be reinstated and accepted', async () => {
    const w = world();
    w.app();
    w.deliver('n3', offer('c', { from: 'n3' }));
    expect(w.asked.map((a) => ({ node: a.node, flow: a.flow, connId: a.connId }))).toEqual([{ node: 'n3', flow: FLOW, connId: 'c' }]);
    expect(w.events).toEqual([]);
    await w.asked[0]!.answer(true);
    expect(w.events).toEqual(['reinstate 40000', 'n3:accept']);
    w.deliver('n3', msg('live', 'c', { timestamp: 5 }));
    expect(w.events.slice(2)).toEqual(['goLive fd10', 'descriptor fd10 (c)', 'app:transferred', 'release fd10']);
    w.relay.close();
  });

  it('a node that does not serve the flow is refused before any socket is touched; nothing reaches the application', async () => {
    const w = world();
    w.app();
    w.deliver('n3', offer('forged', { from: 'n3' }));
    await w.asked[0]!.answer(false);
    expect(w.events).toEqual(['n3:reject']);
    expect(w.reasons[0]).toMatch(/n3 does not serve this flow/);
    expect(w.relay.refusals()).toMatchObject({ 'not-owner': 1 });
    // Whatever it sends next for that connection is for no transfer here.
    w.deliver('n3', msg('live', 'forged', { timestamp: 5 }));
    expect(w.events).not.toContain('goLive fd10');
    w.relay.close();
  });

  it('a deciding application is asked only once the distributor confirmed; never for a forged offer', async () => {
    const w = world();
    w.app({ decides: true });
    w.deliver('n3', offer('forged', { from: 'n3' }));
    expect(w.events).toEqual([]);
    await w.asked[0]!.answer(false);
    expect(w.events).toEqual(['n3:reject']);
    w.deliver('n3', offer('real', { from: 'n3' }));
    await w.asked[1]!.answer(true);
    expect(w.events).toEqual(['n3:reject', 'app:decide']);
    w.relay.close();
  });

  it('commit or live before the accept (the ownership still unconfirmed) is refused, nothing goes live', async () => {
    const w = world();
    w.app();
    w.deliver('n3', offer('c', { from: 'n3' }));
    w.deliver('n3', msg('live', 'c', { timestamp: 5 }));
    expect(w.events).not.toContain('goLive fd10');
    expect(w.events).not.toContain('reinstate 40000');
    // The distributor's yes arrives too late to matter.
    await w.asked[0]!.answer(true);
    expect(w.events).not.toContain('n3:accept');
    w.relay.close();
  });
});

describe('application state and peeked bytes are bounded at the decoder, for every message that carries them', () => {
  const pair = useTcpPairs();

  /** A real peer link into a relay: what the decoder lets through reaches fromPeer. */
  async function peerLink(w: ReturnType<typeof world>) {
    const { client, server } = await pair();
    const channel = new Channel(server, Accepts.agentFromPeer, log, 'peer');
    channel.on('message', (d) => w.relay.fromPeer(channel, d, 'n1'));
    return { client, channel };
  }

  function rawOffer(connId: string, appState: string, peeked = Buffer.from('GET')): Buffer {
    const { conn, queues } = connToWire(state);
    const blobs = [...queues, peeked];
    // Written by hand: the header carries appState exactly as an attacker would put it.
    const head = JSON.stringify({ ...header('offer', { connId, from: 'n1', target: { node: 'n2', port: 7000 }, conn, appState: null }), blobs: blobs.map((b) => b.length) }).replace('"appState":null', `"appState":${appState}`);
    const json = Buffer.from(head);
    const prefix = Buffer.alloc(8);
    prefix.writeUInt32BE(4 + json.length + blobs.reduce((n, b) => n + b.length, 0), 0);
    prefix.writeUInt32BE(json.length, 4);
    return Buffer.concat([prefix, json, ...blobs]);
  }

  it('batond and the SDK use the same limits: 32 KiB of state, 256 KiB peeked', () => {
    expect(MAX_APP_STATE_BYTES).toBe(STATE_LIMIT);
    expect(MAX_PEEKED_BYTES).toBe(PEEKED_LIMIT);
    expect(SDK_MAX_PEEKED_BYTES).toBe(MAX_PEEKED_BYTES);
  });

  it('state nested deeper than MAX_JSON_DEPTH, state over 32 KiB, peeked bytes over 256 KiB: dropped, counted, no socket call', async () => {
    const w = world();
    w.app();
    const { client, channel } = await peerLink(w);
    const deep = (n: number) => `${'['.repeat(n)}${']'.repeat(n)}`;
    client.write(rawOffer('deep', deep(MAX_JSON_DEPTH + 1)));
    client.write(rawOffer('big', JSON.stringify('x'.repeat(STATE_LIMIT))));
    client.write(rawOffer('peeked', 'null', Buffer.alloc(PEEKED_LIMIT + 1)));
    // At the limits exactly: accepted.
    client.write(rawOffer('ok', deep(MAX_JSON_DEPTH)));
    // Frames are read in order: once the last is reinstated, the three before it were refused.
    for (let waited = 0; w.events.length < 1 && waited < 2000; waited += 10) await new Promise((r) => setTimeout(r, 10));
    expect(w.events).toEqual(['reinstate 40000']);
    expect(channel.rejected.get('schema')).toBe(3);
    client.destroy();
    channel.close();
    w.relay.close();
  });

  it('the same bounds on handoff, decide and transferred', () => {
    const big = 'x'.repeat(STATE_LIMIT);
    const deep = JSON.parse(`${'['.repeat(MAX_JSON_DEPTH + 1)}${']'.repeat(MAX_JSON_DEPTH + 1)}`) as unknown;
    const peeked = Buffer.alloc(PEEKED_LIMIT + 1);
    const client = { address: '10.0.0.1', port: 4000 };
    const cases: Array<[readonly string[], string, Record<string, unknown>, Buffer[]]> = [
      [Accepts.agentFromRouter, 'handoff', { connId: 'h', target: { node: 'n2', port: 7000 } }, [Buffer.alloc(0)]],
      [Accepts.target, 'decide', { connId: 'd', from: 'n1', client }, [Buffer.alloc(0)]],
      [Accepts.target, 'transferred', { connId: 't', from: 'n1', client }, [Buffer.alloc(0), Buffer.alloc(0)]],
    ];
    for (const [accepts, type, body, blobs] of cases) {
      for (const [appState, blob0] of [[big, blobs[0]], [deep, blobs[0]], [null, peeked]] as const) {
        const frame = { header: { ...header(type as 'handoff', { ...body, appState } as never), blobs: [blob0!.length, ...blobs.slice(1).map((b) => b.length)] }, blobs: [blob0!, ...blobs.slice(1)] };
        const refused = (() => {
          try {
            decode(frame, accepts);
            return undefined;
          } catch (err) {
            return err as { code?: string; context?: { rejection?: string } };
          }
        })();
        expect(refused, `${type} with ${typeof appState === 'string' ? 'big state' : appState ? 'deep state' : 'big peeked'}`).toMatchObject({ code: 'E_PROTOCOL', context: { rejection: 'schema' } });
      }
    }
  });
});

/** Decodes a frame as a channel would (an encoder would refuse to build some of these). */
function decode(frame: { header: Record<string, unknown>; blobs: Buffer[] }, accepts: readonly string[]) {
  return decodeMessage(frame as never, accepts as never);
}
