// lab.json: what a running lab looks like, for batond's config, tests and external tools.
// Everything here is derived from (prefix, subnet, dir), so labDown can rebuild the names after a
// crash without the file. The file is validated when read back: a stale or hand-edited one must
// fail loudly with the field at fault, not half-work.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { type Static, Type } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { BatonError } from '../errors.js';
import { addressToBytes, bytesToAddress, canonicalAddress } from '../flow.js';

/** 2: dual-stack (subnet6, and an IPv6 address beside every IPv4 one). */
export const LAB_SCHEMA_VERSION = 2;
export const DEFAULT_PREFIX = 'baton';
export const DEFAULT_SUBNET = '10.203.0.0/24';
/**
 * The lab's IPv6 network beside the IPv4 one: a unique local /64 (RFC 4193), its 40-bit global id
 * spelling "baton" in ASCII. Every lab has its own bridge, so two labs never share it on a link.
 */
export const DEFAULT_SUBNET6 = 'fd62:6174:6f6e::/64';
export const BRIDGE_NAME = 'br0';
export const NODE_INTERFACE = 'eth0';
export const NODE_NAMES = ['n1', 'n2', 'n3'] as const;
export const DISTRIBUTOR = 'n1';
/** The backup distributor of a lab with one (lab up --backup): an ordinary node, a target too, until it takes over. */
export const BACKUP_DISTRIBUTOR = 'n2';
export const DVIPA_PORTS = [80, 7000] as const;

// Host numbers inside the subnet. The DVIPA sits in the same subnet so the client ARPs for it
// directly and only the distributor answers. The IPv6 twin of each address is the /64 with the
// host number's decimal digits as its last group (10.203.0.11 → fd62:6174:6f6e::11), so either
// names the other at a glance in logs.
export const HOST = { dvipa: 10, firstNode: 11, client: 100, freeFirst: 101, freeLast: 199 } as const;

/**
 * Lower case letters and digits, starting with a letter, at most 10 characters: no '-' so that
 * `<prefix>-*` never matches another lab's names (labs "bt1" and "bt1-x" would otherwise
 * overlap), and short enough that `<prefix>-` plus 4 characters still fits IFNAMSIZ (15) for
 * tools that name interfaces after the lab.
 */
export const PREFIX_PATTERN = /^[a-z][a-z0-9]{0,9}$/;

const octet = '(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)';
const IPV4 = `${octet}(?:\\.${octet}){3}`;
const NS_NAME = '^[a-z][a-z0-9]{0,9}-[a-z0-9]{1,20}$';

const Ipv4 = Type.String({ pattern: `^${IPV4}$`, description: 'dotted-quad IPv4 address' });
const Ipv6 = Type.String({ minLength: 2, maxLength: 39, pattern: '^[0-9a-f:]+$', description: 'IPv6 address, RFC 5952 text' });
const Cidr6 = Type.String({ minLength: 4, maxLength: 43, pattern: '^[0-9a-f:]+/64$', description: 'IPv6 /64, RFC 5952 text' });
const Cidr = Type.String({ pattern: `^${IPV4}/(?:1[6-9]|2[0-4])$`, description: 'IPv4 network, /16 to /24' });
const Mac = Type.String({ pattern: '^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$', description: 'lower-case MAC address' });
const NsName = Type.String({ pattern: NS_NAME, description: 'network namespace name, <prefix>-<role>' });
const IfName = Type.String({ pattern: '^[A-Za-z0-9_.-]{1,15}$', description: 'interface name (IFNAMSIZ)' });
const Port = Type.Integer({ minimum: 1, maximum: 65535 });

export const LabNodeSchema = Type.Object(
  {
    name: Type.Union(NODE_NAMES.map((n) => Type.Literal(n))),
    ns: NsName,
    interface: IfName,
    address: Ipv4,
    address6: Ipv6,
    mac: Mac,
    bridgePort: IfName,
  },
  { additionalProperties: false },
);

export const LabDescriptionSchema = Type.Object(
  {
    version: Type.Literal(LAB_SCHEMA_VERSION),
    prefix: Type.String({ pattern: PREFIX_PATTERN.source }),
    subnet: Cidr,
    subnet6: Cidr6,
    bridge: Type.Object({ ns: NsName, name: IfName }, { additionalProperties: false }),
    dvipa: Type.Object({ address: Ipv4, address6: Ipv6, ports: Type.Array(Port, { minItems: 1, uniqueItems: true }) }, { additionalProperties: false }),
    /** The distributor at start (the first in the cluster file's distributors). */
    distributor: Type.Union(NODE_NAMES.map((n) => Type.Literal(n))),
    /** Backup distributors (lab up --backup: n2), each with keepalived beside batond; absent: none. */
    backups: Type.Optional(Type.Array(Type.Union(NODE_NAMES.map((n) => Type.Literal(n))), { maxItems: NODE_NAMES.length - 1, uniqueItems: true })),
    nodes: Type.Array(LabNodeSchema, { minItems: NODE_NAMES.length, maxItems: NODE_NAMES.length }),
    client: Type.Object({ ns: NsName, interface: IfName, address: Ipv4, address6: Ipv6, mac: Mac, bridgePort: IfName }, { additionalProperties: false }),
    freeClientAddresses: Type.Object({ first: Ipv4, last: Ipv4 }, { additionalProperties: false }),
    runDir: Type.String({ minLength: 1 }),
    createdAt: Type.String({ pattern: '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(?:\\.\\d+)?Z$', description: 'ISO 8601 UTC' }),
  },
  { additionalProperties: false },
);

export type LabNode = Static<typeof LabNodeSchema>;
export type LabDescription = Static<typeof LabDescriptionSchema>;

export interface LabNames {
  prefix: string;
  switchNs: string;
  clientNs: string;
  nodeNs: Record<(typeof NODE_NAMES)[number], string>;
  /** Every namespace the lab itself creates, the switch first. */
  namespaces: string[];
  /** BPF pin directories batond creates for this lab's nodes. */
  pinDirs: string[];
}

export const BPF_PIN_ROOT = '/sys/fs/bpf/baton';

export function checkPrefix(prefix: string): string {
  if (!PREFIX_PATTERN.test(prefix)) {
    throw new BatonError('E_LAB', `invalid lab prefix ${JSON.stringify(prefix)}: want ${PREFIX_PATTERN.source} (letters and digits, no '-', at most 10)`, {
      step: 'options',
      prefix,
    });
  }
  return prefix;
}

export function labNames(prefix: string): LabNames {
  checkPrefix(prefix);
  const nodeNs = Object.fromEntries(NODE_NAMES.map((n) => [n, `${prefix}-${n}`])) as LabNames['nodeNs'];
  const switchNs = `${prefix}-sw`;
  const clientNs = `${prefix}-client`;
  return {
    prefix,
    switchNs,
    clientNs,
    nodeNs,
    namespaces: [switchNs, clientNs, ...NODE_NAMES.map((n) => nodeNs[n])],
    pinDirs: NODE_NAMES.map((n) => path.join(BPF_PIN_ROOT, `${prefix}-${n}`)),
  };
}

export function ipToInt(address: string): number {
  const parts = address.split('.').map(Number);
  return ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

export interface Subnet {
  cidr: string;
  network: number;
  length: number;
}

export function parseSubnet(cidr: string): Subnet {
  if (!Value.Check(Cidr, cidr)) {
    throw new BatonError('E_LAB', `invalid lab subnet ${JSON.stringify(cidr)}: want an IPv4 network between /16 and /24, e.g. ${DEFAULT_SUBNET}`, {
      step: 'options',
      subnet: cidr,
    });
  }
  const [addr, len] = cidr.split('/') as [string, string];
  const length = Number(len);
  const network = ipToInt(addr);
  const mask = (0xffffffff << (32 - length)) >>> 0;
  if ((network & mask) >>> 0 !== network) {
    throw new BatonError('E_LAB', `invalid lab subnet ${cidr}: host bits are set (network is ${intToIp((network & mask) >>> 0)}/${length})`, {
      step: 'options',
      subnet: cidr,
    });
  }
  return { cidr, network, length };
}

export function subnetHost(subnet: Subnet, host: number): string {
  return intToIp((subnet.network + host) >>> 0);
}

/** The IPv6 /64's 8 network bytes; throws E_LAB for anything but a /64 in canonical text. */
export function parseSubnet6(cidr: string): Uint8Array {
  const [address = '', length] = cidr.split('/');
  const bytes = net.isIPv6(address) && length === '64' && canonicalAddress(6, address) === address ? addressToBytes(6, address) : undefined;
  if (!bytes || bytes.subarray(8).some((b) => b !== 0)) {
    throw new BatonError('E_LAB', `invalid lab IPv6 subnet ${JSON.stringify(cidr)}: want a /64 in canonical text with no host bits, e.g. ${DEFAULT_SUBNET6}`, { step: 'options', subnet6: cidr });
  }
  return bytes.subarray(0, 8);
}

/**
 * The IPv6 twin of a host number (see HOST): the host's decimal digits as the last group. 'raw':
 * the number itself is the interface id's low 32 bits.
 */
export function subnet6Host(network: Uint8Array, host: number, as: 'twin' | 'raw' = 'twin'): string {
  const id = as === 'twin' ? Number.parseInt(String(host), 16) : host;
  if (!Number.isInteger(host) || host < 0 || id > (as === 'twin' ? 0xffff : 0xffff_ffff)) throw new BatonError('E_LAB', `host number ${host} has no IPv6 address`, { step: 'options' });
  const bytes = new Uint8Array(16);
  bytes.set(network.subarray(0, 8));
  new DataView(bytes.buffer).setUint32(12, id);
  return bytesToAddress(6, bytes);
}

function inSubnet6(network: Uint8Array, address: string): boolean {
  if (!net.isIPv6(address)) return false;
  const bytes = addressToBytes(6, address);
  return network.every((b, i) => bytes[i] === b);
}

export function inSubnet(subnet: Subnet, address: string): boolean {
  const mask = (0xffffffff << (32 - subnet.length)) >>> 0;
  return ((ipToInt(address) & mask) >>> 0) === subnet.network;
}

/**
 * The MAC for an address in a lab: 02 (locally administered, unicast), three bytes of
 * sha256(prefix), then the address's last two bytes. Same address → same MAC on every re-creation,
 * which matters: nodes keep neighbour entries, and a client namespace re-created with a used
 * address but a new MAC stalls for seconds (docs/datapath.md, "Neighbour entries"). External
 * tools attaching their own client use the same rule.
 */
export function labMac(prefix: string, address: string): string {
  const h = createHash('sha256').update(prefix).digest();
  const a = ipToInt(address);
  const bytes = [0x02, h[0]!, h[1]!, h[2]!, (a >>> 8) & 255, a & 255];
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** The whole description of a lab, before anything is built. */
export function describeLab(opts: { prefix: string; subnet: string; subnet6?: string; runDir: string; now?: Date; backup?: boolean }): LabDescription {
  const names = labNames(opts.prefix);
  const subnet = parseSubnet(opts.subnet);
  const subnet6 = opts.subnet6 ?? DEFAULT_SUBNET6;
  const network6 = parseSubnet6(subnet6);
  const nodes: LabNode[] = NODE_NAMES.map((name, i) => {
    const address = subnetHost(subnet, HOST.firstNode + i);
    return { name, ns: names.nodeNs[name], interface: NODE_INTERFACE, address, address6: subnet6Host(network6, HOST.firstNode + i), mac: labMac(opts.prefix, address), bridgePort: name };
  });
  const clientAddress = subnetHost(subnet, HOST.client);
  return {
    version: LAB_SCHEMA_VERSION,
    prefix: opts.prefix,
    subnet: opts.subnet,
    subnet6,
    bridge: { ns: names.switchNs, name: BRIDGE_NAME },
    dvipa: { address: subnetHost(subnet, HOST.dvipa), address6: subnet6Host(network6, HOST.dvipa), ports: [...DVIPA_PORTS] },
    distributor: DISTRIBUTOR,
    ...(opts.backup ? { backups: [BACKUP_DISTRIBUTOR] } : {}),
    nodes,
    client: { ns: names.clientNs, interface: NODE_INTERFACE, address: clientAddress, address6: subnet6Host(network6, HOST.client), mac: labMac(opts.prefix, clientAddress), bridgePort: 'client' },
    freeClientAddresses: { first: subnetHost(subnet, HOST.freeFirst), last: subnetHost(subnet, HOST.freeLast) },
    runDir: opts.runDir,
    createdAt: (opts.now ?? new Date()).toISOString(),
  };
}

/** Validates an already parsed value; `source` names it in errors (usually the file path). */
export function validateLabDescription(value: unknown, source: string): LabDescription {
  const fail = (problems: string[]): never => {
    throw new BatonError('E_LAB', `${source} is not a valid lab description: ${problems.join('; ')}`, {
      step: 'read-description',
      path: source,
      problems,
    });
  };
  if (!Value.Check(LabDescriptionSchema, value)) {
    const problems: string[] = [];
    for (const e of Value.Errors(LabDescriptionSchema, value)) {
      problems.push(`${e.path || '/'}: ${e.message} (got ${JSON.stringify(e.value) ?? 'undefined'})`);
      if (problems.length >= 5) break;
    }
    fail(problems);
  }
  const d = value as LabDescription;
  // Cross-field rules the schema cannot say: everything must be derivable from prefix and subnet,
  // since labDown rebuilds names from the prefix alone.
  const problems: string[] = [];
  const names = labNames(d.prefix);
  let subnet: Subnet | undefined;
  try {
    subnet = parseSubnet(d.subnet);
  } catch (err) {
    problems.push(`/subnet: ${(err as Error).message}`);
  }
  if (d.bridge.ns !== names.switchNs) problems.push(`/bridge/ns: expected ${names.switchNs} for prefix ${d.prefix} (got ${JSON.stringify(d.bridge.ns)})`);
  if (d.client.ns !== names.clientNs) problems.push(`/client/ns: expected ${names.clientNs} for prefix ${d.prefix} (got ${JSON.stringify(d.client.ns)})`);
  d.nodes.forEach((n, i) => {
    if (n.name !== NODE_NAMES[i]) problems.push(`/nodes/${i}/name: expected ${NODE_NAMES[i]} (got ${JSON.stringify(n.name)})`);
    if (n.ns !== `${d.prefix}-${n.name}`) problems.push(`/nodes/${i}/ns: expected ${d.prefix}-${n.name} (got ${JSON.stringify(n.ns)})`);
  });
  const addressed: Array<[string, string]> = [
    ['/dvipa/address', d.dvipa.address],
    ['/client/address', d.client.address],
    ['/freeClientAddresses/first', d.freeClientAddresses.first],
    ['/freeClientAddresses/last', d.freeClientAddresses.last],
    ...d.nodes.map((n, i): [string, string] => [`/nodes/${i}/address`, n.address]),
  ];
  if (subnet) {
    for (const [where, a] of addressed) if (!inSubnet(subnet, a)) problems.push(`${where}: ${a} is outside ${d.subnet}`);
  }
  let network6: Uint8Array | undefined;
  try {
    network6 = parseSubnet6(d.subnet6);
  } catch (err) {
    problems.push(`/subnet6: ${(err as Error).message}`);
  }
  const addressed6: Array<[string, string]> = [
    ['/dvipa/address6', d.dvipa.address6],
    ['/client/address6', d.client.address6],
    ...d.nodes.map((n, i): [string, string] => [`/nodes/${i}/address6`, n.address6]),
  ];
  if (network6) {
    for (const [where, a] of addressed6) if (!inSubnet6(network6, a)) problems.push(`${where}: ${a} is not an address in ${d.subnet6}`);
  }
  if (ipToInt(d.freeClientAddresses.first) > ipToInt(d.freeClientAddresses.last)) {
    problems.push(`/freeClientAddresses: first ${d.freeClientAddresses.first} is after last ${d.freeClientAddresses.last}`);
  }
  const seen = new Map<string, string>();
  for (const [where, a] of [...addressed.filter(([w]) => !w.startsWith('/freeClientAddresses')), ...addressed6]) {
    const other = seen.get(a);
    if (other) problems.push(`${where}: ${a} is also ${other}`);
    seen.set(a, where);
  }
  const macs = new Map<string, string>();
  for (const [where, mac] of [['/client/mac', d.client.mac], ...d.nodes.map((n, i) => [`/nodes/${i}/mac`, n.mac])] as Array<[string, string]>) {
    const other = macs.get(mac);
    if (other) problems.push(`${where}: ${mac} is also ${other}`);
    macs.set(mac, where);
  }
  if (problems.length) fail(problems);
  return d;
}

/** Reads and validates lab.json. */
export function readLabDescription(file: string): LabDescription {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new BatonError('E_LAB', `cannot read lab description ${file}: ${(err as Error).message}`, { step: 'read-description', path: file }, { cause: err });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new BatonError('E_LAB', `${file} is not JSON: ${(err as Error).message}`, { step: 'read-description', path: file }, { cause: err });
  }
  return validateLabDescription(value, file);
}

/** Writes lab.json atomically, so a reader never sees half a file. */
export function writeLabDescription(file: string, d: LabDescription): void {
  validateLabDescription(d, file);
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${JSON.stringify(d, null, 2)}\n`);
  fs.renameSync(tmp, file);
}
