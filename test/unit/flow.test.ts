// controller/flow.ts: the address codec, flows built from connection states and sockets, and the
// connection id. Pure: no kernel, no native library.
import net from 'node:net';
import fc from 'fast-check';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { describe, expect, it } from 'vitest';
import { type BatonError, isBatonError } from '../../controller/errors.js';
import {
  addressToBytes,
  bytesToAddress,
  canonicalAddress,
  connectionId,
  endpointText,
  type FlowKey,
  FlowSchema,
  flowOf,
  parseConnectionId,
  socketFlow,
  canonicalIp,
  familyOf,
  hostPort,
  peerText,
} from '../../controller/flow.js';
import { SOCKET_CONSTANTS as K } from '../../native/repair.js';
import { sampleState } from '../helpers/state.js';

/** The E_CONFIG error fn throws (the test fails if it throws nothing, or anything else). */
function configError(fn: () => unknown): BatonError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(isBatonError(caught, 'E_CONFIG')).toBe(true);
  return caught as BatonError;
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

describe('addresses as the kernel structs hold them (16 bytes, network order)', () => {
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
    ['2001:DB8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
    ['2001:DB8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'], // a single zero group stays
    ['1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7:8'],
    ['1:0:0:1:0:0:0:1', '1:0:0:1::1'], // the longest run, not the first
    ['fd00:0:0:1::7', 'fd00:0:0:1::7'],
    ['fe80::1:2', 'fe80::1:2'],
    // IPv4-mapped, however written, comes out dotted: the one canonical form of both.
    ['::ffff:10.1.2.3', '::ffff:10.1.2.3'],
    ['::ffff:a01:203', '::ffff:10.1.2.3'],
    ['::FFFF:192.0.2.1', '::ffff:192.0.2.1'],
    ['0:0:0:0:0:ffff:c000:201', '::ffff:192.0.2.1'],
    // Any other dotted tail is just the last 32 bits, written in hex.
    ['64:ff9b::10.0.0.1', '64:ff9b::a00:1'],
  ])('IPv6 %s round-trips to its canonical form %s', (text, canonical) => {
    expect(bytesToAddress(6, addressToBytes(6, text))).toBe(canonical);
    expect(canonicalAddress(6, text)).toBe(canonical);
  });

  it('IPv6 bytes are network order', () => {
    expect([...addressToBytes(6, '2001:db8::ff01')]).toEqual([0x20, 0x01, 0x0d, 0xb8, ...new Array(10).fill(0), 0xff, 0x01]);
    expect(hex(addressToBytes(6, '::ffff:192.0.2.1'))).toBe('00000000000000000000ffffc0000201');
  });

  it('reads ::a.b.c.d as the deprecated IPv4-compatible address it spells, not as IPv4-mapped', () => {
    // ipaddr.js alone would read it as ::ffff:1.2.3.4, a different address.
    for (const text of ['::1.2.3.4', '0:0:0:0:0:0:1.2.3.4', '::0:1.2.3.4']) {
      expect(hex(addressToBytes(6, text))).toBe('00000000000000000000000001020304');
      expect(canonicalAddress(6, text)).toBe('::1.2.3.4');
    }
  });

  it('refuses what is not a plain address of the family, naming the field', () => {
    expect(configError(() => addressToBytes(4, '::1')).message).toMatch(/address "::1" is not an IPv4 address/);
    expect(configError(() => addressToBytes(6, '10.0.0.1', 'clientAddress')).message).toMatch(/clientAddress "10.0.0.1" is not an IPv6 address/);
    // A zone id names an interface of this host; it is not part of the address a packet carries.
    expect(configError(() => addressToBytes(6, 'fe80::1%eth0')).message).toMatch(/not an IPv6 address/);
    // Legacy IPv4 forms inet_aton takes and ipaddr.js would too: ambiguous, refused.
    for (const legacy of ['010.1.2.3', '1.2.3', '0x7f.0.0.1', '4294967295', '1.2.3.256', ' 10.0.0.1', '']) {
      expect(configError(() => addressToBytes(4, legacy)).message).toMatch(/is not an IPv4 address/);
    }
    expect(configError(() => addressToBytes(5 as 4, '10.0.0.1')).message).toMatch(/family 5 must be 4 or 6/);
  });

  it('quotes refused text bounded, never whole', () => {
    const err = configError(() => addressToBytes(6, `${'a'.repeat(100_000)}\u0000`));
    expect(err.message).toMatch(/is not an IPv6 address/);
    expect(err.message.length).toBeLessThan(160);
  });

  it('any 16 bytes: written as inet_ntop writes them, and read back to the same bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), fc.uint8Array({ minLength: 16, maxLength: 16 }), fc.boolean(), (raw, mask, mapped) => {
        // Zero groups are where the formatting rules live: make runs of them common, and IPv4-mapped
        // addresses too (random bytes would almost never be).
        const bytes = raw.map((b, i) => (mask[i >> 1]! & 1 ? b : 0));
        if (mapped) bytes.set([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        const text = bytesToAddress(6, bytes);
        expect(hex(addressToBytes(6, text))).toBe(hex(bytes));
        // The oracle: libuv's inet_pton/inet_ntop (node:net's SocketAddress) given the eight groups
        // written out in full.
        const full = Array.from({ length: 8 }, (_, g) => ((bytes[2 * g]! << 8) | bytes[2 * g + 1]!).toString(16)).join(':');
        expect(text).toBe(new net.SocketAddress({ address: full, family: 'ipv6' }).address);
      }),
      { numRuns: 3000 },
    );
  });

  it('any IPv6 text: the same address as the WHATWG URL parser reads, written as it writes it (mapped aside)', () => {
    const whatwg = (text: string) => new URL(`http://[${text}]/`).hostname;
    fc.assert(
      fc.property(fc.ipV6(), (text) => {
        const canonical = canonicalAddress(6, text);
        expect(canonicalAddress(6, canonical)).toBe(canonical);
        expect(whatwg(canonical)).toBe(whatwg(text));
        if (!canonical.includes('.')) expect(`[${canonical}]`).toBe(whatwg(text));
      }),
      { numRuns: 2000 },
    );
  });

  it('IPv4: exactly the strict dotted-decimal texts are accepted, and each is its own canonical form', () => {
    fc.assert(
      fc.property(fc.oneof(fc.ipV4(), fc.ipV4Extended()), (text) => {
        if (net.isIPv4(text)) expect(bytesToAddress(4, addressToBytes(4, text))).toBe(text);
        else expect(() => addressToBytes(4, text)).toThrow(/is not an IPv4 address/);
      }),
      { numRuns: 1000 },
    );
  });
});

describe('flows', () => {
  const state = sampleState({ local: { address: '10.203.0.10', port: 7000 }, remote: { address: '10.203.0.100', port: 40000 } });
  const flow: FlowKey = { family: 4, clientAddress: '10.203.0.100', clientPort: 40000, vipAddress: '10.203.0.10', vipPort: 7000 };

  it('flowOf a connection state: the remote end is the client, the local end the DVIPA', () => {
    expect(flowOf(state)).toEqual(flow);
    expect(flowOf({ family: 6, local: { address: 'fd00::10', port: 443 }, remote: { address: 'fd00::5', port: 1 } })).toEqual({
      family: 6,
      clientAddress: 'fd00::5',
      clientPort: 1,
      vipAddress: 'fd00::10',
      vipPort: 443,
    });
  });

  it('socketFlow of an inspected socket: its flow when it has a peer, undefined otherwise', () => {
    const info = { domain: K.AF_INET, type: K.SOCK_STREAM, protocol: K.IPPROTO_TCP, tcpState: K.TCP_ESTABLISHED };
    expect(socketFlow({ ...info, local: { family: 4, ...state.local }, remote: state.remote })).toEqual(flow);
    expect(socketFlow({ ...info, local: { family: 4, ...state.local } })).toBeUndefined();
    expect(socketFlow({ domain: K.AF_UNIX, type: K.SOCK_STREAM, protocol: 0 })).toBeUndefined();
  });

  it('a flow is what the wire schema (route, probe) describes, and nothing more', () => {
    const check = TypeCompiler.Compile(FlowSchema);
    expect(check.Check(flowOf(state))).toBe(true);
    expect(check.Check({ ...flow, extra: 1 })).toBe(false);
    expect(check.Check({ ...flow, clientPort: 0 })).toBe(false);
    expect(check.Check({ ...flow, family: 5 })).toBe(false);
  });

  it('endpointText brackets an IPv6 host', () => {
    expect(endpointText(4, '10.0.0.5', 80)).toBe('10.0.0.5:80');
    expect(endpointText(6, 'fd00::5', 80)).toBe('[fd00::5]:80');
  });
});

describe('connection ids', () => {
  it.each<FlowKey>([
    { family: 4, clientAddress: '10.203.0.50', clientPort: 41234, vipAddress: '10.203.0.10', vipPort: 7000 },
    { family: 6, clientAddress: 'fd00::5', clientPort: 1, vipAddress: 'fd00::10', vipPort: 65535 },
    { family: 6, clientAddress: '::ffff:10.1.2.3', clientPort: 5, vipAddress: '::ffff:10.1.2.4', vipPort: 80 },
  ])('round-trips %o', (flow) => {
    expect(parseConnectionId(connectionId(flow))).toEqual(flow);
  });

  it('formats IPv4 as client_dvipa', () => {
    expect(connectionId({ family: 4, clientAddress: '10.0.0.5', clientPort: 40000, vipAddress: '10.0.0.100', vipPort: 80 })).toBe('10.0.0.5:40000_10.0.0.100:80');
  });

  it('is the same for one flow however its addresses were written', () => {
    const id = '[2001:db8::1]:5_[::ffff:192.0.2.1]:7000';
    expect(connectionId({ family: 6, clientAddress: '2001:DB8:0:0:0:0:0:1', clientPort: 5, vipAddress: '::ffff:c000:201', vipPort: 7000 })).toBe(id);
    const parsed = parseConnectionId('[2001:0db8::0:1]:5_[0:0:0:0:0:FFFF:c000:201]:7000');
    expect(parsed).toEqual({ family: 6, clientAddress: '2001:db8::1', clientPort: 5, vipAddress: '::ffff:192.0.2.1', vipPort: 7000 });
    expect(connectionId(parsed)).toBe(id);
  });

  it('refuses a flow whose address is not of its family', () => {
    expect(configError(() => connectionId({ family: 4, clientAddress: 'fd00::5', clientPort: 5, vipAddress: '10.0.0.1', vipPort: 80 })).message).toMatch(/clientAddress "fd00::5" is not an IPv4 address/);
  });

  it.each([
    ['no separator', '10.0.0.5:40000'],
    ['a bad address', '10.0.0.500:1_10.0.0.1:80'],
    ['port 0', '10.0.0.5:0_10.0.0.1:80'],
    ['a big port', '10.0.0.5:70000_10.0.0.1:80'],
    ['mixed families', '[fd00::1]:5_10.0.0.1:80'],
    ['junk', '../../etc_passwd'],
    ['an IPv4 address in brackets', '[10.0.0.5]:1_[10.0.0.1]:80'],
    ['an IPv6 address without brackets', 'fd00::5:1_fd00::1:80'],
    ['a zone id', '[fe80::1%eth0]:1_[fe80::2]:80'],
    ['a legacy IPv4 form', '010.0.0.5:1_10.0.0.1:80'],
    ['too long', `${'1'.repeat(200)}_10.0.0.1:80`],
  ])('rejects %s with the expected form', (_why, id) => {
    expect(() => parseConnectionId(id)).toThrow(/want <client ip>:<port>_<dvipa>:<port>/);
  });

  it('quotes a refused id bounded', () => {
    const err = configError(() => parseConnectionId(`${'9'.repeat(100_000)}_x`));
    expect(err.message).toMatch(/longer than 110 characters/);
    expect(err.message.length).toBeLessThan(260);
  });
});

describe('an address of either family', () => {
  it('tells the family, canonicalises either, refuses what is neither (a zone id included)', () => {
    expect(familyOf('10.1.2.3')).toBe(4);
    expect(familyOf('2001:DB8::1')).toBe(6);
    expect(familyOf('fe80::1%eth0')).toBeUndefined();
    expect(familyOf('010.1.2.3')).toBeUndefined();
    expect(familyOf('host.example')).toBeUndefined();
    expect(canonicalIp('2001:DB8:0:0::0:10')).toBe('2001:db8::10');
    expect(canonicalIp('10.1.2.3')).toBe('10.1.2.3');
    expect(() => canonicalIp('10.0.0.300', 'address')).toThrow(/address "10.0.0.300" is not an IPv4 or IPv6 address/);
    expect(() => canonicalIp('fe80::1%eth0')).toThrow(/not an IPv4 or IPv6 address/);
  });

  it('writes host:port with an IPv6 host in brackets, for addresses and for a socket\'s peer', () => {
    expect(hostPort('10.1.2.3', 4702)).toBe('10.1.2.3:4702');
    expect(hostPort('2001:db8::11', 4702)).toBe('[2001:db8::11]:4702');
    expect(peerText({ remoteFamily: 'IPv6', remoteAddress: '2001:db8::5', remotePort: 41234 })).toBe('[2001:db8::5]:41234');
    expect(peerText({ remoteFamily: 'IPv4', remoteAddress: '10.1.2.3', remotePort: 80 })).toBe('10.1.2.3:80');
    // A socket already closed knows neither.
    expect(peerText({})).toBe('?:0');
  });
});
