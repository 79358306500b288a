// The TypeScript mirror of bpf/baton.h (table-layout.ts) against the compiled objects' BTF:
// a layout, enum or map change made on one side only fails here, whichever side it was.
import { describe, expect, it } from 'vitest';
import { isBatonError } from '../../../controller/errors.js';
import {
  ADDR_LEN,
  CONFIG_MAP_NAME,
  CONFIG_OFFSET,
  CONFIG_SIZE,
  MAX_PEER_DISTRIBUTORS,
  FLOW_KEY_OFFSET,
  FLOW_KEY_SIZE,
  MAC_LEN,
  ROUTE_OFFSET,
  ROUTE_SIZE,
  ROUTE_STATE,
  ROUTES_MAP_NAME,
  ROUTES_MAX_ENTRIES_DEFAULT,
  STATS_MAP_NAME,
  STAT_COUNT,
  STAT_COUNTER_SIZE,
  STAT_INDEX,
  STEER_PROGRAM_NAME,
  decodeFlowKey,
  decodeRoute,
  encodeConfig,
  encodeFlowKey,
  encodeRoute,
  sumPerCpuCounters,
} from '../../../controller/agent/table-layout.js';
import type { FlowKey } from '../../../controller/flow.js';
import { buildPath } from '../../../controller/paths.js';
import { Btf } from '../../helpers/btf.js';

const v4: FlowKey = { family: 4, clientAddress: '192.0.2.10', clientPort: 40001, vipAddress: '198.51.100.7', vipPort: 443 };

function expectInvalid(fn: () => unknown, message: RegExp): void {
  try {
    fn();
  } catch (err) {
    expect(isBatonError(err, 'E_CONFIG')).toBe(true);
    expect((err as Error).message).toMatch(message);
    return;
  }
  throw new Error('expected an E_CONFIG error');
}

const steer = new Btf(buildPath('bpf', 'steer.o'));
const layout = new Btf(buildPath('bpf', 'layout.o'));

/** client_port → clientPort; client_addr4 (the union's first member) → clientAddr. */
function camel(member: string): string {
  return member.replace(/4$/, '').replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** The compiler's offsets of a struct's members, padding left out, under the mirror's names. */
function offsetsOf(btf: Btf, struct: string): Record<string, number> {
  return Object.fromEntries(
    Object.entries(btf.structOffsets(struct))
      .filter(([name]) => name !== 'pad')
      .map(([name, offset]) => [camel(name), offset]),
  );
}

// The one place that pairs each C verdict reason with its TypeScript name: adding a reason to
// enum baton_stat without naming it here (and in STAT_INDEX) fails the test.
const STAT_NAMES: Record<string, string> = {
  BATON_STAT_PASS_NOT_TCP: 'passedNotTcp',
  BATON_STAT_PASS_NO_ROUTE: 'passedNoRoute',
  BATON_STAT_STEERED: 'steered',
  BATON_STAT_DROP_FROZEN: 'droppedFrozen',
  BATON_STAT_DROP_BAD_ENTRY: 'droppedBadEntry',
  BATON_STAT_PASS_FRAGMENT: 'passedFragment',
  BATON_STAT_PASS_RECLAIMED: 'passedReclaimed',
  BATON_STAT_PASS_NOT_FOR_US: 'passedNotForUs',
  BATON_STAT_PASS_UNCONFIGURED: 'passedUnconfigured',
  BATON_STAT_PASS_FROM_DISTRIBUTOR: 'passedFromDistributor',
  BATON_STAT_PASS_STACKED_VLAN: 'passedStackedVlan',
  BATON_STAT_STEERED_RELEASED_SYN: 'steeredReleasedSyn',
  BATON_STAT_STEERED_ICMP: 'steeredIcmp',
  BATON_STAT_PASS_SERVED_HERE: 'passedServedHere',
};

describe('routing-table layout mirrors what the compiler made of bpf/baton.h (BTF)', () => {
  it('has the struct sizes and member offsets of the steering object', () => {
    expect(FLOW_KEY_SIZE).toBe(steer.structSize('baton_flow_key'));
    expect(FLOW_KEY_OFFSET).toEqual(offsetsOf(steer, 'baton_flow_key'));
    expect(ADDR_LEN).toBe(FLOW_KEY_OFFSET.vipAddr - FLOW_KEY_OFFSET.clientAddr);
    expect(ROUTE_SIZE).toBe(steer.structSize('baton_route'));
    expect(ROUTE_OFFSET).toEqual(offsetsOf(steer, 'baton_route'));
    expect(MAC_LEN).toBe(steer.arrayLength('baton_route', 'target_mac'));
    expect(MAC_LEN).toBe(steer.arrayLength('baton_config', 'if_mac'));
    expect(STAT_COUNTER_SIZE).toBe(steer.structSize('baton_stat_counter'));
    expect(CONFIG_SIZE).toBe(steer.structSize('baton_config'));
    expect(CONFIG_OFFSET).toEqual(offsetsOf(steer, 'baton_config'));
    expect(MAX_PEER_DISTRIBUTORS).toBe(steer.arrayLength('baton_config', 'peer_macs'));
  });

  it('names the maps and the program the steering object defines, with their sizes', () => {
    expect(steer.mapNames().sort()).toEqual([CONFIG_MAP_NAME, ROUTES_MAP_NAME, STATS_MAP_NAME].sort());
    expect(steer.mapAttribute(ROUTES_MAP_NAME, 'max_entries')).toBe(ROUTES_MAX_ENTRIES_DEFAULT);
    expect(steer.mapAttribute(STATS_MAP_NAME, 'max_entries')).toBe(STAT_COUNT);
    expect(steer.mapAttribute(CONFIG_MAP_NAME, 'max_entries')).toBe(1);
    expect(steer.hasFunction(STEER_PROGRAM_NAME)).toBe(true);
  });

  it('has the values of enum baton_route_state', () => {
    const c = layout.enumValues('baton_route_state');
    const mirrored = Object.fromEntries(Object.entries(c).map(([name, v]) => [name.replace(/^BATON_ROUTE_/, '').toLowerCase(), v]));
    expect(ROUTE_STATE).toEqual(mirrored);
  });

  it('has the values of enum baton_stat, each under its name, and its count', () => {
    const { BATON_STAT_MAX, ...reasons } = layout.enumValues('baton_stat');
    expect(STAT_COUNT).toBe(BATON_STAT_MAX);
    const mirrored = Object.fromEntries(
      Object.entries(reasons).map(([name, v]) => [STAT_NAMES[name] ?? `unnamed ${name}`, v]),
    );
    expect(STAT_INDEX).toEqual(mirrored);
    expect(Object.keys(STAT_INDEX)).toHaveLength(STAT_COUNT);
  });
});

describe('config encoding', () => {
  it('writes the ifindex (host byte order) and the MAC at the header offsets, zero padding', () => {
    const buf = encodeConfig({ ifindex: 0x01020304, mac: '02:B7:00:00:00:01' });
    expect(buf.length).toBe(CONFIG_SIZE);
    expect(buf.readUInt32LE(CONFIG_OFFSET.ifindex)).toBe(0x01020304);
    expect(buf.subarray(CONFIG_OFFSET.ifMac, CONFIG_OFFSET.ifMac + 6).toString('hex')).toBe('02b700000001');
    expect(buf.subarray(10, CONFIG_SIZE).every((b) => b === 0)).toBe(true);
  });

  it('writes the other distributors\' MACs, each in an 8-byte slot, and their count', () => {
    const buf = encodeConfig({ ifindex: 3, mac: '02:b7:00:00:00:01', peers: ['02:b7:00:00:00:02', '02:B7:00:00:00:03'] });
    expect(buf.readUInt32LE(CONFIG_OFFSET.peerCount)).toBe(2);
    expect(buf.subarray(CONFIG_OFFSET.peerMacs, CONFIG_OFFSET.peerMacs + 16).toString('hex')).toBe('02b7000000020000' + '02b7000000030000');
    expect(buf.subarray(CONFIG_OFFSET.peerMacs + 16, CONFIG_SIZE).every((b) => b === 0)).toBe(true);
    const eight = Array.from({ length: MAX_PEER_DISTRIBUTORS }, (_, i) => `02:b7:00:00:01:${String(i).padStart(2, '0')}`);
    expect(encodeConfig({ ifindex: 3, mac: '02:b7:00:00:00:01', peers: eight }).readUInt32LE(CONFIG_OFFSET.peerCount)).toBe(MAX_PEER_DISTRIBUTORS);
    expectInvalid(() => encodeConfig({ ifindex: 3, mac: '02:b7:00:00:00:01', peers: [...eight, '02:b7:00:00:02:00'] }), /9 other distributors: the program knows at most 8/);
    // Naming itself would make the program pass every frame sent to it, steering nothing.
    expectInvalid(() => encodeConfig({ ifindex: 3, mac: '02:b7:00:00:00:01', peers: ['02:B7:00:00:00:01'] }), /interface MAC 02:b7:00:00:00:01 is also named/);
    expectInvalid(() => encodeConfig({ ifindex: 3, mac: '02:b7:00:00:00:01', peers: ['ff:ff:ff:ff:ff:ff'] }), /distributor MAC ff:ff:ff:ff:ff:ff is not a unicast MAC/);
  });

  it('refuses what the program must never be told: no interface, or a MAC that is not unicast', () => {
    expectInvalid(() => encodeConfig({ ifindex: 0, mac: '02:00:00:00:00:01' }), /ifindex 0 is not an interface index/);
    expectInvalid(() => encodeConfig({ ifindex: 2 ** 32, mac: '02:00:00:00:00:01' }), /not an interface index/);
    expectInvalid(() => encodeConfig({ ifindex: 2, mac: 'ff:ff:ff:ff:ff:ff' }), /interface MAC ff:ff:ff:ff:ff:ff is not a unicast MAC/);
    expectInvalid(() => encodeConfig({ ifindex: 2, mac: '00:00:00:00:00:00' }), /not a unicast MAC/);
    expectInvalid(() => encodeConfig({ ifindex: 2, mac: '02:00:00:00:01' }), /interface MAC "02:00:00:00:01" is not a MAC address/);
  });
});

describe('flow key encoding', () => {
  it('writes IPv4 addresses into the first 4 bytes, ports big-endian, zero padding', () => {
    const buf = encodeFlowKey(v4);
    expect(buf.length).toBe(FLOW_KEY_SIZE);
    expect([...buf.subarray(0, 4)]).toEqual([192, 0, 2, 10]);
    expect(buf.subarray(4, 16).every((b) => b === 0)).toBe(true);
    expect([...buf.subarray(16, 20)]).toEqual([198, 51, 100, 7]);
    expect(buf.subarray(20, 32).every((b) => b === 0)).toBe(true);
    expect(buf.readUInt16BE(32)).toBe(40001);
    expect(buf.readUInt16BE(34)).toBe(443);
    expect(buf[36]).toBe(4);
    expect([...buf.subarray(37, 40)]).toEqual([0, 0, 0]);
    expect(decodeFlowKey(buf)).toEqual(v4);
  });

  it('zeroes a reused buffer so stale bytes never reach the hash', () => {
    const buf = Buffer.alloc(FLOW_KEY_SIZE, 0xff);
    encodeFlowKey(v4, buf);
    expect(buf.equals(encodeFlowKey(v4))).toBe(true);
  });

  it('round-trips IPv6, compressed and with an embedded IPv4 suffix, to canonical text', () => {
    const key: FlowKey = { family: 6, clientAddress: '2001:db8::10', clientPort: 1, vipAddress: 'fd00:0:0:1::7', vipPort: 65535 };
    const buf = encodeFlowKey(key);
    expect(buf.subarray(0, 16).toString('hex')).toBe('20010db8000000000000000000000010');
    expect(decodeFlowKey(buf)).toEqual({ ...key, vipAddress: 'fd00:0:0:1::7' });

    const mapped = decodeFlowKey(encodeFlowKey({ ...key, clientAddress: '::ffff:192.0.2.1' }));
    expect(mapped.clientAddress).toBe('::ffff:192.0.2.1'); // the one canonical form (controller/flow.ts)
    const full = decodeFlowKey(encodeFlowKey({ ...key, clientAddress: '2001:DB8:0:0:1:0:0:1' }));
    expect(full.clientAddress).toBe('2001:db8::1:0:0:1');
    expect(decodeFlowKey(encodeFlowKey({ ...key, clientAddress: '::' })).clientAddress).toBe('::');
    expect(decodeFlowKey(encodeFlowKey({ ...key, clientAddress: '1:2:3:4:5:6:7:8' })).clientAddress).toBe('1:2:3:4:5:6:7:8');
  });

  it('rejects bad addresses, mismatched families and ports out of range', () => {
    expectInvalid(() => encodeFlowKey({ ...v4, clientAddress: '192.0.2.300' }), /clientAddress "192.0.2.300" is not an IPv4 address/);
    expectInvalid(() => encodeFlowKey({ ...v4, vipAddress: 'dvipa.example' }), /vipAddress .* is not an IPv4 address/);
    expectInvalid(() => encodeFlowKey({ ...v4, vipAddress: '2001:db8::1' }), /not an IPv4 address/);
    expectInvalid(() => encodeFlowKey({ ...v4, family: 6 }), /clientAddress .* is not an IPv6 address/);
    expectInvalid(() => encodeFlowKey({ ...v4, family: 6, clientAddress: 'fe80::1%eth0', vipAddress: 'fe80::2' }), /not an IPv6 address/);
    expectInvalid(() => encodeFlowKey({ ...v4, family: 5 as 4 }), /family 5 must be 4 or 6/);
    expectInvalid(() => encodeFlowKey({ ...v4, clientPort: 65536 }), /clientPort 65536 is out of range 1..65535/);
    expectInvalid(() => encodeFlowKey({ ...v4, vipPort: 0 }), /vipPort 0 is out of range/);
    expectInvalid(() => encodeFlowKey({ ...v4, clientPort: 80.5 }), /clientPort 80.5 is out of range/);
    expectInvalid(() => encodeFlowKey({ ...v4, clientPort: -1 }), /out of range/);
  });
});

describe('route value encoding', () => {
  it('round-trips a forward entry with counters at the header offsets (host byte order)', () => {
    const entry = { state: 'forward' as const, targetNode: 7, targetMac: '02:00:00:aa:bb:0c', packets: 5n, bytes: 2n ** 40n };
    const buf = encodeRoute(entry);
    expect(buf.length).toBe(ROUTE_SIZE);
    expect(buf.readBigUInt64LE(ROUTE_OFFSET.packets)).toBe(5n);
    expect(buf.readBigUInt64LE(ROUTE_OFFSET.bytes)).toBe(2n ** 40n);
    expect(buf.readUInt32LE(ROUTE_OFFSET.state)).toBe(ROUTE_STATE.forward);
    expect(buf.readUInt32LE(ROUTE_OFFSET.targetNode)).toBe(7);
    expect(buf.subarray(ROUTE_OFFSET.targetMac, ROUTE_OFFSET.targetMac + 6).toString('hex')).toBe('020000aabb0c');
    expect(buf.subarray(30, 32).every((b) => b === 0)).toBe(true);
    expect(decodeRoute(buf)).toEqual(entry);
  });

  it('round-trips released and finished entries', () => {
    for (const state of ['released', 'finished'] as const) {
      const entry = { state, targetNode: 3, targetMac: '02:00:00:aa:bb:0d', packets: 9n, bytes: 900n };
      const buf = encodeRoute(entry);
      expect(buf.readUInt32LE(ROUTE_OFFSET.state)).toBe(ROUTE_STATE[state]);
      expect(decodeRoute(buf)).toEqual(entry);
    }
  });

  it('encodes a frozen entry with no target and zeroed counters', () => {
    const decoded = decodeRoute(encodeRoute({ state: 'frozen', targetNode: 0, targetMac: '00:00:00:00:00:00' }));
    expect(decoded).toEqual({ state: 'frozen', targetNode: 0, targetMac: '00:00:00:00:00:00', packets: 0n, bytes: 0n });
  });

  it('rejects bad MACs, node ids and states; refuses to decode an unknown state', () => {
    const base = { state: 'forward' as const, targetNode: 1 };
    expectInvalid(() => encodeRoute({ ...base, targetMac: '02:00:00:aa:bb' }), /is not a MAC address/);
    expectInvalid(() => encodeRoute({ ...base, targetMac: '02-00-00-aa-bb-0c' }), /is not a MAC address/);
    expectInvalid(() => encodeRoute({ ...base, targetMac: 'ff:ff:ff:ff:ff:ff' }), /not a unicast MAC/);
    expectInvalid(() => encodeRoute({ ...base, targetMac: '01:00:5e:00:00:01' }), /not a unicast MAC/);
    expectInvalid(() => encodeRoute({ ...base, targetMac: '00:00:00:00:00:00' }), /not a unicast MAC/);
    expectInvalid(() => encodeRoute({ ...base, targetNode: 2 ** 32, targetMac: '02:00:00:00:00:01' }), /not a 32-bit node id/);
    expectInvalid(() => encodeRoute({ state: 'held' as 'frozen', targetNode: 0, targetMac: '02:00:00:00:00:01' }), /route state "held"/);

    const bad = encodeRoute({ ...base, targetMac: '02:00:00:00:00:01' });
    bad.writeUInt32LE(0, ROUTE_OFFSET.state);
    expect(() => decodeRoute(bad)).toThrow(/unknown state 0/);
  });
});

describe('per-CPU stats', () => {
  it('sums one counter per possible CPU', () => {
    const ncpus = 3;
    const buf = Buffer.alloc(STAT_COUNTER_SIZE * ncpus);
    for (let cpu = 0; cpu < ncpus; cpu++) {
      buf.writeBigUInt64LE(BigInt(cpu + 1), cpu * STAT_COUNTER_SIZE);
      buf.writeBigUInt64LE(BigInt(100 * (cpu + 1)), cpu * STAT_COUNTER_SIZE + 8);
    }
    expect(sumPerCpuCounters(buf, ncpus)).toEqual({ packets: 6n, bytes: 600n });
  });
});
