// The cluster description every batond reads, one YAML file per cluster: which nodes exist, where
// they listen, which ones can be the distributor, which DVIPA they share, where secrets live, and the
// limits. One schema, validated with precise messages (file:line:column, path, what was expected).
// The namespace lab writes its file with writeClusterConfig(), the same code an operator's goes through.
import fs from 'node:fs';
import { Type, type Static } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { isCollection, isPair, LineCounter, parseDocument, stringify } from 'yaml';
import { BatonError } from '../errors.js';
import { canonicalIp, familyOf } from '../flow.js';
import { bounded } from '../input.js';
import { DvipaPolicy } from './dvipa-policy.js';

const Name = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' });
const Port = Type.Integer({ minimum: 1, maximum: 65535 });
const Mac = Type.String({ pattern: '^([0-9a-f]{2}:){5}[0-9a-f]{2}$' });

export const NodeConfigSchema = Type.Object(
  {
    name: Name,
    /** Small integer identifying the node in the routing table (1-based, unique). */
    id: Type.Integer({ minimum: 1, maximum: 65535 }),
    /** Management address, IPv4 or IPv6: peer links and the REST API listen here, never on the DVIPA. */
    address: Type.String({ minLength: 2, maxLength: 45 }),
    /** MAC of the node's interface on the shared L2 segment: XDP rewrites frames to it. */
    mac: Mac,
    interface: Type.String({ minLength: 1, maxLength: 15 }),
    peerPort: Port,
    /** Unix socket where local applications reach this node's batond. */
    agentSocket: Type.String({ minLength: 1, maxLength: 107 }),
    /** Root-only file holding this node's control-socket secret (created by batond if missing). */
    controlSecretFile: Type.String({ minLength: 1, maxLength: 4096 }),
    /** This node's certificate (CN and SAN: its name) and key for the mutual-TLS peer links (scripts/certs.sh). */
    certFile: Type.String({ minLength: 1, maxLength: 4096 }),
    keyFile: Type.String({ minLength: 1, maxLength: 4096 }),
  },
  { additionalProperties: false },
);

export const ClusterConfigSchema = Type.Object(
  {
    version: Type.Literal(1),
    /** Namespaces the pinned BPF maps: /sys/fs/bpf/baton/<instance>-<node>/. */
    instance: Name,
    /**
     * The cluster's virtual IP: one address per family at most (an IPv4 one, an IPv6 one, or both
     * for a dual-stack service), every address serving the same ports.
     */
    dvipa: Type.Object(
      {
        addresses: Type.Array(Type.String({ minLength: 2, maxLength: 45 }), { minItems: 1, maxItems: 2, uniqueItems: true }),
        ports: Type.Array(Port, { minItems: 1, maxItems: 64, uniqueItems: true }),
      },
      { additionalProperties: false },
    ),
    /**
     * Where virtual IPs may come from: the config's DVIPA and every one an operator adds through
     * the API must lie in one of these CIDRs (IPv4 or IPv6, e.g. 192.0.2.0/28). Default: the
     * config's DVIPA alone (an operator can add none). Whatever the list says, loopback, multicast,
     * broadcast, link-local, unspecified and the nodes' and gateways' own addresses are refused.
     */
    dvipaCidrs: Type.Optional(Type.Array(Type.String({ minLength: 3, maxLength: 49 }), { minItems: 1, maxItems: 64 })),
    /**
     * The nodes that can be the distributor, in order of preference: the first is active at start;
     * the others are backups (ordinary nodes that also keep a replica of the routing table) until
     * keepalived (VRRP) makes one of them active (docs/operations.md, "Backup distributor: keepalived decides who is active").
     */
    distributors: Type.Array(Name, { minItems: 1, maxItems: 8, uniqueItems: true }),
    /** VRRP as Baton configures keepalived for the distributors. */
    vrrp: Type.Optional(
      Type.Object(
        {
          /** VRRP virtual router id, unique on the segment. Default 51. */
          routerId: Type.Optional(Type.Integer({ minimum: 1, maximum: 255 })),
          /** Advert interval (VRRPv3 counts centiseconds). Default 100: a dead distributor is noticed in about 0.4 s. */
          advertMs: Type.Optional(Type.Integer({ minimum: 10, maximum: 40_950, multipleOf: 10 })),
        },
        { additionalProperties: false },
      ),
    ),
    /** Where batond keeps what must survive a restart (DVIPAs added through the API) and keepalived's files. Default /var/lib/baton. */
    stateDir: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
    /** UDP port of every node's control socket, bound to 127.0.0.1 inside the node (claims 18–24). */
    controlPort: Port,
    /** The cluster CA: peer links are mutual TLS, each side's certificate must chain to it. */
    tls: Type.Object({ caFile: Type.String({ minLength: 1, maxLength: 4096 }) }, { additionalProperties: false }),
    /** The REST admin API, served by every batond on its management address: HTTPS with the node's certificate. */
    api: Type.Object(
      {
        port: Port,
        /** Root-only file listing the operators: name, scope (read | admin), SHA-256 of their token (docs/api.md). */
        tokenFile: Type.String({ minLength: 1, maxLength: 4096 }),
        /** true: plain HTTP instead of HTTPS, warned about at start. Tokens then cross the network in clear. */
        insecurePlaintext: Type.Optional(Type.Boolean()),
      },
      { additionalProperties: false },
    ),
    xdpMode: Type.Union([Type.Literal('native'), Type.Literal('generic')]),
    /** Upper bound for each step of a handoff waiting on another party. */
    handoffStepTimeoutMs: Type.Integer({ minimum: 10, maximum: 60_000 }),
    /**
     * How long an entry keeps forwarding once TCP on the serving node is done with the connection
     * (no socket, or TIME_WAIT): covers a client's retransmitted last FIN.
     */
    releaseGraceMs: Type.Integer({ minimum: 0, maximum: 600_000 }),
    /** A closed connection whose serving node never reports TCP done (it died) loses its entry after this. Default 300000. */
    releasedMaxMs: Type.Optional(Type.Integer({ minimum: 1000, maximum: 3_600_000 })),
    limits: Type.Optional(
      Type.Object(
        {
          /** Flows the distributor's routing table holds (BPF map max_entries). Default 262144. */
          routingTableEntries: Type.Optional(Type.Integer({ minimum: 1024, maximum: 16_777_216 })),
          /** Handoffs a node coordinates at once; more are refused (the router keeps the socket). Default 4096. */
          handoffsInFlight: Type.Optional(Type.Integer({ minimum: 1, maximum: 1_000_000 })),
          /** Offers one peer node may have in flight at a target node; more are refused. Default 4096. */
          offersPerPeer: Type.Optional(Type.Integer({ minimum: 1, maximum: 1_000_000 })),
          /** Bytes (socket queues and peeked bytes) those offers may hold at a target node; more are refused. Default 256 MiB. */
          offerBytesPerPeer: Type.Optional(Type.Integer({ minimum: 1_048_576, maximum: 68_719_476_736 })),
          /**
           * Handed-off connections the routing table may hold in all; new handoffs beyond are refused
           * (E_QUOTA) so the table never fills. Default: 7/8 of routingTableEntries, leaving room for
           * connections already moving and for entries that linger while TCP closes.
           */
          handedOffEntries: Type.Optional(Type.Integer({ minimum: 1, maximum: 16_777_216 })),
          /** Handed-off connections one client may hold (an IPv4 address, an IPv6 prefix); beyond, its handoffs are refused (E_QUOTA). Default 4096. */
          entriesPerSource: Type.Optional(Type.Integer({ minimum: 1, maximum: 16_777_216 })),
          /** The IPv6 prefix length that makes one client for entriesPerSource: every address of a /64 by default. */
          ipv6SourcePrefix: Type.Optional(Type.Integer({ minimum: 1, maximum: 128 })),
          /** Connections a target application serves at once when it names no capacity of its own; beyond, offers are refused. Default 10000. */
          targetCapacity: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000_000 })),
          /**
           * How long a handed-off connection may be idle or stuck on its target before its kernel
           * gives up on it (set on every reinstated socket; 0 turns one off): TCP keepalive probes
           * after keepaliveIdleS of silence, every keepaliveIntervalS, keepaliveProbes of them; and
           * TCP_USER_TIMEOUT, the longest data may stay unacknowledged. Defaults 300, 30, 4, 300.
           */
          idle: Type.Optional(
            Type.Object(
              {
                keepaliveIdleS: Type.Optional(Type.Integer({ minimum: 0, maximum: 32_767 })),
                keepaliveIntervalS: Type.Optional(Type.Integer({ minimum: 1, maximum: 32_767 })),
                keepaliveProbes: Type.Optional(Type.Integer({ minimum: 1, maximum: 127 })),
                userTimeoutS: Type.Optional(Type.Integer({ minimum: 0, maximum: 86_400 })),
              },
              { additionalProperties: false },
            ),
          ),
        },
        { additionalProperties: false },
      ),
    ),
    nodes: Type.Array(NodeConfigSchema, { minItems: 1, maxItems: 1024 }),
  },
  { additionalProperties: false },
);

export type NodeConfig = Static<typeof NodeConfigSchema>;
export type ClusterConfig = Static<typeof ClusterConfigSchema>;

const check = TypeCompiler.Compile(ClusterConfigSchema);

/** Where a JSON-pointer path sits in the source text, when the value came from a YAML file. */
type Locate = (path: string) => string;

export function parseClusterConfig(value: unknown, source = '<config>', locate: Locate = () => source): ClusterConfig {
  if (!check.Check(value)) {
    const errors = [...check.Errors(value)].slice(0, 5).map((e) => `${locate(e.path)}: ${e.path || '/'}: ${e.message}`);
    throw new BatonError('E_CONFIG', `invalid cluster config\n  ${errors.join('\n  ')}`, { step: 'config' });
  }
  // TypeBox leaves string formats to the caller: check addresses with the platform's parser, and
  // keep them in their canonical text (flow.ts), the form sockets and the kernel report them in,
  // so that comparing an address a socket gives with the config's is comparing strings.
  const config = value;
  const canonical = (path: string, addr: string): string => {
    if (!familyOf(addr)) throw new BatonError('E_CONFIG', `${locate(path)}: ${path}: ${bounded(addr, 48)} is not an IPv4 or IPv6 address`, { step: 'config' });
    return canonicalIp(addr, path);
  };
  config.dvipa.addresses = config.dvipa.addresses.map((a, i) => canonical(`/dvipa/addresses/${i}`, a));
  if (config.dvipa.addresses.length === 2 && familyOf(config.dvipa.addresses[0]!) === familyOf(config.dvipa.addresses[1]!)) {
    throw new BatonError('E_CONFIG', `${locate('/dvipa/addresses/1')}: /dvipa/addresses/1: a second address must be of the other family (one IPv4, one IPv6)`, { step: 'config' });
  }
  config.nodes.forEach((n, i) => (n.address = canonical(`/nodes/${i}/address`, n.address)));
  const unique = (key: 'name' | 'id' | 'address' | 'mac' | 'agentSocket' | 'controlSecretFile') => {
    const seen = new Set<unknown>();
    for (const n of config.nodes) {
      if (seen.has(n[key])) throw new BatonError('E_CONFIG', `${locate('/nodes')}: /nodes: duplicate ${key} ${String(n[key])}`, { step: 'config' });
      seen.add(n[key]);
    }
  };
  (['name', 'id', 'address', 'mac', 'agentSocket', 'controlSecretFile'] as const).forEach(unique);
  let policy: DvipaPolicy;
  try {
    policy = new DvipaPolicy(config.dvipaCidrs, config.dvipa.addresses, config.nodes.map((n) => n.address));
  } catch (err) {
    throw new BatonError('E_CONFIG', `${locate('/dvipaCidrs')}: /dvipaCidrs: ${(err as Error).message}`, { step: 'config' });
  }
  config.dvipa.addresses.forEach((address, i) => {
    const refused = policy.refusal(address);
    if (refused) throw new BatonError('E_CONFIG', `${locate(`/dvipa/addresses/${i}`)}: /dvipa/addresses/${i}: ${refused}`, { step: 'config' });
  });
  config.distributors.forEach((name, i) => {
    if (!config.nodes.some((n) => n.name === name)) throw new BatonError('E_CONFIG', `${locate(`/distributors/${i}`)}: /distributors/${i}: ${name} is not one of the nodes`, { step: 'config' });
  });
  return config;
}

export function readClusterConfig(path: string): ClusterConfig {
  let bytes: Buffer;
  try {
    // Sized before it is read: a huge file (or a device) is refused without being loaded.
    const stat = fs.statSync(path);
    if (!stat.isFile()) throw new BatonError('E_CONFIG', `invalid cluster config ${path}: not a regular file`, { step: 'config' });
    if (stat.size > MAX_CONFIG_BYTES) throw new BatonError('E_CONFIG', `invalid cluster config ${path}: ${stat.size} bytes, at most ${MAX_CONFIG_BYTES}`, { step: 'config' });
    bytes = fs.readFileSync(path);
  } catch (err) {
    if (err instanceof BatonError) throw err;
    throw new BatonError('E_CONFIG', `cannot read cluster config ${path}: ${(err as Error).message}`, { step: 'config' });
  }
  let text: string;
  try {
    // Strictly: a lenient decoder would read a stray byte as U+FFFD and carry on with a value nobody wrote.
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new BatonError('E_CONFIG', `invalid cluster config ${path}: not valid UTF-8`, { step: 'config' });
  }
  return parseClusterConfigText(text, path);
}

/** A cluster file is a few KiB; anything near this is not one. */
export const MAX_CONFIG_BYTES = 1024 * 1024;
/** The schema nests 4 deep; a file nested deeper than this is refused before it is converted. */
export const MAX_CONFIG_DEPTH = 16;

/**
 * Parses YAML (JSON is YAML too) and validates it; every error names file:line:column and the
 * path. Bounded like any input: the size before parsing, the nesting depth of what was parsed
 * before it is converted (the parser itself reports a nesting too deep for its recursion as an
 * error, but the conversion and anything after it recurse too), aliases by the parser's own limit.
 */
export function parseClusterConfigText(text: string, source: string): ClusterConfig {
  const size = Buffer.byteLength(text);
  if (size > MAX_CONFIG_BYTES) throw new BatonError('E_CONFIG', `invalid cluster config ${source}: ${size} bytes, at most ${MAX_CONFIG_BYTES}`, { step: 'config' });
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const at = (offset: number) => {
    const { line, col } = lines.linePos(offset);
    return `${source}:${line}:${col}`;
  };
  if (doc.errors.length > 0) {
    const errors = doc.errors.slice(0, 5).map((e) => `${at(e.pos[0])}: ${bounded(e.message.split('\n')[0] ?? '', 120)}`);
    throw new BatonError('E_CONFIG', `invalid cluster config\n  ${errors.join('\n  ')}`, { step: 'config' });
  }
  const deep = deeperThan(doc.contents, MAX_CONFIG_DEPTH);
  if (deep) throw new BatonError('E_CONFIG', `invalid cluster config\n  ${deep.range ? at(deep.range[0]) : source}: nested deeper than ${MAX_CONFIG_DEPTH}`, { step: 'config' });
  // Point at the deepest node of the path that exists: a missing key is reported at its parent.
  const locate = (pointer: string) => {
    const segments = pointer.split('/').slice(1).map((s) => (/^\d+$/.test(s) ? Number(s) : s.replace(/~1/g, '/').replace(/~0/g, '~')));
    for (let n = segments.length; n >= 0; n--) {
      const node = n === 0 ? doc.contents : doc.getIn(segments.slice(0, n), true);
      const range = (node as { range?: [number, number, number] } | null | undefined)?.range;
      if (range) return at(range[0]);
    }
    return source;
  };
  let value: unknown;
  try {
    value = doc.toJS();
  } catch (err) {
    // The parser refuses some documents only while converting them (an alias bomb: "Excessive alias count").
    throw new BatonError('E_CONFIG', `invalid cluster config ${source}: ${bounded((err as Error).message, 120)}`, { step: 'config' });
  }
  return parseClusterConfig(value, source, locate);
}

/** The first YAML node found nested deeper than limit (walked without recursion), or undefined. */
function deeperThan(root: unknown, limit: number): { range?: [number, number, number] } | undefined {
  const stack: Array<[unknown, number]> = [[root, 1]];
  while (stack.length > 0) {
    const [node, depth] = stack.pop()!;
    if (!isCollection(node)) continue;
    if (depth > limit) return node as { range?: [number, number, number] };
    for (const item of node.items) {
      if (isPair(item)) stack.push([item.value, depth + 1]);
      else stack.push([item, depth + 1]);
    }
  }
  return undefined;
}

export function writeClusterConfig(path: string, config: ClusterConfig): void {
  parseClusterConfig(config, path);
  fs.writeFileSync(path, `# Baton cluster config (docs/operations.md). Written by the namespace lab.\n${stringify(config)}`);
}

/** Where batond keeps its state (the DVIPAs added through the API, keepalived's files): `stateDir`, /var/lib/baton by default. */
export function stateDirOf(config: Pick<ClusterConfig, 'stateDir'>): string {
  return config.stateDir ?? '/var/lib/baton';
}

/** The distributor every node assumes active until one announces itself: the first in order of preference. */
export function preferredDistributor(config: Pick<ClusterConfig, 'distributors'>): string {
  return config.distributors[0]!;
}

export function nodeByName(config: ClusterConfig, name: string): NodeConfig | undefined {
  return config.nodes.find((n) => n.name === name);
}
