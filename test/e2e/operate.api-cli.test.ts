// Operating Baton through its REST API and batonctl (the operations issue): reads from every
// node, HTTPS checked against the cluster CA, operator tokens with scopes (a read token reads, an
// admin token changes), requests forwarded between nodes on the nodes' certificates with no token,
// precise 400s that change nothing, moving a live connection and draining a node while unmodified
// Python clients keep talking (same socket, verified bytes), Prometheus metrics, and one
// connection id in the logs of every node a connection visits.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { API_PORT, apiOperatorsFile, clusterConfigPath, labProcesses } from '../../controller/lab/cluster.js';
import { readClusterConfig, writeClusterConfig } from '../../controller/config/cluster.js';
import { startProcess } from '../../controller/lab/processes.js';
import { inClient, lineClient, readLog } from '../../controller/lab/demo.js';
import { repoRoot } from '../../controller/paths.js';
import { type As, apiCurl, labToken } from '../helpers/api.js';
import { makeCertificates } from '../helpers/certs.js';
import { useLab } from '../helpers/lab.js';

const run = promisify(execFile);
const running = useLab();

const node = (name: string) => running.lab.nodes.find((n) => n.name === name)!;

/** curl inside a node's namespace (the management network), over HTTPS, as the lab's admin operator unless `as` says otherwise. */
function api(on: string, method: string, urlPath: string, opts: { body?: string; as?: As } = {}) {
  return apiCurl(running.lab, on, urlPath, { method, ...opts });
}

/** The real CLI, finding the lab's distributor API, CA and admin token from lab.json as an operator's shell would. */
async function batonctl(...args: string[]): Promise<string> {
  const { stdout } = await run(process.execPath, [path.join(repoRoot(), 'dist/controller/bin/batonctl.js'), ...args, '--lab', running.lab.prefix, '--dir', path.dirname(running.lab.runDir)], { timeout: 60_000 });
  return stdout;
}

/** batonctl with an environment of its own (another operator's token); its exit status and output instead of a throw. */
async function batonctlAs(env: Record<string, string>, ...args: string[]): Promise<{ code: number; out: string }> {
  return run(process.execPath, [path.join(repoRoot(), 'dist/controller/bin/batonctl.js'), ...args, '--lab', running.lab.prefix, '--dir', path.dirname(running.lab.runDir)], { timeout: 60_000, env: { ...process.env, ...env } }).then(
    (r) => ({ code: 0, out: r.stdout + r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout + e.stderr }),
  );
}

/** Line-protocol clients that stay connected, probing who serves them with verified GET/PUT. */
function probingClient(user: string, seconds: number) {
  return inClient(running.lab, lineClient(running.lab, ['--user', user, '--probe-for', String(seconds), '--probe-every', '0.1']), (seconds + 30) * 1000);
}

/** Live transferred connections: an earlier test's closed ones stay RELEASED for the grace period. */
const forwarding = () => [...running.routes.entries()].filter(([, e]) => e.state === 'forward').length;

async function waitForEntries(n: number, timeoutMs = 10_000): Promise<void> {
  for (let waited = 0; forwarding() < n && waited < timeoutMs; waited += 50) await sleep(50);
  expect(forwarding()).toBeGreaterThanOrEqual(n);
}

describe('REST admin API and batonctl', () => {
  it('serves node, cluster, DVIPA, targets and stats views on every node, OpenAPI and Swagger UI', async () => {
    const n1 = await api('n1', 'GET', '/v1/node');
    expect(n1.body).toMatchObject({ name: 'n1', role: 'distributor', xdp: { mode: 'native', interface: node('n1').interface } });
    expect(n1.body.xdp.programId).toBeGreaterThan(0);
    expect((await api('n2', 'GET', '/v1/node')).body).toMatchObject({ name: 'n2', role: 'node', xdp: null });
    const nodes = (await api('n3', 'GET', '/v1/nodes')).body.nodes;
    expect(nodes.map((n: any) => [n.name, n.reachable])).toEqual([['n1', true], ['n2', true], ['n3', true]]);
    // The lab's DVIPA is dual-stack: both addresses come from the cluster file.
    expect((await api('n1', 'GET', '/v1/dvipas')).body.dvipas).toEqual([running.lab.dvipa.address, running.lab.dvipa.address6].map((address) => ({ address, ports: running.lab.dvipa.ports, distributor: 'n1', source: 'config' })));
    const targets = (await api('n1', 'GET', '/v1/targets')).body.targets;
    expect(targets.filter((t: any) => t.port === 7000).map((t: any) => t.node)).toEqual(['n2', 'n3']);
    expect((await api('n1', 'GET', '/v1/stats')).body).toMatchObject({ routingTable: { capacity: 262144 }, xdp: { steered: expect.any(Object) } });
    const openapi = (await api('n2', 'GET', '/docs/json')).body;
    expect(Object.keys(openapi.paths)).toEqual(expect.arrayContaining(['/v1/node', '/v1/connections', '/v1/connections/{id}/transfer', '/v1/nodes/{name}/drain', '/v1/targets/{node}/{instance}']));
    const ui = await api('n2', 'GET', '/docs/static/index.html');
    expect(ui.status).toBe(200);
    expect(String(ui.body)).toContain('swagger');
    // Never on the DVIPA: the API listens on the management address only.
    const onVip = await run('ip', ['netns', 'exec', running.lab.client.ns, 'curl', '-sk', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '2', `https://${running.lab.dvipa.address}:${API_PORT}/v1/node`]).catch((e) => e);
    expect(String(onVip.stdout)).toBe('000');
  });

  it('HTTPS only, checked against the cluster CA: plain HTTP gets no answer, batonctl refuses a node its CA did not sign', async () => {
    expect((await apiCurl(running.lab, 'n2', '/v1/node', { as: null })).status).toBe(200);
    expect((await apiCurl(running.lab, 'n2', '/v1/node', { as: null, scheme: 'http' })).status).toBe(0);
    const foreign = makeCertificates([]);
    try {
      const r = await batonctlAs({}, 'status', '--ca-file', foreign.caFile);
      expect(r.code).toBe(1);
      expect(r.out).toMatch(/batonctl: cannot reach https:\/\/[0-9.]+:4702: .*(self-signed|unable to verify|certificate)/i);
    } finally {
      foreign.dispose();
    }
  });

  it('scopes: /v1/node is open, reads need a token, a read token cannot change anything (403), and batonctl says so', async () => {
    for (const p of ['/v1/connections', '/v1/transfers', '/v1/targets', '/metrics']) {
      const anonymous = await api('n1', 'GET', p, { as: null });
      expect(anonymous, p).toMatchObject({ status: 401, body: { title: 'E_UNAUTHORIZED' } });
      expect((await api('n1', 'GET', p, { as: 'read' })).status, p).toBe(200);
    }
    const before = (await api('n1', 'GET', '/v1/targets', { as: 'read' })).body.targets;
    const reader = await api('n1', 'PUT', '/v1/targets/n2/line-target', { body: '{"draining":true}', as: 'read' });
    expect(reader).toMatchObject({ status: 403, body: { title: 'E_FORBIDDEN', detail: 'operator lab-read has scope read; PUT needs admin' } });
    const read = { BATON_API_TOKEN: labToken(running.lab, 'read') };
    expect(JSON.parse((await batonctlAs(read, 'targets', '--json')).out).length).toBeGreaterThan(0);
    const refused = await batonctlAs(read, 'target', 'n2/line-target', '--drain');
    expect(refused).toMatchObject({ code: 1, out: expect.stringContaining('→ 403 E_FORBIDDEN: operator lab-read has scope read') });
    expect((await api('n1', 'GET', '/v1/targets', { as: 'read' })).body.targets).toEqual(before);
    expect(readLog(running.lab, 'n1-batond').some((l) => l.msg === 'API request refused' && l.reason === 'forbidden' && l.operator === 'lab-read')).toBe(true);
  });

  it('batond refuses to start with a token file others can read (exit 78, E_CONFIG), before it touches the node', async () => {
    const open = path.join(running.lab.runDir, 'api-tokens-0644');
    fs.copyFileSync(apiOperatorsFile(running.lab), open);
    fs.chmodSync(open, 0o644);
    const config = readClusterConfig(clusterConfigPath(running.lab));
    const file = path.join(running.lab.runDir, 'cluster-open-tokens.yaml');
    writeClusterConfig(file, { ...config, api: { ...config.api, tokenFile: open } });
    const r = await run('ip', ['netns', 'exec', node('n2').ns, process.execPath, path.join(repoRoot(), 'dist/controller/bin/batond.js'), '--config', file, '--node', 'n2'], { timeout: 30_000 }).then(
      () => ({ code: 0, out: '' }),
      (e: { code: number; stdout: string }) => ({ code: e.code, out: e.stdout }),
    );
    expect(r.code).toBe(78);
    expect(r.out).toContain(`API token file ${open} is open to group or others (mode 644): chmod 600 it`);
    // The running n2 never noticed.
    expect((await api('n2', 'GET', '/v1/node', { as: null })).body).toMatchObject({ name: 'n2' });
  });

  it('mutations need the token (401), bad bodies get a precise 400, and neither changes anything', async () => {
    const before = (await api('n1', 'GET', '/v1/targets')).body.targets;
    const noToken = await api('n1', 'PUT', '/v1/targets/n2/line-target', { body: '{"draining":true}', as: null });
    expect(noToken.status).toBe(401);
    expect(noToken.type).toBe('application/problem+json;');
    expect(noToken.body).toMatchObject({ status: 401, title: 'E_UNAUTHORIZED' });
    expect((await api('n1', 'POST', '/v1/nodes/n2/drain', { as: { token: 'x'.repeat(43) } })).status).toBe(401);
    // Nested 30,000 deep, forwarded from n2 to the distributor: refused before it is parsed (it once made a 500).
    const deep = await api('n2', 'POST', '/v1/nodes/n3/drain', { body: `${'['.repeat(30_000)}${']'.repeat(30_000)}` });
    expect(deep).toMatchObject({ status: 400, body: { title: 'E_VALIDATION', detail: 'body is nested deeper than 8' } });
    const badWeight = await api('n1', 'PUT', '/v1/targets/n2/line-target', { body: '{"weight":-1}' });
    expect(badWeight).toMatchObject({ status: 400, body: { title: 'E_VALIDATION', detail: 'body/weight must be >= 0' } });
    const unknownField = await api('n1', 'PUT', '/v1/targets/n2/line-target', { body: '{"draining":true,"evil":1}' });
    expect(unknownField).toMatchObject({ status: 400, body: { detail: 'body must NOT have additional properties' } });
    const badId = await api('n1', 'POST', '/v1/connections/not-a-connection-id/transfer', { body: '{"node":"n3"}' });
    expect(badId).toMatchObject({ status: 400, body: { title: 'E_CONFIG', detail: expect.stringContaining('want <client ip>:<port>_<dvipa>:<port>') } });
    expect((await api('n1', 'POST', '/v1/connections/10.0.0.1:5_10.0.0.2:7000/transfer', { body: '{"node":"n9"}' })).status).toBe(404);
    expect((await api('n1', 'GET', '/v1/connections?limit=0')).status).toBe(400);
    expect((await api('n1', 'GET', '/v1/targets')).body.targets).toEqual(before);
  });

  it('batonctl move: a live connection goes from n2 to n3 while its client keeps exchanging verified bytes', async () => {
    const client = probingClient('alice', 4);
    await waitForEntries(1);
    const [conn] = JSON.parse(await batonctl('connections', '--state', 'forward', '--json')).connections;
    expect(conn).toMatchObject({ state: 'forward', node: 'n2' });
    expect(await batonctl('move', conn.id, 'n3')).toContain(`moved ${conn.id} from n2 to n3`);
    expect(JSON.parse(await batonctl('connections', '--client', conn.client.address, '--json')).connections.find((c: any) => c.id === conn.id)).toMatchObject({ node: 'n3' });
    const res = JSON.parse((await client).stdout);
    expect(res).toMatchObject({ ok: true, served_by: 'n2', probe_nodes: ['n2', 'n3'], probes_ok: true, clean_close: true });
    // One connection id for the whole life of the connection: in the transfer records of both
    // nodes that handed it off (batond logs a handoff only at debug) and in the applications' logs.
    const moved = readLog(running.lab, 'n2-line-target').find((l) => l.event === 'handed-off' && l.target === 'n3')!;
    for (const node of ['n1', 'n2']) {
      expect((await api(node, 'GET', '/v1/transfers')).body.transfers.some((t: { connId: string }) => t.connId === moved.connId), `${node}'s transfers`).toBe(true);
    }
    for (const log of ['n2-line-target', 'n3-line-target']) {
      expect(readLog(running.lab, log).some((l) => l.connId === moved.connId), log).toBe(true);
    }
    expect((await api('n2', 'GET', '/v1/transfers')).body.transfers[0]).toMatchObject({ connId: moved.connId, id: conn.id, target: 'n3', outcome: 'done' });
    // The move was asked of n1 and forwarded to n2, which accepted it on n1's certificate: no token
    // crossed between the nodes, and n2's log still names the operator.
    const mutation = readLog(running.lab, 'n2-batond').find((l) => l.msg === 'API mutation' && String(l.url).startsWith('/v1/connections/'))!;
    expect(mutation).toMatchObject({ method: 'POST', status: 200, forwardedBy: 'n1', operator: 'lab-admin', from: node('n1').address });
  });

  it('batonctl drain: every connection on n2 moves to n3, its targets stop taking new ones, per-connection report', async () => {
    const clients = ['alice', 'alice', 'alice', 'bob'].map((u) => probingClient(u, 5));
    await waitForEntries(4);
    const report = JSON.parse(await batonctl('drain', 'n2', '--json'));
    expect(report).toMatchObject({ node: 'n2', targetsDrained: 2, moved: 3, failed: 0 });
    expect(report.connections.every((c: any) => c.ok && c.to === 'n3')).toBe(true);
    const targets = JSON.parse(await batonctl('targets', '--json'));
    expect(targets.filter((t: any) => t.node === 'n2').every((t: any) => t.draining)).toBe(true);
    // A new HTTP client of n2's user now lands on n3: the router skips drained instances.
    const fresh = await inClient(running.lab, ['curl', '-sS', '--max-time', '10', '--digest', '-u', 'alice:wonderland', '-D', '-', '-o', '/dev/null', `http://${running.lab.dvipa.address}/`]);
    expect(fresh.stdout).toMatch(/^x-served-by: n3\r?$/im);
    for (const r of await Promise.all(clients)) {
      const res = JSON.parse(r.stdout);
      expect(res).toMatchObject({ ok: true, probes_ok: true });
      expect(res.probe_nodes.at(-1)).toBe('n3');
    }
    expect(await batonctl('target', 'n2/line-target', '--undrain')).toContain('n2/line-target port 7000: weight 100, active');
  });

  it('/metrics: handoffs by outcome, step histograms, table size and capacity, XDP verdicts, control datagrams', async () => {
    const text = String((await api('n1', 'GET', '/metrics', { as: 'read' })).body);
    expect(text).toMatch(/^baton_handoffs_total\{outcome="done",step="none",node="n1"\} [1-9]/m);
    for (const step of ['export', 'offer', 'import', 'freeze', 'delta', 'commit', 'route', 'total']) {
      expect(text).toMatch(new RegExp(`^baton_handoff_step_seconds_count\\{node="n1",step="${step}"\\} [1-9]`, 'm'));
    }
    expect(text).toMatch(/^baton_routing_table_capacity\{node="n1"\} 262144$/m);
    expect(text).toMatch(/^baton_routing_table_entries\{node="n1"\} \d+$/m);
    expect(text).toMatch(/^baton_xdp_packets_total\{reason="steered",node="n1"\} [1-9]/m);
    expect(text).toMatch(/^baton_control_datagrams_total\{type="heartbeat",node="n1"\} [1-9]/m);
    expect(text).toMatch(/^baton_process_resident_memory_bytes\{node="n1"\} [1-9]/m);
    // Moves are counted where they happen: on the node that served the connection.
    expect(String((await api('n2', 'GET', '/metrics', { as: 'read' })).body)).toMatch(/^baton_operator_moves_total\{outcome="done",node="n2"\} [1-9]/m);
  });
});

describe('DVIPAs added and removed through the API', () => {
  const vip2 = '10.203.0.20';
  const holds = async (name: string) => (await run('ip', ['netns', 'exec', node(name).ns, 'ip', '-4', '-o', 'address', 'show', 'dev', 'lo'])).stdout.includes(`${vip2}/32`);

  it('batonctl dvipa add: every node holds it, a router on it hands connections off; remove is refused while used, then done', async () => {
    const added = JSON.parse(await batonctl('dvipa', 'add', vip2, '--ports', '7000', '--json'));
    expect(added).toMatchObject({ address: vip2, complete: true });
    expect(added.nodes.map((n: any) => n.node).sort()).toEqual(['n1', 'n2', 'n3']);
    for (const n of ['n1', 'n2', 'n3']) expect(await holds(n), n).toBe(true);
    expect(JSON.parse(await batonctl('dvipas', '--json')).map((d: any) => [d.address, d.source])).toEqual([[running.lab.dvipa.address, 'config'], [running.lab.dvipa.address6, 'config'], [vip2, 'api']]);

    // A second routing application, on the new address: connections to it are handed off like any.
    const spec = labProcesses(running.lab).find((p) => p.name === 'n1-line-router')!;
    const argv = spec.argv.map((a, i) => (spec.argv[i - 1] === '--dvipa' ? vip2 : a));
    await startProcess({ ...spec, name: 'n1-line-router-vip2', argv }, { runDir: running.lab.runDir, lab: running.lab.prefix });
    for (let waited = 0; !readLog(running.lab, 'n1-line-router-vip2').some((l) => l.msg === 'line router listening') && waited < 10_000; waited += 100) await sleep(100);
    const client = inClient(running.lab, [...lineClient(running.lab, ['--user', 'alice', '--probe-for', '2', '--get', '1000000']), '--host', vip2], 30_000);
    for (let waited = 0; !JSON.parse(await batonctl('connections', '--json')).connections.some((c: any) => c.vip.address === vip2) && waited < 10_000; waited += 100) await sleep(100);

    // Still used: the distributor refuses, and nothing changes anywhere.
    const refused = await api('n1', 'DELETE', `/v1/dvipas/${vip2}`);
    expect(refused).toMatchObject({ status: 409, body: { detail: expect.stringContaining(`still use DVIPA ${vip2}`) } });
    for (const n of ['n1', 'n2', 'n3']) expect(await holds(n), n).toBe(true);

    expect(JSON.parse((await client).stdout)).toMatchObject({ ok: true, served_by: 'n2', get_ok: true, probes_ok: true });
    await sleep(3500); // the closed connection's entry leaves after the release grace
    expect(JSON.parse(await batonctl('dvipa', 'remove', vip2, '--json'))).toMatchObject({ address: vip2, complete: true });
    for (const n of ['n1', 'n2', 'n3']) expect(await holds(n), n).toBe(false);
    // The config's DVIPA cannot be removed through the API.
    expect((await api('n2', 'DELETE', `/v1/dvipas/${running.lab.dvipa.address}`)).status).toBe(409);
  });
});
