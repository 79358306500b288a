import { describe, expect, it } from 'vitest';
import { DvipaPolicy, parseCidr } from '../../../controller/config/dvipa-policy.js';

describe('DVIPA policy', () => {
  const policy = new DvipaPolicy(['192.0.2.0/28', '2001:db8:1::/64'], ['192.0.2.1'], ['192.0.2.11', '2001:db8:1::11'], () => ['192.0.2.14', 'fe80::1']);

  it('takes addresses inside the allow-list, of both families', () => {
    expect(policy.refusal('192.0.2.1')).toBeUndefined();
    expect(policy.refusal('192.0.2.13')).toBeUndefined();
    expect(policy.refusal('2001:db8:1::100')).toBeUndefined();
  });

  it.each([
    ['192.0.2.16', /outside the cluster's DVIPA allow-list/],
    ['2001:db8:2::1', /outside/],
    ['192.0.2.11', /management address/],
    ['2001:db8:1:0::11', /management address/],
    ['192.0.2.14', /gateway/],
    ['127.0.0.1', /loopback/],
    ['::1', /loopback/],
    ['224.0.0.1', /multicast/],
    ['ff02::1', /multicast/],
    ['255.255.255.255', /broadcast/],
    ['169.254.0.1', /link-local/],
    ['fe80::2', /link-local/],
    ['0.0.0.0', /unspecified/],
    ['::', /unspecified/],
    ['::ffff:192.0.2.1', /IPv4-mapped/],
    ['240.0.0.1', /reserved/],
    ['192.0.2.1%eth0', /not an IP address/],
    ['not-an-address', /not an IP address/],
  ])('refuses %s', (address, why) => {
    expect(policy.refusal(address)).toMatch(why);
    expect(() => policy.check(address)).toThrow(why);
  });

  it('refuses forbidden classes even when the allow-list covers them', () => {
    const wide = new DvipaPolicy(['0.0.0.0/0', '::/0'], ['10.0.0.1'], [], () => []);
    expect(wide.refusal('10.0.0.1')).toBeUndefined();
    expect(wide.refusal('127.0.0.2')).toMatch(/loopback/);
    expect(wide.refusal('239.1.1.1')).toMatch(/multicast/);
  });

  it('without an allow-list, only the config DVIPA itself', () => {
    const none = new DvipaPolicy(undefined, ['10.0.0.10'], [], () => []);
    expect(none.refusal('10.0.0.10')).toBeUndefined();
    expect(none.refusal('10.0.0.11')).toMatch(/dvipaCidrs: 10.0.0.10/);
  });

  it.each(['10.0.0.0/33', '10.0.0.0/-1', '10.0.0/24', '2001:db8::/129', '10.0.0.0/24/1', 'x/8', '10.0.0.0/0x8'])('%s is not a CIDR', (text) => {
    expect(() => parseCidr(text)).toThrow(/is not a CIDR/);
  });
});
