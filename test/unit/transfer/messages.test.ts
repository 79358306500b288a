import { describe, expect, it } from 'vitest';
import { encodeFrame, FrameDecoder } from '../../../controller/transfer/framing.js';
import { Accepts, connFromWire, connToWire, decodeMessage, header } from '../../../controller/transfer/messages.js';
import type { TcpConnectionState } from '../../../native/repair.js';

const state: TcpConnectionState = {
  family: 4,
  local: { address: '10.203.0.10', port: 7000 },
  remote: { address: '10.203.0.100', port: 40000 },
  sendSeq: 0xfffffff0,
  recvSeq: 12345,
  sendQueue: Buffer.from('already sent|not yet sent'),
  unsentLength: 12,
  recvQueue: Buffer.from('GET 10\n'),
  mss: 1448,
  options: { timestamps: true, sack: true, windowScale: true },
  sndWscale: 7,
  rcvWscale: 7,
  timestamp: 987654,
  window: { sndWl1: 1, sndWnd: 65535, maxWindow: 65535, rcvWnd: 65535, rcvWup: 12345 },
};

function roundTrip(h: Record<string, unknown>, blobs: Buffer[] = []) {
  const [frame] = new FrameDecoder().push(Buffer.concat(encodeFrame(h, blobs)));
  return frame!;
}

const offer = () => {
  const { conn, queues } = connToWire(state);
  return roundTrip(header('offer', { connId: 'n1.abc', from: 'n1', target: { node: 'n2', port: 7000 }, conn, appState: { user: 'alice' } }), [...queues, Buffer.from('peek')]);
};

describe('transfer messages', () => {
  it('carry a connection state exactly: JSON fields plus queues as blobs', () => {
    const { msg, blobs } = decodeMessage(offer(), Accepts.target);
    expect(msg.type).toBe('offer');
    const back = connFromWire((msg as { conn: typeof state }).conn, blobs[0]!, blobs[1]!);
    expect(back).toEqual(state);
    expect(blobs[2]!.toString()).toBe('peek');
  });

  it('reject a message type the receiving side may not get', () => {
    expect(() => decodeMessage(offer(), Accepts.router)).toThrow(/unexpected message type "offer"/);
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
    expect(() => decodeMessage(f, Accepts.target)).toThrow(/invalid offer message at \/|invalid offer/);
  });

  it('reject a wrong number of blobs', () => {
    const f = roundTrip(header('commit', { connId: 'n1.abc', unsentLength: 0, window: state.window }), []);
    expect(() => decodeMessage(f, Accepts.target)).toThrow(/carries 0 blobs, expected 1/);
  });

  it('reject an unsent length larger than the send queue', () => {
    const { conn } = connToWire(state);
    expect(() => connFromWire({ ...conn, unsentLength: 999 }, Buffer.alloc(10), Buffer.alloc(0))).toThrow(/exceeds send queue/);
  });
});
