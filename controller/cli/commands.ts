// batonctl's operator commands: each is one REST API call (or two) and a table, or --json for
// scripts. Which API: --api, else the namespace lab's distributor when a lab is up (then the
// command runs inside the distributor's network namespace, where its management address is).
// The API is HTTPS: the node's certificate is checked against the cluster CA (--ca-file), and the
// operator's token (--token-file or BATON_API_TOKEN) goes with every request.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { type Command, Option } from 'commander';
import { readLabDescription } from '../lab/description.js';
import { API_PORT, apiTokenFile, labCaFile } from '../lab/cluster.js';
import { repoRoot } from '../paths.js';
import { MAX_PAGE } from '../agent/paged-map.js';
import { OPERATOR_NAME, SCOPES, type Scope, newToken, tokenLine } from '../api/token.js';
import { ApiClient, readToken } from './api-client.js';
import { bytes, table } from './table.js';
import { hostPort } from '../flow.js';

interface GlobalOptions {
  api?: string;
  tokenFile?: string;
  caFile?: string;
  netns?: string;
  lab: string;
  dir: string;
  json?: boolean;
}

const NETNS_ENV = 'BATON_CLI_NETNS';
/** Where provisioning (scripts/provision/batond.sh with vagrant/cluster.yaml) puts the cluster CA. */
export const DEFAULT_CA_FILE = '/etc/baton/tls/ca.crt';

/** The API to talk to, entering its network namespace first when it lives in one (the lab). */
function connect(o: GlobalOptions): ApiClient {
  let base = o.api ?? process.env.BATON_API;
  let netns = o.netns;
  let tokenFile = o.tokenFile;
  let caFile = o.caFile ?? process.env.BATON_CA_FILE;
  if (!base) {
    const labFile = path.join(o.dir, 'lab.json');
    if (!fs.existsSync(labFile)) throw new Error(`no API given: use --api https://<node address>:<port> (or BATON_API), or start the lab (make lab-up)`);
    const lab = readLabDescription(labFile);
    if (lab.prefix !== o.lab) throw new Error(`${labFile} describes lab ${lab.prefix}, not ${o.lab}: pass --lab ${lab.prefix}`);
    const distributor = lab.nodes.find((n) => n.name === lab.distributor)!;
    base = `https://${hostPort(distributor.address, API_PORT)}`;
    netns ??= distributor.ns;
    // The lab's admin operator, unless the caller brought a token of their own (BATON_API_TOKEN
    // comes first in readToken).
    tokenFile ??= apiTokenFile(lab);
    caFile ??= labCaFile(lab);
  }
  caFile ??= fs.existsSync(DEFAULT_CA_FILE) ? DEFAULT_CA_FILE : undefined;
  // Read (and checked) before entering the namespace: the child gets the token itself, not the file.
  const token = readToken({ tokenFile });
  if (netns && process.env[NETNS_ENV] !== netns) {
    const r = spawnSync('nsenter', [`--net=/run/netns/${netns}`, '--', process.execPath, ...process.argv.slice(1)], {
      stdio: 'inherit',
      env: { ...process.env, [NETNS_ENV]: netns, BATON_API: base, ...(caFile ? { BATON_CA_FILE: caFile } : {}), ...(token ? { BATON_API_TOKEN: token } : {}) },
    });
    process.exit(r.status ?? 1);
  }
  return new ApiClient({ base, token, ca: caFile ? readCa(caFile) : undefined });
}

function readCa(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new Error(`cannot read the cluster CA ${file}: ${(err as Error).message}`);
  }
}

function out(o: GlobalOptions, value: unknown, human: () => string): void {
  console.log(o.json ? JSON.stringify(value, null, 2) : human());
}

/** Every operator command takes the same options to find the API. */
function apiCommand(parent: Command, name: string): Command {
  return parent
    .command(name)
    .option('--api <url>', 'the REST API of any node, e.g. https://10.0.0.11:4702 (env BATON_API)')
    .option('--ca-file <file>', `the cluster CA the node's certificate must chain to (env BATON_CA_FILE; default ${DEFAULT_CA_FILE}, or the lab's)`)
    .option('--token-file <file>', 'your operator token, mode 0600 (env BATON_API_TOKEN): scope read for the views, admin for changes')
    .option('--netns <name>', 'network namespace the API is reachable from')
    .option('--lab <prefix>', 'without --api: the namespace lab with this prefix', 'baton')
    .option('--dir <dir>', 'without --api: where the lab keeps lab.json', path.join(repoRoot(), 'lab'))
    .option('--json', 'machine-readable output');
}

type Node = { name: string; id: number; address: string; role: string; instance: string; uptimeSeconds: number; xdp: { mode: string; programId: number; interface: string } | null };
type Stats = { xdp: Record<string, { packets: number; bytes: number }> | null; routingTable: { entries: number; capacity: number } | null; transfers: { recent: number; done: number; failed: number }; control: { routers: number; targets: number; dropped: Record<string, number> }; targets: number };
type Distribution = {
  active: string;
  activeSince: number | null;
  backups: string[];
  self: 'active' | 'standby' | 'node';
  takeovers: number;
  streams: Array<{ backup: string; sentSeq: number; ackedSeq: number; lagEntries: number; snapshotting: boolean }>;
  replica: { from: string; seq: number; synced: boolean; lastAppliedAt: number | null } | null;
};
type ClusterNode = { name: string; address: string; role: string; reachable: boolean; lastReportMs: number | null; targets: number; api: string };
type Target = { node: string; app: string; instance: string; port: number; capacity: number; load: number; weight: number; draining: boolean };
type Connection = { id: string; state: string; node: string; packets?: number; bytes?: number; ageSeconds?: number; app?: string };
type Transfer = { at: string; connId: string; id?: string; from: string; target: string; outcome: string; step?: string; reason?: string; timings?: { totalUs: number; exportUs: number; offerRttUs: number; commitRttUs: number; routeUs: number } };
type Drain = { node: string; targetsDrained: number; moved: number; failed: number; connections: Array<{ id: string; to?: string; ok: boolean; error?: string }> };

export function registerOperatorCommands(program: Command): void {
  apiCommand(program, 'status')
    .description('this node: role, distributors and replication, XDP program, routing table, transfers, control socket')
    .action(async (o: GlobalOptions) => {
      const api = connect(o);
      const [node, stats, distribution] = await Promise.all([api.get<Node>('/v1/node'), api.get<Stats>('/v1/stats'), api.get<Distribution>('/v1/status')]);
      out(o, { node, stats, distribution }, () =>
        [
          `node ${node.name} (${node.role}) ${node.address}, cluster ${node.instance}, up ${node.uptimeSeconds} s`,
          `distributor ${distribution.active}${distribution.activeSince ? ` (active since ${new Date(distribution.activeSince).toISOString()})` : ''}; backups ${distribution.backups.join(', ') || 'none'}; takeovers by this node ${distribution.takeovers}`,
          ...distribution.streams.map((s) => `replication to ${s.backup}: seq ${s.sentSeq} sent, ${s.ackedSeq} acknowledged, lag ${s.lagEntries} entries${s.snapshotting ? ' (snapshot in progress)' : ''}`),
          distribution.replica ? `replica from ${distribution.replica.from}: seq ${distribution.replica.seq}, ${distribution.replica.synced ? 'in sync' : 'snapshot in progress'}` : '',
          node.xdp ? `XDP ${node.xdp.mode} on ${node.xdp.interface}, program id ${node.xdp.programId}` : 'XDP: not steering on this node',
          stats.routingTable ? `routing table ${stats.routingTable.entries} / ${stats.routingTable.capacity} entries` : '',
          `transfers (recent ${stats.transfers.recent}): ${stats.transfers.done} done, ${stats.transfers.failed} failed`,
          `control socket: ${stats.control.routers} routers, ${stats.control.targets} targets registered; dropped ${JSON.stringify(stats.control.dropped)}`,
          stats.xdp ? table(['xdp verdict', 'packets', 'bytes'], Object.entries(stats.xdp).map(([k, v]) => [k, v.packets, bytes(v.bytes)])) : '',
        ]
          .filter(Boolean)
          .join('\n'),
      );
    });

  apiCommand(program, 'nodes')
    .description('the cluster: nodes, reachability, targets')
    .action(async (o: GlobalOptions) => {
      const { nodes } = await connect(o).get<{ nodes: ClusterNode[] }>('/v1/nodes');
      out(o, nodes, () => table(['node', 'role', 'address', 'reachable', 'last report', 'targets', 'api'], nodes.map((n) => [n.name, n.role, n.address, n.reachable ? 'yes' : 'NO', n.lastReportMs === null ? '-' : `${n.lastReportMs} ms`, n.targets, n.api])));
    });

  apiCommand(program, 'targets')
    .description('target application instances, cluster-wide')
    .action(async (o: GlobalOptions) => {
      const { targets: list } = await connect(o).get<{ targets: Target[] }>('/v1/targets');
      out(o, list, () =>
        table(['node', 'instance', 'app', 'port', 'load', 'capacity', 'weight', 'state'], list.map((t) => [t.node, t.instance, t.app, t.port, t.load, t.capacity, t.weight, t.draining ? 'draining' : 'active'])),
      );
    });
  apiCommand(program, 'target')
    .description('set a target instance\'s weight, drain or undrain it')
    .argument('<node/instance>', 'e.g. n2/line-target')
    .option('--weight <n>', 'relative share of new connections (0–1000; 0 takes none)')
    .addOption(new Option('--drain', 'take no new connections').conflicts('undrain'))
    .option('--undrain', 'take new connections again')
    .action(async (which: string, o: GlobalOptions & { weight?: string; drain?: boolean; undrain?: boolean }) => {
      const [node, instance] = which.split('/');
      if (!node || !instance) throw new Error(`expected <node>/<instance>, got ${which}`);
      if (o.weight === undefined && !o.drain && !o.undrain) throw new Error('nothing to change: give --weight, --drain or --undrain');
      const body = { ...(o.weight !== undefined ? { weight: Number(o.weight) } : {}), ...(o.drain ? { draining: true } : {}), ...(o.undrain ? { draining: false } : {}) };
      const res = await connect(o).put<{ targets: Target[] }>(`/v1/targets/${encodeURIComponent(node)}/${encodeURIComponent(instance)}`, body);
      out(o, res, () => res.targets.map((t) => `${t.node}/${t.instance} port ${t.port}: weight ${t.weight}, ${t.draining ? 'draining' : 'active'}`).join('\n'));
    });

  apiCommand(program, 'connections')
    .description('distributor: the connection routing table; other nodes: the connections they serve')
    .option('--state <state>', 'forward, frozen, released, finished or served')
    .option('--node <node>', 'served by this node')
    .option('--client <ip>', 'from this client address')
    .option('--limit <n>', `at most n (fetched a page of up to ${MAX_PAGE} at a time)`, '100')
    .option('--all', 'every one, however many')
    .option('--cursor <cursor>', 'start where a listing before stopped (its "next")')
    .action(async (o: GlobalOptions & { state?: string; node?: string; client?: string; limit: string; all?: boolean; cursor?: string }) => {
      const want = o.all ? Infinity : Number(o.limit);
      if (!(want >= 1)) throw new Error(`--limit must be a positive number, not ${o.limit}`);
      const api = connect(o);
      const filter = { ...(o.state ? { state: o.state } : {}), ...(o.node ? { node: o.node } : {}), ...(o.client ? { client: o.client } : {}) };
      const connections: Connection[] = [];
      let total: number | undefined;
      let next = o.cursor;
      do {
        const q = new URLSearchParams({ ...filter, limit: String(Math.min(MAX_PAGE, want - connections.length)), ...(next ? { cursor: next } : {}) });
        const page = await api.get<{ total?: number; connections: Connection[]; next?: string }>(`/v1/connections?${q}`);
        connections.push(...page.connections);
        total = page.total;
        next = page.next;
      } while (next && connections.length < want);
      const res = { ...(total !== undefined ? { total } : {}), connections, ...(next ? { next } : {}) };
      out(o, res, () =>
        [
          table(['connection', 'state', 'node', 'age', 'packets', 'bytes', 'app'], connections.map((c) => [c.id, c.state, c.node, c.ageSeconds === undefined ? '-' : `${c.ageSeconds} s`, c.packets, bytes(c.bytes), c.app])),
          `${connections.length}${total !== undefined ? ` of ${total}` : ''}${next ? ` (more: --cursor ${next}, or --all)` : ''}`,
        ].join('\n'),
      );
    });

  apiCommand(program, 'transfers')
    .description('recent handoffs coordinated by this node, newest first, with step durations')
    .option('--limit <n>', 'at most n', '20')
    .action(async (o: GlobalOptions & { limit: string }) => {
      const { transfers } = await connect(o).get<{ transfers: Transfer[] }>(`/v1/transfers?limit=${encodeURIComponent(o.limit)}`);
      const us = (n?: number) => (n === undefined ? '-' : `${n}`);
      out(o, transfers, () =>
        table(
          ['at', 'connection', 'handoff id', 'from', 'to', 'outcome', 'total µs', 'export', 'offer', 'commit', 'route'],
          transfers.map((t) => [t.at, t.id ?? '-', t.connId, t.from, t.target, t.outcome === 'done' ? 'done' : `failed at ${t.step}: ${t.reason}`, us(t.timings?.totalUs), us(t.timings?.exportUs), us(t.timings?.offerRttUs), us(t.timings?.commitRttUs), us(t.timings?.routeUs)]),
        ),
      );
    });

  apiCommand(program, 'move')
    .description('move a live transferred connection to another node; the client does not notice')
    .argument('<connection>', 'its id, as `batonctl connections` shows it')
    .argument('<node>', 'the node to move it to')
    .action(async (conn: string, node: string, o: GlobalOptions) => {
      const res = await connect(o).post<{ id: string; from: string; to: string; connId: string }>(`/v1/connections/${encodeURIComponent(conn)}/transfer`, { node });
      out(o, res, () => `moved ${res.id} from ${res.from} to ${res.to} (handoff id ${res.connId})`);
    });

  apiCommand(program, 'dvipas')
    .description('the cluster\'s virtual IPs and ports')
    .action(async (o: GlobalOptions) => {
      const { dvipas } = await connect(o).get<{ dvipas: Array<{ address: string; ports: number[]; distributor: string; source: string }> }>('/v1/dvipas');
      out(o, dvipas, () => table(['dvipa', 'ports', 'distributor', 'from'], dvipas.map((d) => [d.address, d.ports.join(','), d.distributor, d.source])));
    });

  apiCommand(program, 'dvipa')
    .description('add or remove a virtual IP on every node, or move the DVIPA to another distributor')
    .argument('<action>', 'add, remove or move')
    .argument('<address>', 'the virtual IP')
    .argument('[node]', 'move: the distributor to give it to')
    .option('--ports <list>', 'add: comma-separated ports it serves')
    .option('--force', 'remove: even while transferred connections still use it')
    .action(async (action: string, address: string, node: string | undefined, o: GlobalOptions & { ports?: string; force?: boolean }) => {
      const api = connect(o);
      if (action === 'move') {
        if (!node) throw new Error('dvipa move needs the distributor to move it to, e.g. batonctl dvipa move 10.0.0.10 n1');
        type Moved = { address: string; from: string; to: string; ownEntries: number; ms: number };
        const moved = await api.post<Moved>(`/v1/dvipas/${encodeURIComponent(address)}/move`, { node });
        out(o, moved, () => `moved ${moved.address} from ${moved.from} to ${moved.to} in ${moved.ms} ms (${moved.ownEntries} connections ${moved.from} serves itself steered there by ${moved.to})`);
        return;
      }
      type FanOut = { address: string; complete: boolean; nodes: Array<{ node: string; ok: boolean; error?: string }> };
      let res: FanOut;
      if (action === 'add') {
        if (!o.ports) throw new Error('dvipa add needs --ports, e.g. --ports 80,443');
        res = await api.post<FanOut>('/v1/dvipas', { address, ports: o.ports.split(',').map(Number) });
      } else if (action === 'remove') {
        res = await api.delete<FanOut>(`/v1/dvipas/${encodeURIComponent(address)}${o.force ? '?force=true' : ''}`);
      } else throw new Error(`unknown action ${action}: add, remove or move`);
      out(o, res, () => [`${action} ${res.address}: ${res.complete ? 'applied on every node' : 'NOT applied on every node: repeat once they are back'}`, table(['node', 'result'], res.nodes.map((n) => [n.node, n.ok ? 'ok' : `FAILED: ${n.error}`]))].join('\n'));
      if (!res.complete) process.exitCode = 1;
    });

  apiCommand(program, 'drain')
    .description('drain a node: no new connections to its targets, every connection it serves moved elsewhere')
    .argument('<node>', 'the node to drain')
    .action(async (node: string, o: GlobalOptions) => {
      const res = await connect(o).post<Drain>(`/v1/nodes/${encodeURIComponent(node)}/drain`);
      out(o, res, () =>
        [
          `${res.node}: ${res.targetsDrained} target instances draining; ${res.moved} connections moved, ${res.failed} failed`,
          res.connections.length ? table(['connection', 'to', 'result'], res.connections.map((c) => [c.id, c.to, c.ok ? 'moved' : `FAILED: ${c.error}`])) : '',
        ]
          .filter(Boolean)
          .join('\n'),
      );
      if (res.failed > 0) process.exitCode = 1;
    });
}

/** Operator tokens: made here, where the operator is; only their hash goes to the nodes. */
export function registerTokenCommands(program: Command): void {
  const token = program.command('token').description('operator tokens for the REST API');
  token
    .command('new')
    .description('a new random token for an operator, and its line for the API token file of every node')
    .argument('<operator>', 'the operator\'s name, as the nodes\' logs will show it')
    .addOption(new Option('--scope <scope>', 'read: every view; admin: every change too').choices([...SCOPES]).makeOptionMandatory())
    .option('--json', 'machine-readable output')
    .action((operator: string, o: { scope: Scope; json?: boolean }) => {
      if (!OPERATOR_NAME.test(operator)) throw new Error(`operator name ${JSON.stringify(operator)}: letters, digits, . _ - (at most 63, not starting with . _ -)`);
      const t = newToken();
      const line = tokenLine({ name: operator, scope: o.scope }, t);
      if (o.json) console.log(JSON.stringify({ operator, scope: o.scope, token: t, line }, null, 2));
      else
        console.log(
          [
            `token of ${operator} (${o.scope}): give it to them, it is shown only now; they keep it in a mode 0600 file (batonctl --token-file) or BATON_API_TOKEN`,
            `  ${t}`,
            `line for api.tokenFile on every node (then restart batond there; no connection is dropped):`,
            `  ${line}`,
          ].join('\n'),
        );
    });
}

