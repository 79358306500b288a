// DVIPAs added through the API in a cluster with a backup distributor. Every node holds such an
// address on lo, where it answers neither ARP (arp_ignore=1 on every node once keepalived decides)
// nor neighbour solicitations (only addresses on the interface asked are answered): keepalived,
// which holds the cluster file's DVIPA on the active distributor's interface, must hold these too.
// batond rewrites its distributor's keepalived.conf and reloads it when they change
// (ha/keepalived-start.ts). Clients reach an added IPv4 and IPv6 DVIPA at n1, then, n1 dead, at n2;
// removing one leaves n2 the active distributor.
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { keepalivedPaths } from '../../../controller/ha/keepalived.js';
import { apiTokenFile, labCaFile } from '../../../controller/lab/cluster.js';
import { inClient, readLog } from '../../../controller/lab/demo.js';
import { killNode } from '../../../controller/lab/lab.js';
import { repoRoot } from '../../../controller/paths.js';
import { useLab } from '../../helpers/lab.js';
import { until } from '../../helpers/wait.js';

const run = promisify(execFile);
const running = useLab({ backup: true });
const ACTIVE = "active distributor: the routing table is this node's";
const PORT = 7100;
/** From the lab's ranges for added DVIPAs (docs/lab.md). */
const ADDED = ['10.203.0.20', 'fd62:6174:6f6e::1:20'];

// Greets every connection with the node's name, on one address.
const GREETER = String.raw`
import socket, sys
name, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port)); s.listen(8); print('listening', flush=True)
while True:
    c, _ = s.accept(); c.sendall((name + '\n').encode()); c.close()
`;
// Connects to each address in turn: its greeting, or the error.
const ASK = String.raw`
import json, socket, sys
out = {}
for addr in sys.argv[2:]:
    try:
        c = socket.create_connection((addr, int(sys.argv[1])), timeout=3); out[addr] = c.recv(64).decode().strip(); c.close()
    except OSError as e:
        out[addr] = type(e).__name__
print(json.dumps(out))
`;

const greeters: ChildProcess[] = [];
afterAll(() => greeters.forEach((p) => p.kill('SIGKILL')));

async function greet(node: string, address: string): Promise<void> {
  const ns = running.lab.nodes.find((n) => n.name === node)!.ns;
  const p = spawn('ip', ['netns', 'exec', ns, 'python3', '-u', '-c', GREETER, node, address, String(PORT)], { stdio: ['ignore', 'pipe', 'inherit'] });
  greeters.push(p);
  await new Promise<void>((resolve, reject) => {
    p.once('exit', (code) => reject(new Error(`greeter on ${node} ${address} exited with ${code}`)));
    p.stdout!.once('data', () => resolve());
  });
}

async function ask(): Promise<Record<string, string>> {
  const r = await inClient(running.lab, ['python3', '-c', ASK, String(PORT), ...ADDED], 20_000);
  return JSON.parse(r.stdout) as Record<string, string>;
}

/** Who greets at each added address, once every one is node or 10 s have passed. */
async function answered(node: string): Promise<Record<string, string>> {
  let last = await ask();
  for (const deadline = Date.now() + 10_000; !Object.values(last).every((g) => g === node) && Date.now() < deadline; last = await ask()) await new Promise((r) => setTimeout(r, 200));
  return last;
}

describe('DVIPAs added through the API, with a backup distributor', () => {
  it('are held and announced by the active distributor\'s keepalived: reached at n1, then at n2 once n1 died; removed without a role change', { timeout: 150_000 }, async () => {
    const { lab } = running;
    await until('n1 active', () => readLog(lab, 'n1-batond').some((l) => l.msg === ACTIVE), 10_000, 50);
    for (const address of ADDED) {
      const { stdout } = await run(process.execPath, [path.join(repoRoot(), 'dist/controller/bin/batonctl.js'), 'dvipa', 'add', address, '--ports', String(PORT), '--json', '--lab', lab.prefix, '--dir', path.dirname(lab.runDir)], { timeout: 30_000 });
      expect(JSON.parse(stdout)).toMatchObject({ address, complete: true });
    }
    // Both distributors' keepalived.conf name them (each batond rewrote its own).
    for (const node of ['n1', 'n2']) {
      const conf = fs.readFileSync(keepalivedPaths(lab.runDir, lab.prefix, node).config, 'utf8');
      for (const address of ADDED) expect(conf, node).toContain(`${address}/${address.includes(':') ? 128 : 32} dev`);
    }
    for (const node of ['n1', 'n2']) for (const address of ADDED) await greet(node, address);
    expect(await answered('n1')).toEqual(Object.fromEntries(ADDED.map((a) => [a, 'n1'])));

    await killNode(lab, 'n1');
    await until('n2 active', () => readLog(lab, 'n2-batond').some((l) => l.msg === ACTIVE), 10_000, 20);
    expect(await answered('n2')).toEqual(Object.fromEntries(ADDED.map((a) => [a, 'n2'])));

    // The IPv6 one removed again (n2 active; the address batond could take off an interface):
    // keepalived takes it off n2's interface on its reload and keeps n2 MASTER, batond leaving
    // keepalived's copy alone. Each request waits for dead n1 until its forwarding times out.
    const n2 = lab.nodes.find((n) => n.name === 'n2')!;
    const standbys = () => readLog(lab, 'n2-batond').filter((l) => /standby distributor/.test(String(l.msg))).length;
    const before = standbys();
    for (const address of ADDED.filter((a) => a.includes(':'))) {
      // n1 is dead: batonctl says the change is not complete (exit 1), every node but n1 applied it.
      const { stdout } = await run(process.execPath, [path.join(repoRoot(), 'dist/controller/bin/batonctl.js'), 'dvipa', 'remove', address, '--json',
        '--api', `https://${n2.address}:4702`, '--netns', n2.ns, '--ca-file', labCaFile(lab), '--token-file', apiTokenFile(lab)], { timeout: 60_000 }).catch((err: { code?: number; stdout?: string }) => {
        if (err.code !== 1) throw err;
        return { stdout: err.stdout ?? '' };
      });
      expect((JSON.parse(stdout) as { nodes: Array<{ node: string; ok: boolean }> }).nodes.filter((n) => n.ok).map((n) => n.node).sort()).toEqual(['n2', 'n3']);
    }
    const onInterface = () => execFileSync('ip', ['-n', n2.ns, '-br', 'address', 'show', 'dev', n2.interface], { encoding: 'utf8' });
    await until(() => `off n2's interface (${onInterface().trim()})`, () => !onInterface().includes(`${ADDED[1]}/`), 5000, 50);
    expect(onInterface()).toContain(`${ADDED[0]}/32`);
    await new Promise((r) => setTimeout(r, 1000));
    expect(standbys()).toBe(before);
  });
});
