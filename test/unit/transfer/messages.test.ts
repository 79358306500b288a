import { sampleState } from '../../helpers/state.js';
import { describe, expect, it } from 'vitest';
import { encodeFrame, FrameDecoder } from '../../../controller/transfer/framing.js';
import { Accepts, connFromWire, connToWire, decodeMessage, header, type Message } from '../../../controller/transfer/messages.js';

const state = sampleState();

function roundTrip(h: Record<string, unknown>, blobs: Buffer[] = []) {
  const [frame] = new FrameDecoder().push(Buffer.concat(encodeFrame(h, blobs)));
  return frame!;
}

const offer = () => {
  const { conn, queues } = connToWire(state);
  return roundTrip(header('offer', { connId: 'n1.abc', from: 'n1', target: { node: 'n2', port: 7000 }, conn, appState: { user: 'alice' } }), [...queues, Buffer.from('peek'), Buffer.alloc(0)]);
};

describe('transfer messages', () => {
  it('carry a connection state exactly: JSON fields plus queues as blobs', () => {
    const { msg, blobs } = decodeMessage(offer(), Accepts.agentFromPeer);
    expect(msg.type).toBe('offer');
    const back = connFromWire((msg as Message<'offer'>).conn, blobs[0]!, blobs[1]!);
    expect(back).toEqual(state);
    expect(blobs[2]!.toString()).toBe('peek');
  });

  it('reject a message type the receiving side may not get', () => {
    expect(() => decodeMessage(offer(), Accepts.router)).toThrow(/unexpected message type string "offer"/);
  });

  it.each([
    ['sequence number beyond 32 bits', (m: any) => (m.conn.sendSeq = 2 ** 32)],
    ['negative port', (m: any) => (m.conn.remote.port = -1)],
    ['window scale above 14', (m: any) => (m.conn.sndWscale = 15)],
    ['unknown field', (m: any) => (m.conn.extra = 1)],
    ['missing target', (m: any) => delete m.target],
    ['connId with a slash', (m: any) => (m.connId = 'a/b')],
    ['wrong protocol version', (m: any) => (m.v = 2)],
    ['address that is not an IP', (m: any) => (m.conn.local.address = 'evil.example')],
  ])('reject an offer with %s, naming the path', (_name, mutate) => {
    const f = offer();
    mutate(f.header);
    expect(() => decodeMessage(f, Accepts.agentFromPeer)).toThrow(/invalid offer message at \/|invalid offer/);
  });

  it('reject a wrong number of blobs', () => {
    const f = roundTrip(header('commit', { connId: 'n1.abc', unsentLength: 0, window: state.window }), []);
    expect(() => decodeMessage(f, Accepts.agentFromPeer)).toThrow(/carries 0 blobs, expected 1/);
  });

  it('an application sees only its own messages: no connection state reaches it', () => {
    // A routing application hands a socket over and hears done or failed; a target application
    // is asked (decide) and given a live socket (transferred): the TCP state stays between batonds.
    expect(() => decodeMessage(offer(), Accepts.target)).toThrow(/unexpected message type string "offer"/);
    const handoff = roundTrip(header('handoff', { connId: 'n1.abc', target: { node: 'n2', port: 7000 }, appState: null }), [Buffer.from('peek'), Buffer.alloc(0)]);
    expect(decodeMessage(handoff, Accepts.agentFromRouter).msg.type).toBe('handoff');
    expect(() => decodeMessage(handoff, Accepts.agentFromPeer)).toThrow(/unexpected message type string "handoff"/);
    const transferred = roundTrip(header('transferred', { connId: 'n1.abc', from: 'n1', client: { address: '10.0.0.1', port: 4000 }, appState: {} }), [Buffer.alloc(0), Buffer.from('tail')]);
    expect(decodeMessage(transferred, Accepts.target).blobs[1]!.toString()).toBe('tail');
    const hello = roundTrip(header('hello', { role: 'target', name: 't', ports: [7000], fdAddress: 'has space' }));
    expect(() => decodeMessage(hello, Accepts.agentFromTarget)).toThrow(/invalid hello message at \/fdAddress/);
  });

  it('reject an unsent length larger than the send queue', () => {
    const { conn } = connToWire(state);
    expect(() => connFromWire({ ...conn, unsentLength: 999 }, Buffer.alloc(10), Buffer.alloc(0))).toThrow(/exceeds send queue/);
  });
});
