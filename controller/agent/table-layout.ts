// The one TypeScript mirror of bpf/baton.h: sizes, offsets, enum values, the config the program
// needs, and the encoding of keys, values and counters between their bytes and their types. Every
// number is asserted against the header: the header by _Static_assert, this file by
// test/unit/agent/routing-table-layout.test.ts, which reads the compiled object's BTF. Change
// both or neither. The table itself (RoutingTable) is routing-table.ts.
import os from 'node:os';
import { BatonError } from '../errors.js';
import { addressToBytes, bytesToAddress, type FlowKey } from '../flow.js';

// ---- mirror of bpf/baton.h ----------------------------------------------------------------

export const ADDR_LEN = 16;
export const MAC_LEN = 6;

/** struct baton_flow_key: client → DVIPA, addresses and ports in network byte order. */
export const FLOW_KEY_SIZE = 40;
export const FLOW_KEY_OFFSET = { clientAddr: 0, vipAddr: 16, clientPort: 32, vipPort: 34, family: 36 } as const;

/** struct baton_route: counters first (8-byte aligned for the program's atomic adds). */
export const ROUTE_SIZE = 32;
export const ROUTE_OFFSET = { packets: 0, bytes: 8, state: 16, targetNode: 20, targetMac: 24 } as const;

/** struct baton_stat_counter, one per possible CPU in each baton_stats slot. */
export const STAT_COUNTER_SIZE = 16;

/**
 * enum baton_route_state; 0 is deliberately invalid (the program drops such entries). A closing
 * connection goes forward → released (its application closed) → finished (the serving node's
 * kernel is done with the tuple; only now does a SYN reclaim it) → removed.
 */
export const ROUTE_STATE = { frozen: 1, forward: 2, released: 3, finished: 4 } as const;

/** enum baton_stat: the index of each verdict reason in baton_stats. */
export const STAT_INDEX = {
  passedNotTcp: 0,
  passedNoRoute: 1,
  steered: 2,
  droppedFrozen: 3,
  droppedBadEntry: 4,
  passedFragment: 5,
  passedReclaimed: 6,
  passedNotForUs: 7,
  passedUnconfigured: 8,
  passedStackedVlan: 9,
  steeredReleasedSyn: 10,
  passedServedHere: 11,
  passedFromDistributor: 12,
  steeredIcmp: 13,
} as const;
export const STAT_COUNT = 14;

/** struct baton_config, the one value of baton_config: the interface the program steers on, and the other distributors. */
export const CONFIG_SIZE = 80;
export const CONFIG_OFFSET = { ifindex: 0, ifMac: 4, peerCount: 12, peerMacs: 16 } as const;
/** BATON_MAX_PEER_DISTRIBUTORS: the other distributors a config can name (each MAC padded to 8 bytes). */
export const MAX_PEER_DISTRIBUTORS = 8;
const PEER_MAC_STRIDE = 8;

export const ROUTES_MAX_ENTRIES_DEFAULT = 262144;
export const ROUTES_MAP_NAME = 'baton_routes';
export const STATS_MAP_NAME = 'baton_stats';
export const CONFIG_MAP_NAME = 'baton_config';
export const STEER_PROGRAM_NAME = 'baton_steer';

// ---- types --------------------------------------------------------------------------------

export type RouteState = keyof typeof ROUTE_STATE;
export interface RouteEntry {
  state: RouteState;
  targetNode: number;
  /** aa:bb:cc:dd:ee:ff; all zeros while frozen. */
  targetMac: string;
  packets: bigint;
  bytes: bigint;
}
export type StatName = keyof typeof STAT_INDEX;
export interface Counter {
  packets: bigint;
  bytes: bigint;
}

// ---- encoding -----------------------------------------------------------------------------

// BPF map values are in the host's byte order; keys' addresses and ports are network order.
const HOST_LE = os.endianness() === 'LE';

export function invalid(message: string, context: Record<string, unknown>): never {
  throw new BatonError('E_CONFIG', message, { step: 'routing-table', ...context });
}

function checkPort(port: number, field: string): void {
  // Port 0 never appears on the wire; accepting it would only create an entry nothing matches.
  if (!Number.isInteger(port) || port < 1 || port > 0xffff) invalid(`${field} ${port} is out of range 1..65535`, { field, port });
}

export function encodeFlowKey(key: FlowKey, out: Buffer = Buffer.alloc(FLOW_KEY_SIZE)): Buffer {
  if (key.family !== 4 && key.family !== 6) invalid(`family ${String(key.family)} must be 4 or 6`, { family: key.family });
  checkPort(key.clientPort, 'clientPort');
  checkPort(key.vipPort, 'vipPort');
  // The hash compares raw bytes: padding and the unused tail of an IPv4 address must be zero.
  out.fill(0, 0, FLOW_KEY_SIZE);
  out.set(addressToBytes(key.family, key.clientAddress, 'clientAddress'), FLOW_KEY_OFFSET.clientAddr);
  out.set(addressToBytes(key.family, key.vipAddress, 'vipAddress'), FLOW_KEY_OFFSET.vipAddr);
  out.writeUInt16BE(key.clientPort, FLOW_KEY_OFFSET.clientPort);
  out.writeUInt16BE(key.vipPort, FLOW_KEY_OFFSET.vipPort);
  out.writeUInt8(key.family, FLOW_KEY_OFFSET.family);
  return out;
}

export function decodeFlowKey(buf: Buffer): FlowKey {
  if (buf.length < FLOW_KEY_SIZE) invalid(`flow key is ${buf.length} bytes, expected ${FLOW_KEY_SIZE}`, { length: buf.length });
  const family = buf.readUInt8(FLOW_KEY_OFFSET.family);
  if (family !== 4 && family !== 6) throw new BatonError('E_BPF', `flow key with unknown family ${family}`, { step: 'routing-table' });
  return {
    family,
    clientAddress: bytesToAddress(family, buf.subarray(FLOW_KEY_OFFSET.clientAddr, FLOW_KEY_OFFSET.clientAddr + ADDR_LEN)),
    clientPort: buf.readUInt16BE(FLOW_KEY_OFFSET.clientPort),
    vipAddress: bytesToAddress(family, buf.subarray(FLOW_KEY_OFFSET.vipAddr, FLOW_KEY_OFFSET.vipAddr + ADDR_LEN)),
    vipPort: buf.readUInt16BE(FLOW_KEY_OFFSET.vipPort),
  };
}

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
export const ZERO_MAC = '00:00:00:00:00:00';

function parseMac(mac: string, field: string): Buffer {
  if (!MAC_RE.test(mac)) invalid(`${field} ${JSON.stringify(mac)} is not a MAC address (aa:bb:cc:dd:ee:ff)`, { field, mac });
  const bytes = Buffer.from(mac.split(':').map((h) => parseInt(h, 16)));
  // A group address would flood the segment; all zeros would be black-holed by every switch.
  if ((bytes[0]! & 1) === 1 || bytes.every((b) => b === 0)) invalid(`${field} ${mac} is not a unicast MAC address`, { field, mac });
  return bytes;
}

export function formatMac(buf: Buffer, offset: number): string {
  return Array.from(buf.subarray(offset, offset + MAC_LEN), (b) => b.toString(16).padStart(2, '0')).join(':');
}

export function writeU32(buf: Buffer, value: number, offset: number): void {
  if (HOST_LE) buf.writeUInt32LE(value, offset);
  else buf.writeUInt32BE(value, offset);
}
export function readU32(buf: Buffer, offset: number): number {
  return HOST_LE ? buf.readUInt32LE(offset) : buf.readUInt32BE(offset);
}
export function writeU64(buf: Buffer, value: bigint, offset: number): void {
  if (HOST_LE) buf.writeBigUInt64LE(value, offset);
  else buf.writeBigUInt64BE(value, offset);
}
export function readU64(buf: Buffer, offset: number): bigint {
  return HOST_LE ? buf.readBigUInt64LE(offset) : buf.readBigUInt64BE(offset);
}

export function encodeRoute(entry: Omit<RouteEntry, 'packets' | 'bytes'> & Partial<Pick<RouteEntry, 'packets' | 'bytes'>>, out: Buffer = Buffer.alloc(ROUTE_SIZE)): Buffer {
  const state = Object.hasOwn(ROUTE_STATE, entry.state) ? ROUTE_STATE[entry.state] : undefined;
  if (state === undefined) invalid(`route state ${JSON.stringify(entry.state)} must be one of ${Object.keys(ROUTE_STATE).join(', ')}`, { state: entry.state });
  if (!Number.isInteger(entry.targetNode) || entry.targetNode < 0 || entry.targetNode > 0xffffffff) {
    invalid(`targetNode ${entry.targetNode} is not a 32-bit node id`, { targetNode: entry.targetNode });
  }
  const mac = entry.state === 'frozen' && entry.targetMac === ZERO_MAC ? Buffer.alloc(MAC_LEN) : parseMac(entry.targetMac, 'targetMac');
  out.fill(0, 0, ROUTE_SIZE);
  writeU64(out, entry.packets ?? 0n, ROUTE_OFFSET.packets);
  writeU64(out, entry.bytes ?? 0n, ROUTE_OFFSET.bytes);
  writeU32(out, state, ROUTE_OFFSET.state);
  writeU32(out, entry.targetNode, ROUTE_OFFSET.targetNode);
  mac.copy(out, ROUTE_OFFSET.targetMac);
  return out;
}

const STATE_BY_VALUE = new Map<number, RouteState>(Object.entries(ROUTE_STATE).map(([name, value]) => [value, name as RouteState]));

export function decodeRoute(buf: Buffer): RouteEntry {
  if (buf.length < ROUTE_SIZE) invalid(`route value is ${buf.length} bytes, expected ${ROUTE_SIZE}`, { length: buf.length });
  const raw = readU32(buf, ROUTE_OFFSET.state);
  const state = STATE_BY_VALUE.get(raw);
  // The program drops such flows (dropped-bad-entry); say so rather than invent a state.
  if (state === undefined) throw new BatonError('E_BPF', `routing-table entry with unknown state ${raw}`, { step: 'routing-table', state: raw });
  return {
    state,
    targetNode: readU32(buf, ROUTE_OFFSET.targetNode),
    targetMac: formatMac(buf, ROUTE_OFFSET.targetMac),
    packets: readU64(buf, ROUTE_OFFSET.packets),
    bytes: readU64(buf, ROUTE_OFFSET.bytes),
  };
}

export interface SteeringConfig {
  /** The interface the program is attached to (its index in that network namespace). */
  ifindex: number;
  /** That interface's MAC, aa:bb:cc:dd:ee:ff: frames to any other destination are not steered. */
  mac: string;
  /** The cluster's other distributors' MACs: a frame from one of them was steered already, and is passed to this node's kernel. */
  peers?: readonly string[];
}

export function encodeConfig(config: SteeringConfig, out: Buffer = Buffer.alloc(CONFIG_SIZE)): Buffer {
  // ifindex 0 is what the program reads as "not configured": writing it would be a silent no-op.
  if (!Number.isInteger(config.ifindex) || config.ifindex < 1 || config.ifindex > 0xffffffff) {
    invalid(`ifindex ${config.ifindex} is not an interface index`, { ifindex: config.ifindex });
  }
  const mac = parseMac(config.mac, 'interface MAC');
  const peers = (config.peers ?? []).map((p) => parseMac(p, 'distributor MAC'));
  if (peers.length > MAX_PEER_DISTRIBUTORS) invalid(`${peers.length} other distributors: the program knows at most ${MAX_PEER_DISTRIBUTORS}`, { peers: peers.length });
  // Its own MAC among them would make the program pass every frame sent to it: it would steer nothing.
  if (peers.some((p) => p.equals(mac))) invalid(`the interface MAC ${config.mac} is also named as another distributor's`, { mac: config.mac });
  out.fill(0, 0, CONFIG_SIZE);
  writeU32(out, config.ifindex, CONFIG_OFFSET.ifindex);
  mac.copy(out, CONFIG_OFFSET.ifMac);
  writeU32(out, peers.length, CONFIG_OFFSET.peerCount);
  peers.forEach((p, i) => p.copy(out, CONFIG_OFFSET.peerMacs + i * PEER_MAC_STRIDE));
  return out;
}

/** Sums one baton_stats slot (one struct baton_stat_counter per possible CPU). */
export function sumPerCpuCounters(buf: Buffer, ncpus: number): Counter {
  let packets = 0n;
  let bytes = 0n;
  for (let cpu = 0; cpu < ncpus; cpu++) {
    packets += readU64(buf, cpu * STAT_COUNTER_SIZE);
    bytes += readU64(buf, cpu * STAT_COUNTER_SIZE + 8);
  }
  return { packets, bytes };
}
