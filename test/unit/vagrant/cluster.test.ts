// vagrant/cluster.yaml is static: nothing generates it, so nothing but this test notices when it
// stops matching the schema, the Vagrantfile that reads it, or the systemd unit batond runs under.
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { readClusterConfig } from '../../../controller/config/cluster.js';
import { repoRoot } from '../../../controller/paths.js';

const configPath = path.join(repoRoot(), 'vagrant', 'cluster.yaml');
const vagrantfile = fs.readFileSync(path.join(repoRoot(), 'vagrant', 'Vagrantfile'), 'utf8');

function rubyConstant(name: string): string {
  const m = new RegExp(`^${name} = "?([^"\\n]+)"?$`, 'm').exec(vagrantfile);
  if (!m) throw new Error(`Vagrantfile defines no ${name}`);
  return m[1]!;
}

const ipv4ToInt = (a: string) => a.split('.').reduce((n, octet) => n * 256 + Number(octet), 0) >>> 0;
const maskOf = (length: number) => (length === 0 ? 0 : (0xffffffff << (32 - length)) >>> 0);
const dotted = (n: number) => [24, 16, 8, 0].map((shift) => (n >>> shift) & 255).join('.');

describe('vagrant/cluster.yaml', () => {
  it('is a valid cluster config', () => {
    expect(() => readClusterConfig(configPath)).not.toThrow();
  });

  it('describes the Vagrant topology: n1 distributes, n2 is its backup, n2 and n3 serve; each distributor provisions keepalived', () => {
    const config = readClusterConfig(configPath);
    expect(config.nodes.map((n) => n.name)).toEqual(['n1', 'n2', 'n3']);
    expect(config.distributors).toEqual(['n1', 'n2']);
    expect(fs.readFileSync(path.join(path.dirname(configPath), 'Vagrantfile'), 'utf8')).toContain('#{PROVISION}/keepalived.sh #{name}');
  });

  it('puts the DVIPA, every node and the Vagrantfile\'s client in one subnet: XDP_TX only reaches the same L2 segment', () => {
    const config = readClusterConfig(configPath);
    const mask = maskOf(Number(rubyConstant('PREFIX_LENGTH')));
    expect(rubyConstant('NETMASK')).toBe(dotted(mask));
    const network = (a: string) => (ipv4ToInt(a) & mask) >>> 0;
    const addresses = [...config.dvipa.addresses, rubyConstant('CLIENT_ADDRESS'), ...config.nodes.map((n) => n.address)];
    expect(new Set(addresses.map(network)).size).toBe(1);
    expect(new Set(addresses).size).toBe(addresses.length);
  });

  it('gives every node a unicast MAC (a provider refuses a multicast one for a NIC)', () => {
    for (const n of readClusterConfig(configPath).nodes) {
      expect(parseInt(n.mac.slice(0, 2), 16) & 1, `${n.name} ${n.mac}`).toBe(0);
    }
  });

  it('keeps what batond writes outside the paths its systemd unit makes read-only', () => {
    const unit = fs.readFileSync(path.join(repoRoot(), 'deploy', 'systemd', 'batond.service'), 'utf8');
    expect(unit).toMatch(/^ProtectSystem=full$/m);
    // ProtectSystem=full: /usr, /boot, /efi and /etc are read-only for the service.
    const readOnly = /^\/(usr|boot|efi|etc)\//;
    for (const n of readClusterConfig(configPath).nodes) {
      expect(n.agentSocket, n.name).not.toMatch(readOnly);
      expect(n.controlSecretFile, n.name).not.toMatch(readOnly);
    }
  });

  // BATON_BOX=local: the Vagrantfile writes the file the nodes get (native XDP; under emulation,
  // VRRP adverts every second). Loading the Vagrantfile writes it; validate loads it, no VM made.
  it.each([
    ['qemu', 1000],
    ['kvm', undefined],
  ])('BATON_BOX=local, libvirt driver %s: the generated cluster file is valid, native XDP, advertMs %s', (driver, advertMs) => {
    const generated = path.join(repoRoot(), 'vagrant', '.vagrant', 'cluster-local.yaml');
    fs.rmSync(generated, { force: true });
    execFileSync('vagrant', ['validate', '--ignore-provider'], {
      cwd: path.join(repoRoot(), 'vagrant'),
      env: { ...process.env, BATON_BOX: 'local', BATON_LIBVIRT_DRIVER: driver, VAGRANT_CHECKPOINT_DISABLE: '1' },
      stdio: 'pipe',
      timeout: 60_000,
    });
    const config = readClusterConfig(generated);
    expect(config.xdpMode).toBe('native');
    expect(config.vrrp?.advertMs).toBe(advertMs);
    expect(config.nodes).toEqual(readClusterConfig(configPath).nodes);
  }, 90_000);
});
