// What a target batond checks on an offer before it touches a socket (issue 11, item 7): the
// connection is to a DVIPA, on the port the chosen application registered and the offer names,
// the offer says it comes from the node whose certificate the link proved, that node is the
// distributor or serves the flow by the distributor's routing table, and no peer holds more than
// its share of offers and bytes. Every refusal is a reject with its reason, counted, and no socket
// call. And application state or peeked bytes beyond the SDK's own limits never reach the relay:
// the decoder refuses them. Messages go through the real codecs, socket steps are recorded
// (test/helpers/target-world.ts); the lab test (test/integration/transfer/untrusted-peers.test.ts)
// sends a forged offer to a real batond.
import { describe, expect, it } from 'vitest';
import { MAX_JSON_DEPTH } from '../../../controller/input.js';
import { useTcpPairs } from '../../helpers/loopback.js';
import { createLogger } from '../../../controller/log.js';
import { Channel } from '../../../controller/transfer/channel.js';
import { encodeFrame, FrameDecoder } from '../../../controller/transfer/framing.js';
import { Accepts, connToWire, decodeMessage, header, MAX_APP_STATE_BYTES, MAX_PEEKED_BYTES, type MessageType } from '../../../controller/transfer/messages.js';
import { MAX_PEEKED_BYTES as SDK_MAX_PEEKED_BYTES } from '../../../controller/sdk/router.js';
import { DVIPA, FLOW, STATE, targetWorld } from '../../helpers/target-world.js';

const log = createLogger({}, 'silent');
/** The SDK's limits (docs/protocol.md), which batond enforces too. */
const STATE_LIMIT = 32 * 1024;
const PEEKED_LIMIT = 256 * 1024;

describe('a target refuses an offer before any socket call', () => {
  it('from a node other than the one the link authenticated', () => {
    const w = targetWorld();
    w.app();
    // n3's certificate, n3's link, an offer that says it comes from the distributor.
    w.offer('n3', 'c', { from: 'n1' });
    expect(w.events).toEqual(['n3:reject']);
    expect(w.reasons()[0]).toMatch(/says it comes from n1 but arrived on n3's link/);
    expect(w.relay.refusals()).toMatchObject({ 'wrong-sender': 1 });
    expect(w.asked).toEqual([]);
    w.relay.close();
  });

  it('for a local address that is not a DVIPA of the cluster', () => {
    const w = targetWorld();
    w.app();
    w.offer('n1', 'c', { local: { address: '10.203.0.12', port: 7000 } });
    expect(w.events).toEqual(['n1:reject']);
    expect(w.reasons()[0]).toMatch(/10\.203\.0\.12, which is not a DVIPA/);
    expect(w.relay.refusals()).toMatchObject({ 'not-dvipa': 1 });
    w.relay.close();
  });

  it('for a local port other than the one the offer names and the application registered', () => {
    const w = targetWorld();
    w.app({ ports: [7000] });
    // The application on 7000 would be given a connection to port 22.
    w.offer('n1', 'c', { local: { address: DVIPA, port: 22 } });
    expect(w.events).toEqual(['n1:reject']);
    expect(w.reasons()[0]).toMatch(/port 22.*port 7000/);
    expect(w.relay.refusals()).toMatchObject({ 'wrong-port': 1 });
    w.relay.close();
  });

  it('for an instance or a port no application registered, and for a connection already offered', () => {
    const w = targetWorld();
    w.app({ instance: 'blue' });
    w.offer('n1', 'green', { instance: 'green' });
    w.offer('n1', 'port', { port: 7001, local: { address: DVIPA, port: 7001 } });
    w.offer('n1', 'c');
    w.offer('n1', 'c');
    expect(w.events).toEqual(['n1:reject', 'n1:reject', 'reinstate 40000 peeked=GET', 'n1:accept', 'n1:reject']);
    expect(w.reasons()).toEqual(['no target application serves instance green on port 7000 on this node', 'no target application serves port 7001 on this node', 'a transfer of this connection is already pending here']);
    expect(w.relay.refusals()).toMatchObject({ 'no-application': 2, duplicate: 1 });
    w.relay.close();
  });

  it('beyond the offers a peer may have in flight, and beyond their bytes; other peers are not held back', () => {
    const w = targetWorld({ offersPerPeer: 2 });
    w.app();
    w.offer('n1', 'a');
    w.offer('n1', 'b');
    w.offer('n1', 'c');
    expect(w.events).toEqual(['reinstate 40000 peeked=GET', 'n1:accept', 'reinstate 40000 peeked=GET', 'n1:accept', 'n1:reject']);
    expect(w.reasons()[0]).toMatch(/n1 has 2 offers in flight here/);
    expect(w.relay.refusals()).toMatchObject({ 'peer-offers': 1 });
    // One goes live: room again.
    w.live('n1', 'a', 1);
    w.events.length = 0;
    w.offer('n1', 'd');
    expect(w.events).toEqual(['reinstate 40000 peeked=GET', 'n1:accept']);
    w.relay.close();

    // Each offer holds 9 + 7 + 3 bytes (send queue, receive queue, peeked): the second would pass 30.
    const b = targetWorld({ offerBytesPerPeer: 30 });
    b.app();
    b.offer('n1', 'a');
    b.offer('n1', 'b');
    expect(b.events).toEqual(['reinstate 40000 peeked=GET', 'n1:accept', 'n1:reject']);
    expect(b.reasons()[0]).toMatch(/would hold 38 bytes here \(this one 19 bytes\), more than 30/);
    expect(b.relay.refusals()).toMatchObject({ 'peer-bytes': 1 });
    // An abort gives the bytes back.
    b.abort('n1', 'a');
    b.events.length = 0;
    b.offer('n1', 'c');
    expect(b.events).toEqual(['reinstate 40000 peeked=GET', 'n1:accept']);
    b.relay.close();
  });
});

describe('an offer from a node that is not the distributor: the distributor must say it serves the flow', () => {
  it('from the distributor: nothing to ask', () => {
    const w = targetWorld();
    w.app();
    w.offer('n1', 'c');
    expect(w.asked).toEqual([]);
    expect(w.events).toEqual(['reinstate 40000 peeked=GET', 'n1:accept']);
    w.relay.close();
  });

  it('a transfer again: the distributor is asked first; only its yes lets the socket be reinstated and accepted', async () => {
    const w = targetWorld();
    w.app();
    w.offer('n3', 'c');
    expect(w.asked.map((a) => ({ node: a.node, flow: a.flow, connId: a.connId }))).toEqual([{ node: 'n3', flow: FLOW, connId: 'c' }]);
    expect(w.events).toEqual([]);
    await w.asked[0]!.answer(true);
    expect(w.events).toEqual(['reinstate 40000 peeked=GET', 'n3:accept']);
    w.live('n3', 'c', 5);
    expect(w.events.slice(2)).toEqual(['goLive fd10 ts=5', 'descriptor fd10 (c)', 'app:transferred', 'release fd10']);
    w.relay.close();
  });

  it('a node that does not serve the flow is refused before any socket is touched; nothing reaches the application', async () => {
    const w = targetWorld();
    w.app();
    w.offer('n3', 'forged');
    await w.asked[0]!.answer(false);
    expect(w.events).toEqual(['n3:reject']);
    expect(w.reasons()[0]).toMatch(/n3 does not serve this flow/);
    expect(w.relay.refusals()).toMatchObject({ 'not-owner': 1 });
    // Whatever it sends next for that connection is for no transfer here.
    w.live('n3', 'forged', 5);
    expect(w.events).toEqual(['n3:reject']);
    w.relay.close();
  });

  it('a deciding application is asked only once the distributor confirmed; never for a forged offer', async () => {
    const w = targetWorld();
    w.app({ decides: true });
    w.offer('n3', 'forged');
    expect(w.events).toEqual([]);
    await w.asked[0]!.answer(false);
    expect(w.events).toEqual(['n3:reject']);
    w.offer('n3', 'real');
    await w.asked[1]!.answer(true);
    expect(w.events).toEqual(['n3:reject', 'app:decide']);
    w.relay.close();
  });

  it('commit or live before the accept (the ownership still unconfirmed) builds nothing and takes nothing live', async () => {
    const w = targetWorld();
    w.app();
    w.offer('n3', 'c');
    w.live('n3', 'c', 5);
    w.commit('n3', 'c', 4);
    expect(w.events).toEqual(['n3:reject']);
    // Refused out of phase (target-relay.test.ts): nothing changed, so the distributor's no still ends it as not-owner.
    await w.asked[0]!.answer(false);
    expect(w.events).toEqual(['n3:reject', 'n3:reject']);
    expect(w.relay.refusals()).toMatchObject({ 'not-owner': 1 });
    w.relay.close();
  });
});

describe('application state and peeked bytes are bounded at the decoder, for every message that carries them', () => {
  const pair = useTcpPairs();

  /** A real peer link into a relay: what the decoder lets through reaches fromPeer. */
  async function peerLink(w: ReturnType<typeof targetWorld>) {
    const { client, server } = await pair();
    const channel = new Channel(server, Accepts.agentFromPeer, log, 'peer');
    channel.on('message', (d) => {
      if (d.msg.type === 'offer') w.relay.fromPeer(channel, { msg: d.msg, blobs: d.blobs }, 'n1');
    });
    return { client, channel };
  }

  function rawOffer(connId: string, appState: string, peeked = Buffer.from('GET')): Buffer {
    const { conn, queues } = connToWire(STATE);
    const blobs = [...queues, peeked, Buffer.alloc(0)];
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
    const w = targetWorld();
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
    expect(w.events[0]).toBe('reinstate 40000 peeked=GET');
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
    // Each message with the given state and first blob (its peeked bytes), on the side that receives it.
    const cases: Array<[string, readonly MessageType[], (appState: unknown, blob0: Buffer) => Buffer]> = [
      ['handoff', Accepts.agentFromRouter, (appState, blob0) => frame(header('handoff', { connId: 'h', target: { node: 'n2', port: 7000 }, appState }), [blob0, Buffer.alloc(0)])],
      ['decide', Accepts.target, (appState, blob0) => frame(header('decide', { connId: 'd', from: 'n1', client, appState }), [blob0])],
      ['transferred', Accepts.target, (appState, blob0) => frame(header('transferred', { connId: 't', from: 'n1', client, appState }), [blob0, Buffer.alloc(0)])],
    ];
    for (const [type, accepts, build] of cases) {
      for (const [what, appState, blob0] of [['big state', big, Buffer.alloc(0)], ['deep state', deep, Buffer.alloc(0)], ['big peeked', null, peeked]] as const) {
        expect(() => decodeMessage(new FrameDecoder().push(build(appState, blob0))[0]!, accepts), `${type} with ${what}`).toThrow(expect.objectContaining({ code: 'E_PROTOCOL', context: expect.objectContaining({ rejection: 'schema' }) }));
      }
    }
  });
});

/** The bytes of a frame, as a sender that ignores the SDK's limits would write them. */
function frame(h: Record<string, unknown>, blobs: Buffer[]): Buffer {
  return Buffer.concat(encodeFrame(h, blobs));
}
