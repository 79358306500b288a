// Which addresses may be a DVIPA. A DVIPA is held on every node's lo and answered for by the
// distributor on the segment, so a wrong one hijacks traffic: a gateway's address takes the
// segment's default route, a node's address cuts that node off, a multicast or broadcast address
// would be "answered" for a whole group. The cluster file's allow-list (dvipaCidrs) says where
// virtual IPs come from; some classes are refused whatever it says. Checked for the config's own
// DVIPA at parse time and for every DVIPA an operator adds (POST /v1/dvipas: 400, nothing changes).
import net from 'node:net';
import { BatonError } from '../errors.js';

type Family = 'ipv4' | 'ipv6';

export interface Cidr {
  address: string;
  prefix: number;
  family: Family;
}

/** "192.0.2.0/28" or "2001:db8::/64"; a bare address is a /32 or /128. Throws E_CONFIG. */
export function parseCidr(text: string): Cidr {
  const [address = '', prefixText, extra] = text.split('/');
  const family: Family | undefined = net.isIPv4(address) ? 'ipv4' : net.isIPv6(address) && !address.includes('%') ? 'ipv6' : undefined;
  const max = family === 'ipv4' ? 32 : 128;
  const prefix = prefixText === undefined ? max : /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : NaN;
  if (!family || extra !== undefined || !(prefix >= 0 && prefix <= max)) {
    throw new BatonError('E_CONFIG', `${JSON.stringify(text.slice(0, 60))} is not a CIDR (address/prefix, e.g. 192.0.2.0/28)`, { step: 'dvipa' });
  }
  return { address, prefix, family };
}

/** Never a DVIPA, whatever the allow-list says; the first match names the reason. */
const FORBIDDEN: Array<[string, string]> = [
  ['unspecified', '0.0.0.0/32'],
  ['"this network" (0.0.0.0/8)', '0.0.0.0/8'],
  ['loopback', '127.0.0.0/8'],
  ['link-local', '169.254.0.0/16'],
  ['multicast', '224.0.0.0/4'],
  ['broadcast', '255.255.255.255/32'],
  ['reserved (240.0.0.0/4)', '240.0.0.0/4'],
  ['unspecified', '::/128'],
  ['loopback', '::1/128'],
  ['link-local', 'fe80::/10'],
  ['multicast', 'ff00::/8'],
  ['IPv4-mapped', '::ffff:0:0/96'],
];

const familyOf = (address: string): Family | undefined => (net.isIPv4(address) ? 'ipv4' : net.isIPv6(address) ? 'ipv6' : undefined);

/**
 * One BlockList per family: node:net's BlockList matches an IPv4 address against IPv6 rules as
 * IPv4-mapped (so ::ffff:0:0/96 would catch every IPv4 address) and the reverse.
 */
function listOf(cidrs: Cidr[], family: Family): net.BlockList {
  const list = new net.BlockList();
  for (const c of cidrs) if (c.family === family) list.addSubnet(c.address, c.prefix, family);
  return list;
}

export class DvipaPolicy {
  private readonly allowed: Record<Family, net.BlockList>;
  private readonly forbidden: Array<[string, Family, net.BlockList]>;
  /** The allow-list as configured, for error messages. */
  readonly cidrs: string[];

  constructor(
    cidrs: string[] | undefined,
    /** The config's own DVIPAs: the whole allow-list when dvipaCidrs is absent. */
    primaries: readonly string[],
    /** The nodes' management addresses. */
    private readonly nodes: readonly string[],
    /**
     * Reads the node's gateways (default routes) now: routes change, so once per check, or once
     * per batch of addresses checked together (refusal's gateways).
     */
    readonly gateways: () => readonly string[] = () => [],
  ) {
    this.cidrs = cidrs ?? [...primaries];
    const parsed = this.cidrs.map(parseCidr);
    this.allowed = { ipv4: listOf(parsed, 'ipv4'), ipv6: listOf(parsed, 'ipv6') };
    this.forbidden = FORBIDDEN.map(([why, text]) => {
      const c = parseCidr(text);
      return [why, c.family, listOf([c], c.family)];
    });
  }

  /** Why address cannot be a DVIPA, or undefined if it can. gateways: read now (when it comes to them) unless given. */
  refusal(address: string, gateways?: readonly string[]): string | undefined {
    const family = familyOf(address);
    if (!family) return `${JSON.stringify(address.slice(0, 60))} is not an IP address`;
    for (const [why, f, list] of this.forbidden) if (f === family && list.check(address, family)) return `${address} is ${why}, never a virtual IP`;
    if (this.nodes.some((n) => sameAddress(n, address))) return `${address} is a node's management address, not a virtual IP`;
    if ((gateways ?? this.gateways()).some((g) => sameAddress(g, address))) return `${address} is a gateway of this node, not a virtual IP`;
    if (!this.allowed[family].check(address, family)) return `${address} is outside the cluster's DVIPA allow-list (dvipaCidrs: ${this.cidrs.join(', ')})`;
    return undefined;
  }

  /** Throws E_CONFIG naming the reason when address cannot be a DVIPA. */
  check(address: string, context: Record<string, unknown> = {}): void {
    const why = this.refusal(address);
    if (why) throw new BatonError('E_CONFIG', why, { step: 'dvipa', ...context });
  }
}

function sameAddress(a: string, b: string): boolean {
  const fa = familyOf(a);
  if (!fa || fa !== familyOf(b)) return false;
  const list = new net.BlockList();
  list.addAddress(a, fa);
  return list.check(b, fa);
}
