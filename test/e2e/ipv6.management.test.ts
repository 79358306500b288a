// A cluster managed over IPv6: the cluster file gives every node an IPv6 management address, so the
// mutual-TLS peer links (offers, accepts, target reports), the REST API, and the requests one node's
// API forwards to another all run over IPv6. Clients still reach the dual-stack DVIPA over both families.
import { execFile, execFileSync } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { apiTokenFile, API_PORT, clusterConfigPath, labCaFile } from '../../controller/lab/cluster.js';
import { curlDigest, inClient } from '../../controller/lab/demo.js';
import { readClusterConfig } from '../../controller/config/cluster.js';
import { repoRoot } from '../../controller/paths.js';
import { useLab } from '../helpers/lab.js';

const run = promisify(execFile);
const running = useLab({ management: 6 });

/** batonctl against one node's API, by its IPv6 address, from inside its namespace. */
async function batonctl(node: string, ...args: string[]): Promise<string> {
  const { lab } = running;
  const n = lab.nodes.find((x) => x.name === node)!;
  const { stdout } = await run(process.execPath, [path.join(repoRoot(), 'dist/controller/bin/batonctl.js'), ...args,
    '--api', `https://[${n.address6}]:${API_PORT}`, '--netns', n.ns, '--ca-file', labCaFile(lab), '--token-file', apiTokenFile(lab)], { timeout: 30_000 });
  return stdout;
}

describe('a cluster managed over IPv6', () => {
  it('the cluster file names the nodes by their IPv6 addresses, and batond listens there', () => {
    const { lab } = running;
    const config = readClusterConfig(clusterConfigPath(lab));
    expect(config.nodes.map((n) => n.address)).toEqual(lab.nodes.map((n) => n.address6));
    for (const n of lab.nodes) {
      const listening = execFileSync('ip', ['netns', 'exec', n.ns, 'ss', '-Htln'], { encoding: 'utf8' });
      expect(listening, n.name).toContain(`[${n.address6}]:${API_PORT}`);
    }
  });

  it('handoffs cross the IPv6 peer links: curl over IPv4 and over IPv6 is served by n2', async () => {
    const { lab } = running;
    for (const family of [4, 6] as const) {
      const r = await inClient(lab, curlDigest(lab, 'alice', 'wonderland', ['/'], family));
      expect(r.stdout, `IPv${family}`).toContain('hello alice, served by n2');
    }
  });

  it('the REST API over IPv6: every node reachable, and an IPv6 DVIPA added through n2 is forwarded to the distributor and applied on every node', async () => {
    const { lab } = running;
    const nodes = JSON.parse(await batonctl('n3', 'nodes', '--json')) as Array<{ name: string; reachable: boolean; api: string }>;
    expect(nodes).toHaveLength(3);
    for (const n of nodes) {
      expect(n.reachable, n.name).toBe(true);
      expect(n.api).toBe(`https://[${lab.nodes.find((x) => x.name === n.name)!.address6}]:${API_PORT}`);
    }
    const extra = 'fd62:6174:6f6e::1:5';
    const added = JSON.parse(await batonctl('n2', 'dvipa', 'add', extra, '--ports', '7100', '--json')) as { address: string; complete: boolean; nodes: Array<{ node: string; ok: boolean }> };
    expect(added).toMatchObject({ address: extra, complete: true });
    expect(added.nodes.map((n) => n.ok)).toEqual([true, true, true]);
    for (const n of lab.nodes) expect(execFileSync('ip', ['-n', n.ns, '-6', 'address', 'show', 'dev', 'lo'], { encoding: 'utf8' }), n.name).toContain(`${extra}/128`);
    const removed = JSON.parse(await batonctl('n3', 'dvipa', 'remove', extra, '--json')) as { complete: boolean };
    expect(removed.complete).toBe(true);
    for (const n of lab.nodes) expect(execFileSync('ip', ['-n', n.ns, '-6', 'address', 'show', 'dev', 'lo'], { encoding: 'utf8' }), n.name).not.toContain(`${extra}/128`);
  });
});
