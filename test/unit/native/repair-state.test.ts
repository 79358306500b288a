// The pure half of native/repair.ts: addresses and the state struct as the C side sees them.
// No kernel, no libbaton.so: the library is loaded on the first native call only.
import { describe, expect, it } from 'vitest';
import {
  addressToBytes,
  bytesToAddress,
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

describe('addresses as struct baton_tcp_state holds them', () => {
  it('IPv4 fills the first 4 bytes in network order and reads back', () => {
    const b = addressToBytes(4, '10.1.2.254');
    expect([...b]).toEqual([10, 1, 2, 254, ...new Array(12).fill(0)]);
    expect(bytesToAddress(4, b)).toBe('10.1.2.254');
  });

  it.each([
    ['fd00:201::2', 'fd00:201::2'],
    ['::1', '::1'],
    ['::', '::'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], // the first of two equal zero runs
    ['2001:DB8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'], // a single zero group stays
    ['::ffff:10.1.2.3', '::ffff:10.1.2.3'],
    ['::ffff:a01:203', '::ffff:10.1.2.3'],
    ['fe80::1:2', 'fe80::1:2'],
  ])('IPv6 %s round-trips to its canonical form %s', (text, canonical) => {
    expect(bytesToAddress(6, addressToBytes(6, text))).toBe(canonical);
  });

  it('IPv6 bytes are network order', () => {
    expect([...addressToBytes(6, '2001:db8::ff01')]).toEqual([0x20, 0x01, 0x0d, 0xb8, ...new Array(10).fill(0), 0xff, 0x01]);
  });

  it('rejects what is not a plain address of the family', () => {
    expect(() => addressToBytes(4, '::1')).toThrow(/IPv4/);
    expect(() => addressToBytes(6, '10.0.0.1')).toThrow(/IPv6/);
    expect(() => addressToBytes(6, 'fe80::1%eth0')).toThrow(/IPv6/);
  });
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
