// Shared by the example applications: command-line options and waiting for the node's batond.
import { setTimeout as sleep } from 'node:timers/promises';
import { Command } from 'commander';

export interface ExampleOptions {
  agent: string;
  dvipa: string;
  port: number;
  node: string;
  users: Map<string, string>;
  /** Every node a routing application may hand off to, in order of preference after the user's own. */
  targets: string[];
  /** Target applications: how many transferred connections to serve at once; more are refused. */
  capacity: number;
  framework: 'node' | 'fastify';
}

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

export function exampleOptions(name: string, defaultPort: number): ExampleOptions {
  const opts = new Command()
    .name(name)
    .requiredOption('--agent <path>', 'batond application socket of this node')
    .requiredOption('--node <name>', 'this node\'s name')
    .option('--dvipa <address>', 'DVIPA to listen on (routing applications)', '0.0.0.0')
    .option('--port <port>', 'DVIPA port', String(defaultPort))
    .option('--users <map>', 'user=node pairs: who is served where', 'alice=n2,bob=n3')
    .option('--targets <nodes>', 'routing applications: nodes to fall back to when the user\'s node refuses', 'n2,n3')
    .option('--capacity <n>', 'target applications: connections served at once before refusing more', '1000')
    .option('--framework <name>', 'HTTP target: node (http.createServer) or fastify', 'node')
    .parse()
    .opts<{ agent: string; node: string; dvipa: string; port: string; users: string; targets: string; capacity: string; framework: string }>();
  const capacity = Number(opts.capacity);
  if (!Number.isInteger(capacity) || capacity < 0) throw new Error(`--capacity: expected a non-negative integer, got "${opts.capacity}"`);
  if (opts.framework !== 'node' && opts.framework !== 'fastify') throw new Error(`--framework: expected node or fastify, got "${opts.framework}"`);
  return {
    agent: opts.agent,
    node: opts.node,
    dvipa: opts.dvipa,
    port: Number(opts.port),
    users: parseUsers(opts.users),
    targets: opts.targets.split(',').filter(Boolean),
    capacity,
    framework: opts.framework,
  };
}

/** Counts a target's live connections and refuses offers beyond its capacity (claims 4, 14). */
export function capacityPolicy(capacity: number) {
  let active = 0;
  return {
    decide: () => (active < capacity ? ({ accept: true } as const) : ({ accept: false, reason: `at capacity (${capacity} connections)` } as const)),
    track(socket: { once(event: 'close', fn: () => void): unknown }) {
      active++;
      socket.once('close', () => active--);
    },
  };
}

/** Applications may start before their batond: retry the link for a bounded time. */
export async function withRetry<T>(what: string, fn: () => Promise<T>, timeoutMs = 15_000): Promise<T> {
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
