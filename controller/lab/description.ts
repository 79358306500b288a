// lab.json: what a running lab looks like, for batond's config, tests and external tools.
// Everything here is derived from (prefix, subnet, dir), so labDown can rebuild the names after a
// crash without the file. The file is validated when read back: a stale or hand-edited one must
// fail loudly with the field at fault, not half-work.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { type Static, Type } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { BatonError } from '../errors.js';

export const LAB_SCHEMA_VERSION = 1;
export const DEFAULT_PREFIX = 'baton';
export const DEFAULT_SUBNET = '10.203.0.0/24';
export const BRIDGE_NAME = 'br0';
export const NODE_INTERFACE = 'eth0';
export const NODE_NAMES = ['n1', 'n2', 'n3'] as const;
export const DISTRIBUTOR = 'n1';
/** The backup distributor of a lab with one (lab up --backup): an ordinary node, a target too, until it takes over. */
export const BACKUP_DISTRIBUTOR = 'n2';
export const DVIPA_PORTS = [80, 7000] as const;

// Host numbers inside the subnet. The DVIPA sits in the same subnet so the client ARPs for it
// directly and only the distributor answers.
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
    bridge: Type.Object({ ns: NsName, name: IfName }, { additionalProperties: false }),
    dvipa: Type.Object({ address: Ipv4, ports: Type.Array(Port, { minItems: 1, uniqueItems: true }) }, { additionalProperties: false }),
    /** The distributor at start (the first in the cluster file's distributors). */
    distributor: Type.Union(NODE_NAMES.map((n) => Type.Literal(n))),
    /** Backup distributors (lab up --backup: n2), each with keepalived beside batond; absent: none. */
    backups: Type.Optional(Type.Array(Type.Union(NODE_NAMES.map((n) => Type.Literal(n))), { maxItems: NODE_NAMES.length - 1, uniqueItems: true })),
    nodes: Type.Array(LabNodeSchema, { minItems: NODE_NAMES.length, maxItems: NODE_NAMES.length }),
    client: Type.Object({ ns: NsName, interface: IfName, address: Ipv4, mac: Mac, bridgePort: IfName }, { additionalProperties: false }),
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
export function describeLab(opts: { prefix: string; subnet: string; runDir: string; now?: Date; backup?: boolean }): LabDescription {
  const names = labNames(opts.prefix);
  const subnet = parseSubnet(opts.subnet);
  const nodes: LabNode[] = NODE_NAMES.map((name, i) => {
    const address = subnetHost(subnet, HOST.firstNode + i);
    return { name, ns: names.nodeNs[name], interface: NODE_INTERFACE, address, mac: labMac(opts.prefix, address), bridgePort: name };
  });
  const clientAddress = subnetHost(subnet, HOST.client);
  return {
    version: LAB_SCHEMA_VERSION,
    prefix: opts.prefix,
    subnet: opts.subnet,
    bridge: { ns: names.switchNs, name: BRIDGE_NAME },
    dvipa: { address: subnetHost(subnet, HOST.dvipa), ports: [...DVIPA_PORTS] },
    distributor: DISTRIBUTOR,
    ...(opts.backup ? { backups: [BACKUP_DISTRIBUTOR] } : {}),
    nodes,
    client: { ns: names.clientNs, interface: NODE_INTERFACE, address: clientAddress, mac: labMac(opts.prefix, clientAddress), bridgePort: 'client' },
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
  if (ipToInt(d.freeClientAddresses.first) > ipToInt(d.freeClientAddresses.last)) {
    problems.push(`/freeClientAddresses: first ${d.freeClientAddresses.first} is after last ${d.freeClientAddresses.last}`);
  }
  const seen = new Map<string, string>();
  for (const [where, a] of addressed.filter(([w]) => !w.startsWith('/freeClientAddresses'))) {
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
