// Shared by the example applications: command-line options, listening on the DVIPA and waiting for the node's batond.
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Command } from 'commander';
import { ROUTING_LIMIT_DEFAULTS, type HandoffTarget, type RoutingLimits, type TargetInfo, type TargetOptions } from '../controller/sdk/index.js';

export interface ExampleOptions {
  agent: string;
  /** Routing applications: the DVIPA's addresses to listen on (both families of a dual-stack one). */
  dvipas: string[];
  port: number;
  node: string;
  users: Map<string, string>;
  /** Every node a routing application may hand off to, in order of preference after the user's own. */
  targets: string[];
  /** Target applications: how many transferred connections to serve at once; more are refused. */
  capacity: number;
  /** Target applications: count capacity and answer each offer in the application (onOffer) rather than in batond. */
  decide: boolean;
  framework: 'node' | 'fastify';
  instance?: string;
  /** The node's control socket, when given: registration and target discovery (claims 18–24). */
  control?: { port: number; secretFile: string };
  /** Routing applications: the routing-phase limits (controller/sdk/routing-guard.ts). */
  routing: RoutingLimits;
  /** Routing applications serving TLS: the certificate and key (PEM files). */
  tls?: { cert: string; key: string };
}

/** The routing-phase options, their flags and what they bound. */
const ROUTING_FLAGS: Array<[keyof RoutingLimits, string, string]> = [
  ['idleMs', '--routing-idle-ms <ms>', 'close a connection that sends nothing for this long before the decision'],
  ['deadlineMs', '--routing-deadline-ms <ms>', 'close a connection still undecided this long after accept'],
  ['maxBytes', '--routing-max-bytes <n>', 'close a connection that sends more than this before the decision'],
  ['maxPerSource', '--routing-max-per-source <n>', 'refuse connections beyond this many undecided ones from one source (an IPv4 address, an IPv6 prefix)'],
  ['ipv6SourcePrefix', '--routing-ipv6-source-prefix <bits>', 'the IPv6 prefix length counted as one source (1-128)'],
  ['maxTotal', '--routing-max-total <n>', 'refuse connections beyond this many undecided ones in all'],
];

/** Users and the node each is served by; the default is the mapping documented in examples/README.md. */
function parseUsers(spec: string): Map<string, string> {
  const users = new Map<string, string>();
  for (const pair of spec.split(',').filter(Boolean)) {
    const [user, node] = pair.split('=');
    if (!user || !node) throw new Error(`--users: expected user=node pairs, got "${pair}"`);
    users.set(user, node);
  }
  return users;
}

/** `routingDefaults`: where an application's protocol needs other bounds than the SDK's defaults. */
export function exampleOptions(name: string, defaultPort: number, routingDefaults: Partial<RoutingLimits> = {}): ExampleOptions {
  const routingDefault = { ...ROUTING_LIMIT_DEFAULTS, ...routingDefaults };
  const command = new Command()
    .name(name)
    .requiredOption('--agent <path>', 'batond application socket of this node')
    .requiredOption('--node <name>', 'this node\'s name')
    .option('--dvipa <addresses>', 'routing applications: the DVIPA\'s addresses to listen on, comma-separated (IPv4, IPv6 or both)', '0.0.0.0')
    .option('--port <port>', 'DVIPA port', String(defaultPort))
    .option('--users <map>', 'user=node pairs: who is served where', 'alice=n2,bob=n3')
    .option('--targets <nodes>', 'routing applications: nodes to fall back to when the user\'s node refuses', 'n2,n3')
    .option('--capacity <n>', 'target applications: connections served at once before refusing more', '1000')
    .option('--decide', 'target applications: answer each offer here (onOffer) instead of letting batond accept up to --capacity')
    .option('--framework <name>', 'HTTP target: node (http.createServer) or fastify', 'node')
    .option('--instance <name>', 'target applications: instance name, unique on the node (default: the application name)')
    .option('--tls-cert <file>', 'routing applications: serve TLS with this certificate (PEM), handing connections off with their TLS session (targets need kernel TLS)')
    .option('--tls-key <file>', 'routing applications: the private key of --tls-cert (PEM)')
    .option('--control-port <port>', 'UDP port of batond\'s control socket on this node')
    .option('--control-secret <file>', 'the node\'s control secret file');
  for (const [key, flag, what] of ROUTING_FLAGS) command.option(flag, `routing applications: ${what}`, String(routingDefault[key]));
  const opts = command
    .parse()
    .opts<{ agent: string; node: string; dvipa: string; port: string; users: string; targets: string; capacity: string; decide?: boolean; framework: string; controlPort?: string; controlSecret?: string; instance?: string; tlsCert?: string; tlsKey?: string }>();
  if (Boolean(opts.controlPort) !== Boolean(opts.controlSecret)) throw new Error('--control-port and --control-secret go together');
  if (Boolean(opts.tlsCert) !== Boolean(opts.tlsKey)) throw new Error('--tls-cert and --tls-key go together');
  const capacity = Number(opts.capacity);
  if (!Number.isInteger(capacity) || capacity < 0) throw new Error(`--capacity: expected a non-negative integer, got "${opts.capacity}"`);
  if (opts.framework !== 'node' && opts.framework !== 'fastify') throw new Error(`--framework: expected node or fastify, got "${opts.framework}"`);
  const routing = { ...routingDefault };
  for (const [key, flag] of ROUTING_FLAGS) {
    const long = flag.split(' ')[0]!;
    const given = String(command.getOptionValue(command.options.find((o) => o.long === long)!.attributeName()));
    const n = Number(given);
    if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`${long}: expected a positive integer, got "${given}"`);
    routing[key] = n;
  }
  return {
    agent: opts.agent,
    node: opts.node,
    dvipas: opts.dvipa.split(',').filter(Boolean),
    port: Number(opts.port),
    users: parseUsers(opts.users),
    targets: opts.targets.split(',').filter(Boolean),
    capacity,
    decide: opts.decide === true,
    framework: opts.framework,
    routing,
    ...(opts.instance ? { instance: opts.instance } : {}),
    ...(opts.controlPort && opts.controlSecret ? { control: { port: Number(opts.controlPort), secretFile: opts.controlSecret } } : {}),
    ...(opts.tlsCert && opts.tlsKey ? { tls: { cert: opts.tlsCert, key: opts.tlsKey } } : {}),
  };
}

/**
 * The examples' capacity: batond refuses offers beyond it for the application, which is then not
 * asked (a round trip less per handoff). With --decide the application answers each offer itself
 * (onOffer), counting its own connections, as one with a policy of its own would. --capacity 0
 * means "take nothing", which the SDK cannot say (its 0 is no limit): the application then
 * refuses each offer itself (claims 4, 14).
 */
export function capacityOptions(opts: Pick<ExampleOptions, 'capacity' | 'decide'>, load: () => number): Pick<TargetOptions, 'capacity' | 'onOffer'> {
  const { capacity } = opts;
  if (capacity > 0 && !opts.decide) return { capacity };
  const refusal = { accept: false, reason: `at capacity (${capacity} connections)` } as const;
  return { capacity, onOffer: () => (load() < capacity ? { accept: true } : refusal) };
}

/**
 * Where a routing application tries to hand a user's connection, in order: the instances on the
 * user's own node first (affinity: it may still refuse, its advertised load can be stale), then
 * every other instance on the port, those with spare capacity first, least loaded first. Without
 * a control socket (no discovered list), the configured nodes.
 */
export function targetsFor(userNode: string, port: number, discovered: TargetInfo[], fallbackNodes: string[]): HandoffTarget[] {
  const onPort = discovered.filter((t) => t.port === port);
  if (onPort.length === 0) return [userNode, ...fallbackNodes.filter((n) => n !== userNode)].map((node) => ({ node, port }));
  // Drained or weight-0 instances take no new connection; weight scales an instance's share.
  const usable = onPort.filter((t) => !t.draining && t.weight > 0);
  const used = (t: TargetInfo) => (t.capacity === 0 ? 0 : t.load / t.capacity);
  const rank = (a: TargetInfo, b: TargetInfo) =>
    Number(used(a) >= 1) - Number(used(b) >= 1) || (used(a) * 100) / a.weight - (used(b) * 100) / b.weight || a.node.localeCompare(b.node);
  // The list may not have caught up with the user's node yet: ask it anyway, for any instance.
  const listed = usable.filter((t) => t.node === userNode).sort(rank);
  const own = listed.length > 0 || onPort.some((t) => t.node === userNode) ? listed : [{ node: userNode, port } as TargetInfo];
  const others = usable.filter((t) => t.node !== userNode).sort(rank);
  return [...own, ...others].map((t) => ({ node: t.node, port: t.port, ...(t.instance ? { instance: t.instance } : {}) }));
}

/** Applications may start before their batond (on a slow machine, an emulated VM, minutes before): retry the link for a bounded time. */
export async function withRetry<T>(what: string, fn: () => Promise<T>, timeoutMs = 300_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`${what}: ${(err as Error).message}`);
      await sleep(100);
    }
  }
}

/**
 * A routing application listens on each of the DVIPA's addresses (one server per address: an IPv4
 * and an IPv6 one for a dual-stack DVIPA); onListening runs once all of them listen. Returns a
 * function that closes them all.
 */
export function listenOnDvipas(addresses: readonly string[], port: number, onConnection: (socket: net.Socket) => void, onListening: () => void): () => void {
  const servers = addresses.map((host) => net.createServer(onConnection).listen({ host, port }));
  let listening = 0;
  for (const server of servers) server.once('listening', () => ++listening === servers.length && onListening());
  return () => servers.forEach((s) => s.close());
}
