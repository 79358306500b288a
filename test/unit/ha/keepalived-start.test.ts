// baton-keepalived (controller/bin/baton-keepalived.ts over ha/keepalived-start.ts), the one way
// keepalived is started, by the lab and by deploy/systemd/baton-keepalived.service: from the
// cluster file it writes the distributor's keepalived.conf into stateDir, creates the notify FIFO
// root's and 0600, clears pidfiles a killed keepalived left, and prints the command line a shell
// then execs. A node that must run no keepalived is refused with 78 (not restarted by systemd).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dvipaStateFile } from '../../../controller/agent/dvipa-set.js';
import { parseClusterConfig, writeClusterConfig } from '../../../controller/config/cluster.js';
import { keepalivedArgv, keepalivedPaths } from '../../../controller/ha/keepalived.js';
import { reloadKeepalived } from '../../../controller/ha/keepalived-start.js';
import { repoRoot } from '../../../controller/paths.js';
import { sampleConfig } from '../../helpers/config.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-keepalived-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** The built command, as the unit runs it. */
function prepare(config: object, node: string) {
  const file = path.join(tmp, `cluster-${node}-${Math.random().toString(16).slice(2)}.json`);
  writeClusterConfig(file, config as ReturnType<typeof sampleConfig>);
  return spawnSync(process.execPath, [path.join(repoRoot(), 'dist/controller/bin/baton-keepalived.js'), '--config', file, '--node', node], { encoding: 'utf8', timeout: 20_000 });
}

describe('baton-keepalived', () => {
  // Not created here: on a fresh machine nobody has made it yet (the first real VM's batond failed on that).
  const stateDir = path.join(tmp, 'state', 'baton');
  const cluster = { ...sampleConfig(), instance: 'prod', distributors: ['n1', 'n2'], stateDir };

  it('writes the config, the FIFO (0600) and clears stale pidfiles, then prints the argv a shell execs', () => {
    const files = keepalivedPaths(stateDir, 'prod', 'n2');
    expect(fs.existsSync(stateDir)).toBe(false);
    const first = prepare(cluster, 'n2');
    expect(first.status, first.stderr).toBe(0);
    expect(fs.statSync(stateDir).mode & 0o777).toBe(0o755);
    // A pidfile naming no keepalived (this test's own pid is node's): keepalived would refuse to start.
    fs.writeFileSync(files.vrrpPidFile, `${process.pid}\n`);
    const r = prepare(cluster, 'n2');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim().split(' ')).toEqual(keepalivedArgv(files));
    const conf = fs.readFileSync(files.config, 'utf8');
    expect(conf).toContain('priority 175');
    expect(conf).toContain(`notify_fifo ${files.notifyFifo}`);
    expect(conf).toContain(`file ${files.trackFile}`);
    const fifo = fs.lstatSync(files.notifyFifo);
    expect(fifo.isFIFO()).toBe(true);
    expect(fifo.mode & 0o777).toBe(0o600);
    expect(fs.existsSync(files.vrrpPidFile)).toBe(false);
    // Again: the same files, the FIFO kept.
    expect(prepare(cluster, 'n2').status).toBe(0);
    expect(fs.lstatSync(files.notifyFifo).ino).toBe(fifo.ino);
  });

  it('refuses with 78 a node that is not a distributor, any node of a one-distributor cluster, and a FIFO others could write', () => {
    const notOne = prepare(cluster, 'n9');
    expect(notOne.status).toBe(78);
    expect(notOne.stderr).toMatch(/n9/);
    const alone = prepare({ ...cluster, distributors: ['n1'] }, 'n1');
    expect(alone.status).toBe(78);
    expect(alone.stderr).toMatch(/one distributor \(n1\).*runs no keepalived/);
    const files = keepalivedPaths(stateDir, 'prod', 'n1');
    fs.rmSync(files.notifyFifo, { force: true });
    fs.writeFileSync(files.notifyFifo, '');
    const notFifo = prepare(cluster, 'n1');
    expect(notFifo.status).not.toBe(0);
    expect(notFifo.stderr).toMatch(/regular file/);
    expect(notFifo.stdout).toBe('');
  });

  it('holds the DVIPAs batond keeps as added through the API; reloadKeepalived rewrites the file and signals only a running keepalived', () => {
    const files = keepalivedPaths(stateDir, 'prod', 'n2');
    const added = [{ address: '10.203.0.20', ports: [7000] }, { address: '2001:db8::20', ports: [443] }];
    fs.writeFileSync(dvipaStateFile(stateDir, 'prod', 'n2'), JSON.stringify({ version: 1, added }));
    const r = prepare(cluster, 'n2');
    expect(r.status, r.stderr).toBe(0);
    const excluded = (text: string) => /virtual_ipaddress_excluded \{\n([\s\S]*?)\n {2}\}/.exec(text)?.[1]?.trim().split(/\n\s*/);
    expect(excluded(fs.readFileSync(files.config, 'utf8'))).toEqual(['10.203.0.20/32 dev eth0', '2001:db8::20/128 dev eth0']);
    // A state file that is not batond's stops the start, saying why.
    fs.writeFileSync(dvipaStateFile(stateDir, 'prod', 'n2'), '{"version":1,"added":[{"address":"10.0.0.1 dev lo","ports":[1]}]}');
    const bad = prepare(cluster, 'n2');
    expect(bad.status).toBe(78);
    expect(bad.stderr).toMatch(/DVIPA state .* does not match its schema/);
    fs.rmSync(dvipaStateFile(stateDir, 'prod', 'n2'));
    // No keepalived runs here: the file changes, nobody is signalled.
    const config = parseClusterConfig(cluster);
    expect(reloadKeepalived(config, 'n2', stateDir, ['10.203.0.21'])).toBe(false);
    expect(excluded(fs.readFileSync(files.config, 'utf8'))).toEqual(['10.203.0.21/32 dev eth0']);
    expect(reloadKeepalived(config, 'n2', stateDir, [])).toBe(false);
    expect(fs.readFileSync(files.config, 'utf8')).not.toContain('virtual_ipaddress_excluded');
  });
});
