import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { sampleConfig } from '../../helpers/config.js';
import { type ClusterConfig, MAX_CONFIG_BYTES, parseClusterConfig, parseClusterConfigText, readClusterConfig, writeClusterConfig } from '../../../controller/config/cluster.js';

const good = sampleConfig;

describe('cluster config', () => {
  it('accepts a valid config', () => {
    expect(parseClusterConfig(good())).toEqual(good());
  });

  it.each([
    ['a distributor that is not a node', (c: any) => (c.distributors = ['n1', 'n9']), /\/distributors\/1: n9 is not one of the nodes/],
    ['a malformed MAC', (c: any) => (c.nodes[0].mac = '02:00'), /f.json: \/nodes\/0\/mac/],
    ['a DVIPA that is not an address', (c: any) => (c.dvipa.addresses = ['10.0.0.300']), /\/dvipa\/addresses\/0: 10.0.0.300 is not an IPv4 or IPv6 address/],
    ['a DVIPA with a zone id', (c: any) => (c.dvipa.addresses = ['fe80::1%eth0']), /\/dvipa\/addresses\/0: fe80::1%eth0 is not an IPv4 or IPv6 address/],
    ['two DVIPA addresses of one family', (c: any) => (c.dvipa.addresses = ['10.203.0.10', '10.203.0.20']), /\/dvipa\/addresses\/1: a second address must be of the other family/],
    ['three DVIPA addresses', (c: any) => (c.dvipa.addresses = ['10.203.0.10', '2001:db8::10', '2001:db8::11']), /\/dvipa\/addresses: Expected array length to be less or equal to 2/],
    ['the old single dvipa.address', (c: any) => (c.dvipa = { address: '10.203.0.10', ports: [80] }), /\/dvipa\/address: Unexpected property/],
    ['a node address that is no address', (c: any) => (c.nodes[0].address = 'n1.example'), /\/nodes\/0\/address: n1.example is not an IPv4 or IPv6 address/],
    ['duplicate node ids', (c: any) => (c.nodes[1].id = 1), /duplicate id 1/],
    ['an unknown key', (c: any) => (c.extra = true), /f.json: \/extra/],
    ['a dvipaCidrs entry that is no CIDR', (c: any) => (c.dvipaCidrs = ['10.203.0.0/24', '10.203.0.0/33']), /f.json: \/dvipaCidrs: "10.203.0.0\/33" is not a CIDR/],
    ['a DVIPA outside dvipaCidrs', (c: any) => (c.dvipaCidrs = ['10.203.1.0/24']), /f.json: \/dvipa\/addresses\/0: 10.203.0.10 is outside the cluster's DVIPA allow-list \(dvipaCidrs: 10.203.1.0\/24\)/],
    ['a DVIPA that is a node\'s address', (c: any) => (c.dvipa.addresses = ['10.203.0.12']), /f.json: \/dvipa\/addresses\/0: 10.203.0.12 is a node's management address/],
    ['an IPv6 DVIPA that is a node\'s address', (c: any) => ((c.nodes[1].address = '2001:db8::12'), (c.dvipaCidrs = ['10.203.0.0/24', '2001:db8::/64']), (c.dvipa.addresses = ['10.203.0.10', '2001:DB8::0:12'])), /\/dvipa\/addresses\/1: 2001:db8::12 is a node's management address/],
  ])('rejects %s with file and path', (_n, mutate, message) => {
    const c = good();
    mutate(c);
    expect(() => parseClusterConfig(c, 'f.json')).toThrow(message);
  });

  it('takes a dual-stack DVIPA and IPv6 node addresses, keeping each address in its canonical text', () => {
    const c = good();
    c.dvipaCidrs = ['10.203.0.0/24', '2001:db8::/64'];
    c.dvipa.addresses = ['10.203.0.10', '2001:DB8:0::10'];
    c.nodes[0]!.address = '2001:db8:0:0::11';
    const parsed = parseClusterConfig(c, 'f.json');
    expect(parsed.dvipa.addresses).toEqual(['10.203.0.10', '2001:db8::10']);
    expect(parsed.nodes[0]!.address).toBe('2001:db8::11');
    // IPv6 alone is a cluster too.
    const v6 = good();
    v6.dvipaCidrs = ['2001:db8::/64'];
    v6.dvipa.addresses = ['2001:db8::10'];
    expect(parseClusterConfig(v6).dvipa.addresses).toEqual(['2001:db8::10']);
  });

  describe('as a YAML file', () => {
    const yamlOf = (c: ClusterConfig) => stringify(c);

    it('round-trips through writeClusterConfig and readClusterConfig', () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-config-'));
      try {
        writeClusterConfig(path.join(dir, 'cluster.yaml'), good());
        expect(readClusterConfig(path.join(dir, 'cluster.yaml'))).toEqual(good());
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    it('names file, line and column of a wrong value', () => {
      const text = yamlOf(good()).replace('mac: 02:00:00:00:00:02', 'mac: nope');
      const line = text.split('\n').findIndex((l) => l.includes('mac: nope')) + 1;
      expect(() => parseClusterConfigText(text, 'c.yaml')).toThrow(new RegExp(`c\\.yaml:${line}:\\d+: /nodes/1/mac: Expected string to match`));
    });

    it('reports a missing key at its parent', () => {
      const text = yamlOf(good()).replace(/^ {2}tokenFile: .*\n/m, '');
      const line = text.split('\n').findIndex((l) => l.startsWith('api:')) + 2;
      expect(() => parseClusterConfigText(text, 'c.yaml')).toThrow(new RegExp(`c\\.yaml:${line}:3: /api/tokenFile: Expected required property`));
    });

    it('rejects YAML syntax errors and duplicate keys with their position', () => {
      expect(() => parseClusterConfigText('version: 1\nversion: 1\n', 'c.yaml')).toThrow(/c\.yaml:2:1: Map keys must be unique/);
      expect(() => parseClusterConfigText('nodes: [\n', 'c.yaml')).toThrow(/c\.yaml:\d+:\d+: /);
    });

    it('a file that does not exist is a config error naming it', () => {
      expect(() => readClusterConfig('/nonexistent/cluster.yaml')).toThrow(/cannot read cluster config \/nonexistent\/cluster.yaml/);
    });

    it('a path that is no regular file, or a file over the size bound, is refused before it is read', () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-config-'));
      try {
        expect(() => readClusterConfig(dir)).toThrow(`invalid cluster config ${dir}: not a regular file`);
        const big = path.join(dir, 'big.yaml');
        fs.writeFileSync(big, '');
        fs.truncateSync(big, MAX_CONFIG_BYTES + 1);
        expect(() => readClusterConfig(big)).toThrow(`invalid cluster config ${big}: ${MAX_CONFIG_BYTES + 1} bytes, at most ${MAX_CONFIG_BYTES}`);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});
