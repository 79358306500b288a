// batonctl's operator commands: each is one REST API call (or two) and a table, or --json for
// scripts. Which API: --api, else the namespace lab's distributor when a lab is up (then the
// command runs inside the distributor's network namespace, where its management address is).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { type Command, Option } from 'commander';
import { readLabDescription } from '../lab/description.js';
import { API_PORT, apiTokenFile } from '../lab/cluster.js';
import { repoRoot } from '../paths.js';
import { ApiClient, readToken } from './api-client.js';
import { bytes, table } from './table.js';

interface GlobalOptions {
  api?: string;
  tokenFile?: string;
  netns?: string;
  lab: string;
  dir: string;
  json?: boolean;
}

const NETNS_ENV = 'BATON_CLI_NETNS';

/** The API to talk to, entering its network namespace first when it lives in one (the lab). */
function connect(o: GlobalOptions): ApiClient {
  let base = o.api ?? process.env.BATON_API;
  let netns = o.netns;
  let tokenFile = o.tokenFile;
  if (!base) {
    const labFile = path.join(o.dir, 'lab.json');
    if (!fs.existsSync(labFile)) throw new Error(`no API given: use --api http://<node address>:<port> (or BATON_API), or start the lab (make lab-up)`);
    const lab = readLabDescription(labFile);
    if (lab.prefix !== o.lab) throw new Error(`${labFile} describes lab ${lab.prefix}, not ${o.lab}: pass --lab ${lab.prefix}`);
    const distributor = lab.nodes.find((n) => n.name === lab.distributor)!;
    base = `http://${distributor.address}:${API_PORT}`;
    netns ??= distributor.ns;
    tokenFile ??= apiTokenFile(lab);
  }
  if (netns && process.env[NETNS_ENV] !== netns) {
    const r = spawnSync('nsenter', [`--net=/run/netns/${netns}`, '--', process.execPath, ...process.argv.slice(1)], {
      stdio: 'inherit',
      env: { ...process.env, [NETNS_ENV]: netns, BATON_API: base, ...(tokenFile && fs.existsSync(tokenFile) ? { BATON_API_TOKEN: fs.readFileSync(tokenFile, 'utf8').trim() } : {}) },
    });
    process.exit(r.status ?? 1);
  }
  return new ApiClient({ base, token: readToken({ tokenFile: tokenFile && fs.existsSync(tokenFile) ? tokenFile : undefined }) });
}

function out(o: GlobalOptions, value: unknown, human: () => string): void {
  console.log(o.json ? JSON.stringify(value, null, 2) : human());
}

/** Every operator command takes the same options to find the API. */
function apiCommand(parent: Command, name: string): Command {
  return parent
    .command(name)
    .option('--api <url>', 'the REST API of any node, e.g. http://10.0.0.11:4702 (env BATON_API)')
    .option('--token-file <file>', 'bearer token for changes (env BATON_API_TOKEN)')
    .option('--netns <name>', 'network namespace the API is reachable from')
    .option('--lab <prefix>', 'without --api: the namespace lab with this prefix', 'baton')
    .option('--dir <dir>', 'without --api: where the lab keeps lab.json', path.join(repoRoot(), 'lab'))
    .option('--json', 'machine-readable output');
}

type Node = { name: string; id: number; address: string; role: string; instance: string; uptimeSeconds: number; xdp: { mode: string; programId: number; interface: string } | null };
type Stats = { xdp: Record<string, { packets: number; bytes: number }> | null; routingTable: { entries: number; capacity: number } | null; transfers: { recent: number; done: number; failed: number }; control: { routers: number; targets: number; dropped: Record<string, number> }; targets: number };
type ClusterNode = { name: string; address: string; role: string; reachable: boolean; lastReportMs: number | null; targets: number; api: string };
type Target = { node: string; app: string; instance: string; port: number; capacity: number; load: number; weight: number; draining: boolean };
type Connection = { id: string; state: string; node: string; packets?: number; bytes?: number; ageSeconds?: number; app?: string };
type Transfer = { at: string; connId: string; id?: string; from: string; target: string; outcome: string; step?: string; reason?: string; timings?: { totalUs: number; exportUs: number; offerRttUs: number; commitRttUs: number; routeUs: number } };
type Drain = { node: string; targetsDrained: number; moved: number; failed: number; connections: Array<{ id: string; to?: string; ok: boolean; error?: string }> };

export function registerOperatorCommands(program: Command): void {
  apiCommand(program, 'status')
    .description('this node: role, XDP program, routing table, transfers, control socket')
    .action(async (o: GlobalOptions) => {
      const api = connect(o);
      const [node, stats] = await Promise.all([api.get<Node>('/v1/node'), api.get<Stats>('/v1/stats')]);
      out(o, { node, stats }, () =>
        [
          `node ${node.name} (${node.role}) ${node.address}, cluster ${node.instance}, up ${node.uptimeSeconds} s`,
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
    .option('--state <state>', 'forward, frozen, released or served')
    .option('--node <node>', 'served by this node')
    .option('--client <ip>', 'from this client address')
    .option('--limit <n>', 'at most n', '100')
    .option('--offset <n>', 'skip the first n', '0')
    .action(async (o: GlobalOptions & { state?: string; node?: string; client?: string; limit: string; offset: string }) => {
      const q = new URLSearchParams({ limit: o.limit, offset: o.offset, ...(o.state ? { state: o.state } : {}), ...(o.node ? { node: o.node } : {}), ...(o.client ? { client: o.client } : {}) });
      const res = await connect(o).get<{ total: number; offset: number; connections: Connection[] }>(`/v1/connections?${q}`);
      out(o, res, () =>
        [
          table(['connection', 'state', 'node', 'age', 'packets', 'bytes', 'app'], res.connections.map((c) => [c.id, c.state, c.node, c.ageSeconds === undefined ? '-' : `${c.ageSeconds} s`, c.packets, bytes(c.bytes), c.app])),
          `${res.connections.length} of ${res.total} (offset ${res.offset})`,
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
          ['at', 'connection', 'conn id', 'from', 'to', 'outcome', 'total µs', 'export', 'offer', 'commit', 'route'],
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
      out(o, res, () => `moved ${res.id} from ${res.from} to ${res.to} (conn id ${res.connId})`);
    });

  apiCommand(program, 'dvipas')
    .description('the cluster\'s virtual IPs and ports')
    .action(async (o: GlobalOptions) => {
      const { dvipas } = await connect(o).get<{ dvipas: Array<{ address: string; ports: number[]; distributor: string; source: string }> }>('/v1/dvipas');
      out(o, dvipas, () => table(['dvipa', 'ports', 'distributor', 'from'], dvipas.map((d) => [d.address, d.ports.join(','), d.distributor, d.source])));
    });

  apiCommand(program, 'dvipa')
    .description('add or remove a virtual IP on every node')
    .argument('<action>', 'add or remove')
    .argument('<address>', 'the virtual IP')
    .option('--ports <list>', 'add: comma-separated ports it serves')
    .option('--force', 'remove: even while transferred connections still use it')
    .action(async (action: string, address: string, o: GlobalOptions & { ports?: string; force?: boolean }) => {
      const api = connect(o);
      type FanOut = { address: string; complete: boolean; nodes: Array<{ node: string; ok: boolean; error?: string }> };
      let res: FanOut;
      if (action === 'add') {
        if (!o.ports) throw new Error('dvipa add needs --ports, e.g. --ports 80,443');
        res = await api.post<FanOut>('/v1/dvipas', { address, ports: o.ports.split(',').map(Number) });
      } else if (action === 'remove') {
        res = await api.delete<FanOut>(`/v1/dvipas/${encodeURIComponent(address)}${o.force ? '?force=true' : ''}`);
      } else throw new Error(`unknown action ${action}: add or remove`);
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
