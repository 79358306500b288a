// The cluster description every batond reads, one YAML file per cluster: which nodes exist, where
// they listen, which one is the distributor, which DVIPA they share, where secrets live, and the
// limits. One schema, validated with precise messages (file:line:column, path, what was expected).
// The namespace lab writes its file with writeClusterConfig(), the same code an operator's goes through.
import fs from 'node:fs';
import net from 'node:net';
import { Type, type Static } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { LineCounter, parseDocument, stringify } from 'yaml';
import { BatonError } from '../errors.js';

const Name = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' });
const Port = Type.Integer({ minimum: 1, maximum: 65535 });
const Mac = Type.String({ pattern: '^([0-9a-f]{2}:){5}[0-9a-f]{2}$' });

export const NodeConfigSchema = Type.Object(
  {
    name: Name,
    /** Small integer identifying the node in the routing table (1-based, unique). */
    id: Type.Integer({ minimum: 1, maximum: 65535 }),
    /** Management address: peer links and the REST API listen here, never on the DVIPA. */
    address: Type.String({ minLength: 7, maxLength: 15 }),
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
    dvipa: Type.Object(
      { address: Type.String({ minLength: 7, maxLength: 15 }), ports: Type.Array(Port, { minItems: 1, maxItems: 64, uniqueItems: true }) },
      { additionalProperties: false },
    ),
    distributor: Name,
    /** Where batond keeps what must survive a restart (DVIPAs added through the API). Default /var/lib/baton. */
    stateDir: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
    /** UDP port of every node's control socket, bound to 127.0.0.1 inside the node (claims 18–24). */
    controlPort: Port,
    /** The cluster CA: peer links are mutual TLS, each side's certificate must chain to it. */
    tls: Type.Object({ caFile: Type.String({ minLength: 1, maxLength: 4096 }) }, { additionalProperties: false }),
    /** The REST admin API, served by every batond on its management address. */
    api: Type.Object(
      {
        port: Port,
        /** Root-only file holding the bearer token mutating routes require (BATON_API_TOKEN overrides it). */
        tokenFile: Type.String({ minLength: 1, maxLength: 4096 }),
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
  // TypeBox leaves string formats to the caller: check addresses with the platform's parser.
  const config = value;
  for (const [path, addr] of [['/dvipa/address', config.dvipa.address], ...config.nodes.map((n, i) => [`/nodes/${i}/address`, n.address])]) {
    if (net.isIPv4(addr!) === false) throw new BatonError('E_CONFIG', `${locate(path!)}: ${path}: ${addr} is not an IPv4 address`, { step: 'config' });
  }
  const unique = (key: 'name' | 'id' | 'address' | 'mac' | 'agentSocket' | 'controlSecretFile') => {
    const seen = new Set<unknown>();
    for (const n of config.nodes) {
      if (seen.has(n[key])) throw new BatonError('E_CONFIG', `${locate('/nodes')}: /nodes: duplicate ${key} ${String(n[key])}`, { step: 'config' });
      seen.add(n[key]);
    }
  };
  (['name', 'id', 'address', 'mac', 'agentSocket', 'controlSecretFile'] as const).forEach(unique);
  if (!config.nodes.some((n) => n.name === config.distributor)) {
    throw new BatonError('E_CONFIG', `${locate('/distributor')}: /distributor: ${config.distributor} is not one of the nodes`, { step: 'config' });
  }
  return config;
}

export function readClusterConfig(path: string): ClusterConfig {
  let text: string;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (err) {
    throw new BatonError('E_CONFIG', `cannot read cluster config ${path}: ${(err as Error).message}`, { step: 'config' });
  }
  return parseClusterConfigText(text, path);
}

/** Parses YAML (JSON is YAML too) and validates it; every error names file:line:column and the path. */
export function parseClusterConfigText(text: string, source: string): ClusterConfig {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const at = (offset: number) => {
    const { line, col } = lines.linePos(offset);
    return `${source}:${line}:${col}`;
  };
  if (doc.errors.length > 0) {
    const errors = doc.errors.slice(0, 5).map((e) => `${at(e.pos[0])}: ${e.message.split('\n')[0]}`);
    throw new BatonError('E_CONFIG', `invalid cluster config\n  ${errors.join('\n  ')}`, { step: 'config' });
  }
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
  return parseClusterConfig(doc.toJS(), source, locate);
}

export function writeClusterConfig(path: string, config: ClusterConfig): void {
  parseClusterConfig(config, path);
  fs.writeFileSync(path, `# Baton cluster config (docs/operations.md). Written by the namespace lab.\n${stringify(config)}`);
}

export function nodeByName(config: ClusterConfig, name: string): NodeConfig | undefined {
  return config.nodes.find((n) => n.name === name);
}
