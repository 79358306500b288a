// The Debian package (scripts/package/deb.sh, `make deb`): what an operator installs, and what the
// Vagrant box is built from. Built from this checkout into a temporary directory; its fields and
// files checked; unpacked elsewhere, its tree runs on its own: batonctl answers, libbaton loads
// through koffi with the ABI the compiled controller expects, and baton-keepalived prepares a
// distributor from a cluster file. Development dependencies are not in it.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { writeClusterConfig } from '../../../controller/config/cluster.js';
import { repoRoot } from '../../../controller/paths.js';
import { sampleConfig } from '../../helpers/config.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-deb-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('the baton .deb', () => {
  it('holds the built tree, the units and batonctl, depends on the runtime set, and runs unpacked on its own', { timeout: 120_000 }, () => {
    const deb = execFileSync(path.join(repoRoot(), 'scripts/package/deb.sh'), [path.join(tmp, 'out')], { encoding: 'utf8', timeout: 100_000 }).trim();
    expect(path.basename(deb)).toMatch(/^baton_\d+\.\d+\.\d+_[a-z0-9]+\.deb$/);
    const field = (name: string) => execFileSync('dpkg-deb', ['--field', deb, name], { encoding: 'utf8' }).trim();
    expect(field('Package')).toBe('baton');
    const depends = field('Depends').split(', ');
    for (const p of ['keepalived', 'libbpf1', 'iproute2', 'python3']) expect(depends).toContain(p);
    expect(depends.some((p) => p.startsWith('nodejs'))).toBe(false);
    const files = execFileSync('dpkg-deb', ['--contents', deb], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
    for (const f of ['./opt/baton/dist/controller/bin/batond.js', './opt/baton/build/bpf/steer.o', './opt/baton/build/native/libbaton.so', './opt/baton/node_modules/koffi/', './lib/systemd/system/batond.service', './lib/systemd/system/baton-keepalived.service', './usr/bin/batonctl', './opt/baton/scripts/provision/keepalived.sh']) {
      expect(files, f).toContain(f);
    }
    for (const dev of ['node_modules/vitest/', 'node_modules/typescript/', 'node_modules/fast-check/']) expect(files, dev).not.toContain(dev);

    const root = path.join(tmp, 'root');
    execFileSync('dpkg-deb', ['-x', deb, root]);
    const opt = path.join(root, 'opt/baton');
    const help = spawnSync(process.execPath, [path.join(opt, 'dist/controller/bin/batonctl.js'), '--help'], { encoding: 'utf8', timeout: 20_000 });
    expect(help.status, help.stderr).toBe(0);
    expect(help.stdout).toMatch(/dvipa/);
    // libbaton through koffi, from the unpacked tree's own node_modules and build/.
    const abi = spawnSync(process.execPath, ['--input-type=module', '-e', `const m = await import(${JSON.stringify(path.join(opt, 'dist/native/repair.js'))}); m.libbaton(); console.log('loaded')`], { encoding: 'utf8', timeout: 20_000 });
    expect(abi.stdout.trim(), abi.stderr).toBe('loaded');
    const config = path.join(tmp, 'cluster.json');
    writeClusterConfig(config, { ...sampleConfig(), distributors: ['n1', 'n2'], stateDir: path.join(tmp, 'state') });
    const prepared = spawnSync(process.execPath, [path.join(opt, 'dist/controller/bin/baton-keepalived.js'), '--config', config, '--node', 'n1'], { encoding: 'utf8', timeout: 20_000 });
    expect(prepared.status, prepared.stderr).toBe(0);
    expect(prepared.stdout).toMatch(/^keepalived --dont-fork /);
  });
});
