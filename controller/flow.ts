// A connection's identity, defined once: the flow (its 4-tuple, client → DVIPA), the wire schema
// it travels in, the connection id operators see, and the one conversion between address text
// and the 16 bytes that the kernel structs (struct baton_tcp_state, struct baton_flow_key) hold.
// It sits below agent/ and transfer/ so that both use it without importing each other.
//
// Canonical text, the only form this module writes: in connection ids, and for every address read
// from the kernel structs (routing-table keys, exported states, inspected sockets):
//   IPv4: dotted decimal, 10.1.2.3 (the only form accepted: no 010.1.2.3, no 10.258).
//   IPv6: RFC 5952: lowercase, no leading zeros, the longest run of two or more zero groups as
//         "::" (the first of equal runs), e.g. 2001:db8::1:0:0:1; an IPv4-mapped address with its
//         last 32 bits dotted, ::ffff:10.1.2.3 (RFC 5952 §5), as `ss`, the kernel and Node's
//         socket.remoteAddress print it, so an address copied from any of them is already canonical.
//   Zone ids (fe80::1%eth0) are refused: they name a local interface, not part of the address a
//   packet carries. ::a.b.c.d (RFC 4291's deprecated IPv4-compatible form) reads as the
//   address it spells, 12 zero bytes then a.b.c.d, and is written that way, as inet_ntop does.
//
// The connection id, client first: 10.203.0.50:41234_10.203.0.10:7000,
// [fd00::5]:41234_[fd00::10]:7000. It is the same on every node, whatever form the addresses
// arrived in, so it is the key of every map of flows and the name of a flow in logs and errors.
// Not to be confused with the handoff id (wire and log field `connId`, n1.e26ac130f728), which
// names one handoff of a connection and is made by the routing SDK (sdk/handed-off.ts).
//
// node:net decides what is an address (isIPv4/isIPv6: inet_pton, strict) and writes IPv6 text
// (SocketAddress: inet_ntop, RFC 5952, about 1 µs); ipaddr.js converts to and from bytes, which
// node:net has no API for (it also takes legacy IPv4 forms and zone ids: node:net checks first).
import net from 'node:net';
import { Type, type Static } from '@sinclair/typebox';
import ipaddr from 'ipaddr.js';
import { BatonError } from './errors.js';
import { bounded } from './input.js';
import type { SocketInfo, TcpConnectionState } from '../native/repair.js';

/** Address text on the wire: IP characters only, at most the length of the longest IPv6 text. */
export const IpAddressSchema = Type.String({ minLength: 2, maxLength: 45, pattern: '^[0-9a-fA-F:.]+$' });
/** Port 0 never appears on the wire. */
export const PortSchema = Type.Integer({ minimum: 1, maximum: 65535 });
/** The IP version (not AF_*), as struct baton_flow_key and struct baton_tcp_state hold it. */
export const FamilySchema = Type.Union([Type.Literal(4), Type.Literal(6)]);
export type Family = Static<typeof FamilySchema>;
/** One end of a connection on the wire (a connection state's local and remote, a client). */
export const EndpointSchema = Type.Object({ address: IpAddressSchema, port: PortSchema }, { additionalProperties: false });

/** A flow as the transfer protocol carries it (route, probe) and as every module passes it around. */
export const FlowSchema = Type.Object(
  {
    family: FamilySchema,
    clientAddress: IpAddressSchema,
    clientPort: PortSchema,
    vipAddress: IpAddressSchema,
    vipPort: PortSchema,
  },
  { additionalProperties: false },
);
export type FlowKey = Static<typeof FlowSchema>;

/** Length of an address in the kernel structs: IPv6, or IPv4 in the first 4 bytes and zeros after. */
const ADDR_LEN = 16;

// ---- the address codec ------------------------------------------------------------------------

// ::a.b.c.d: ipaddr.js reads this deprecated form as IPv4-mapped (::ffff:a.b.c.d), a different
// address; only this exact shape is affected (0:0:0:0:0:0:a.b.c.d and ::0:a.b.c.d parse right).
const IPV4_COMPATIBLE = /^::(\d{1,3}(?:\.\d{1,3}){3})$/;

function notAnAddress(family: Family, address: string, field: string): never {
  // The text may come from a peer or a request: quoted bounded, never whole.
  throw new BatonError('E_CONFIG', `${field} ${JSON.stringify(bounded(address, 48))} is not an IPv${family} address`, { step: 'address', field });
}

/**
 * The 16 bytes, network order, of address text of the family (IPv4 in the first 4, the rest 0).
 * Throws E_CONFIG naming field for anything else, an IPv6 zone id included.
 */
export function addressToBytes(family: Family, address: string, field = 'address'): Uint8Array {
  const out = new Uint8Array(ADDR_LEN);
  if (family === 4) {
    if (!net.isIPv4(address)) notAnAddress(4, address, field);
    // net.isIPv4 accepts only four decimal octets 0-255 (no octal, hex or short forms), so each
    // part is a plain decimal number: read directly, a map write's hot path (ipaddr.js's general
    // parser cost more than the bpf() call).
    const parts = address.split('.');
    for (let i = 0; i < 4; i++) out[i] = Number(parts[i]);
    return out;
  }
  if (family !== 6) throw new BatonError('E_CONFIG', `family ${String(family)} must be 4 or 6`, { step: 'address', field });
  if (!net.isIPv6(address) || address.includes('%')) notAnAddress(6, address, field);
  if (!address.includes('.')) return readIpv6Groups(address, out);
  const compatible = IPV4_COMPATIBLE.exec(address);
  if (compatible) out.set(ipaddr.IPv4.parse(compatible[1]!).toByteArray(), 12);
  else out.set(ipaddr.IPv6.parse(address).toByteArray());
  return out;
}

/**
 * IPv6 text that net.isIPv6 accepted and that has no dotted tail: groups of 1–4 hex digits, at
 * most one "::". Read directly, like IPv4 above: flows are encoded and named on every routing-table
 * write, and ipaddr.js's parser and node:net's SocketAddress cost a few µs each.
 */
function readIpv6Groups(address: string, out: Uint8Array): Uint8Array {
  const gap = address.indexOf('::');
  const head = gap < 0 ? address : address.slice(0, gap);
  const tail = gap < 0 ? '' : address.slice(gap + 2);
  const write = (groups: string[], at: number) => groups.forEach((g, i) => {
    const v = Number.parseInt(g, 16);
    out[at + 2 * i] = v >> 8;
    out[at + 2 * i + 1] = v & 0xff;
  });
  const tailGroups = tail === '' ? [] : tail.split(':');
  write(head === '' ? [] : head.split(':'), 0);
  write(tailGroups, ADDR_LEN - 2 * tailGroups.length);
  return out;
}

/**
 * RFC 5952 text of 16 address bytes: lowercase groups without leading zeros, the first longest run
 * of two or more zero groups as "::". An address whose first 10 bytes are zero (IPv4-mapped,
 * IPv4-compatible, ::1, ::) is left to inet_ntop (SocketAddress), whose dotted forms are the ones
 * this module promises (see the header).
 */
function ipv6TextOf(bytes: Uint8Array): string {
  if (bytes.subarray(0, 10).every((b) => b === 0)) {
    return ipv6Text((ipaddr.fromByteArray(Array.from(bytes.subarray(0, ADDR_LEN))) as ipaddr.IPv6).toNormalizedString());
  }
  const groups: number[] = [];
  for (let i = 0; i < ADDR_LEN; i += 2) groups.push((bytes[i]! << 8) | bytes[i + 1]!);
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  const hex = (from: number, to: number) => groups.slice(from, to).map((g) => g.toString(16)).join(':');
  return best < 0 ? hex(0, 8) : `${hex(0, best)}::${hex(best + bestLen, 8)}`;
}

/** The canonical text of an address held as in the kernel structs (the first 4 or 16 bytes). */
export function bytesToAddress(family: Family, bytes: Uint8Array): string {
  if (family === 4) return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
  return ipv6TextOf(bytes.subarray(0, ADDR_LEN));
}

/** RFC 5952 text of an IPv6 address node:net accepts (inet_ntop writes mapped and compatible addresses dotted). */
function ipv6Text(address: string): string {
  return new net.SocketAddress({ address, family: 'ipv6' }).address;
}

/**
 * IPv6 texts already checked and made canonical, by the text given: a connection id is made from a
 * flow on every step of a handoff (a dozen times), always from the same few addresses. Only valid
 * addresses go in, and the map is emptied when full, so a flood of new addresses costs memory
 * bounded by CANONICAL6_ENTRIES and the computation they would cost anyway.
 */
const canonical6 = new Map<string, string>();
const CANONICAL6_ENTRIES = 4096;

/** Address text of the family in its canonical form; throws E_CONFIG naming field if it is not one. */
export function canonicalAddress(family: Family, address: string, field = 'address'): string {
  if (family === 4) {
    // Strict dotted decimal, the only IPv4 text accepted, is already canonical.
    if (!net.isIPv4(address)) notAnAddress(4, address, field);
    return address;
  }
  if (family !== 6) throw new BatonError('E_CONFIG', `family ${String(family)} must be 4 or 6`, { step: 'address', field });
  const known = canonical6.get(address);
  if (known !== undefined) return known;
  if (!net.isIPv6(address) || address.includes('%')) notAnAddress(6, address, field);
  const text = address.includes('.') ? ipv6Text(address) : ipv6TextOf(readIpv6Groups(address, new Uint8Array(ADDR_LEN)));
  if (canonical6.size >= CANONICAL6_ENTRIES) canonical6.clear();
  canonical6.set(address, text);
  return text;
}

/** The family of address text, or undefined if it is neither an IPv4 nor an IPv6 address (a zone id included). */
export function familyOf(address: string): Family | undefined {
  return net.isIPv4(address) ? 4 : net.isIPv6(address) && !address.includes('%') ? 6 : undefined;
}

/** The canonical text of an IPv4 or IPv6 address, whichever it is; throws E_CONFIG naming field if it is neither. */
export function canonicalIp(address: string, field = 'address'): string {
  const family = familyOf(address);
  if (!family) throw new BatonError('E_CONFIG', `${field} ${JSON.stringify(bounded(address, 48))} is not an IPv4 or IPv6 address`, { step: 'address', field });
  return canonicalAddress(family, address, field);
}

/** The prefix length that makes one IPv6 source unless configured: a /64, one link's, usually one holder's. */
export const IPV6_SOURCE_PREFIX = 64;

/**
 * The source a client address counts as, for the routing-phase limit per source
 * (sdk/routing-guard.ts) and the routing table's quota per source (agent/quotas.ts): the IPv4
 * address (also when it arrives IPv4-mapped on a dual-stack listener), or the prefix of an IPv6
 * address (/64 by default), since whoever has one IPv6 address usually has the whole /64 (or
 * more: a /56 or /48 per site) to pick from.
 */
export function sourceOf(address: string, ipv6Prefix: number = IPV6_SOURCE_PREFIX): string {
  // A zone id names the interface the address was seen on, not the client.
  const bare = address.split('%')[0]!.toLowerCase();
  if (!net.isIPv6(bare)) return bare;
  const bytes = addressToBytes(6, bare);
  const canonical = bytesToAddress(6, bytes);
  // Only an IPv4-mapped address is written with a dotted tail (see the header).
  if (canonical.startsWith('::ffff:') && canonical.includes('.')) return canonical.slice(7);
  // Host bits cleared: canonical text of the network, then its length.
  for (let bit = ipv6Prefix; bit < 128; bit++) bytes[bit >> 3]! &= ~(0x80 >> (bit & 7));
  return `${bytesToAddress(6, bytes)}/${ipv6Prefix}`;
}

// ---- flows ------------------------------------------------------------------------------------

/**
 * The flow of a connection state (an exported or offered TcpConnectionState): its local end is
 * the DVIPA, its remote end the client.
 */
export function flowOf(conn: Pick<TcpConnectionState, 'family' | 'local' | 'remote'>): FlowKey {
  return { family: conn.family, clientAddress: conn.remote.address, clientPort: conn.remote.port, vipAddress: conn.local.address, vipPort: conn.local.port };
}

/** The flow of an inspected socket (accepted on a DVIPA: local is the DVIPA), or undefined if it has no peer. */
export function socketFlow(info: SocketInfo): FlowKey | undefined {
  if (!info.local || !info.remote) return undefined;
  return flowOf({ family: info.local.family, local: info.local, remote: info.remote });
}

/** host:port, an IPv6 host in brackets (RFC 5952 §6). Writes the address as given. */
export function endpointText(family: Family, address: string, port: number): string {
  return family === 6 ? `[${address}]:${port}` : `${address}:${port}`;
}

/** host:port for address text of either family (an IPv6 host in brackets): URLs, listen and connect messages. */
export function hostPort(address: string, port: number): string {
  return endpointText(address.includes(':') ? 6 : 4, address, port);
}

/** A connected socket's peer as host:port (an IPv6 host in brackets), for logs; "?" for what it does not know. */
export function peerText(socket: { remoteFamily?: string; remoteAddress?: string; remotePort?: number }): string {
  return endpointText(socket.remoteFamily === 'IPv6' ? 6 : 4, socket.remoteAddress ?? '?', socket.remotePort ?? 0);
}

/**
 * The operator's name for a flow: client endpoint _ DVIPA endpoint, the addresses canonical (see
 * the header), so one flow has one id however its addresses were written. Throws E_CONFIG if an
 * address is not one of the flow's family.
 */
export function connectionId(flow: FlowKey): string {
  const { family } = flow;
  const client = endpointText(family, canonicalAddress(family, flow.clientAddress, 'clientAddress'), flow.clientPort);
  return `${client}_${endpointText(family, canonicalAddress(family, flow.vipAddress, 'vipAddress'), flow.vipPort)}`;
}

const ENDPOINT = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/;
const MAX_ID_LENGTH = 110; // two bracketed IPv6 texts of 45 characters, ports and separators

/** The flow a connection id names, its addresses canonical. Throws E_CONFIG saying what is wrong. */
export function parseConnectionId(id: string): FlowKey {
  const bad = (why: string, cause?: unknown) =>
    new BatonError('E_CONFIG', `connection id ${JSON.stringify(bounded(id, MAX_ID_LENGTH))} ${why}: want <client ip>:<port>_<dvipa>:<port>`, { step: 'connection-id' }, { cause });
  if (id.length > MAX_ID_LENGTH) throw bad(`is longer than ${MAX_ID_LENGTH} characters`);
  const halves = id.split('_');
  if (halves.length !== 2) throw bad('is not two endpoints joined by _');
  const [client, vip] = halves.map((h) => {
    const m = ENDPOINT.exec(h);
    if (!m) throw bad(`has a malformed endpoint ${JSON.stringify(h)}`);
    const family: Family = m[1] !== undefined ? 6 : 4;
    let address: string;
    try {
      address = canonicalAddress(family, m[1] ?? m[2]!);
    } catch (err) {
      throw bad(`has an invalid address ${m[1] ?? m[2]!}`, err);
    }
    const port = Number(m[3]);
    if (port < 1 || port > 65535) throw bad(`has port ${port} out of range`);
    return { address, port, family };
  }) as [{ address: string; port: number; family: Family }, { address: string; port: number; family: Family }];
  if (client.family !== vip.family) throw bad('mixes IPv4 and IPv6');
  return { family: client.family, clientAddress: client.address, clientPort: client.port, vipAddress: vip.address, vipPort: vip.port };
}
