// The pure half of native/repair.ts: the state struct as the C side sees it (its addresses:
// test/unit/flow.test.ts).
// No kernel, no libbaton.so: the library is loaded on the first native call only.
import { describe, expect, it } from 'vitest';
import {
  decodeRawState,
  encodeRawState,
  rawForImport,
  type TcpConnectionState,
} from '../../../native/repair.js';
import { sampleState } from '../../helpers/state.js';

// The values the assertions below count on: a 16-byte send queue with a 6-byte unsent tail, a
// 12-byte receive queue starting at seq 5000, timestamps and window scaling but no SACK.
const state = (over: Partial<TcpConnectionState> = {}): TcpConnectionState =>
  sampleState({
    sendQueue: Buffer.from('sent-then-unsent'),
    unsentLength: 6,
    recvQueue: Buffer.from('request body'),
    recvSeq: 5000,
    options: { timestamps: true, sack: false, windowScale: true },
    ...over,
  });

describe('the struct handed to baton_import', () => {
  it('carries every field through encode and decode', () => {
    const { raw } = rawForImport(state({ family: 6, local: { address: 'fd00::1', port: 443 }, remote: { address: 'fd00::2', port: 40000 } }));
    expect(decodeRawState(encodeRawState(raw))).toEqual(raw);
    expect(raw.options).toBe(1 | 4);
    expect([raw.send_len, raw.unsent_len, raw.recv_len]).toEqual([16, 6, 12]);
  });

  it('prepend goes in front of the receive queue and moves its first seq back by its length', () => {
    const { raw, recv } = rawForImport(state(), Buffer.from('GET / '));
    expect(recv.toString()).toBe('GET / request body');
    expect(raw.recv_seq).toBe(5000 - 6);
    expect(raw.recv_len).toBe(18);
    // rcv_nxt, where the client's next byte lands, is unchanged.
    expect(raw.recv_seq + raw.recv_len).toBe(5000 + 12);
  });

  it('sequence arithmetic wraps mod 2^32', () => {
    const { raw } = rawForImport(state({ recvSeq: 3 }), Buffer.alloc(10));
    expect(raw.recv_seq).toBe(2 ** 32 - 7);
    const again = decodeRawState(encodeRawState(raw));
    expect(again.recv_seq).toBe(2 ** 32 - 7);
  });

  it('refuses an unsent tail longer than the send queue', () => {
    expect(() => rawForImport(state({ unsentLength: 17 }))).toThrow(/unsentLength/);
  });
});
