// Puts the DVIPA on this node: a /32 or /128 on `lo` (this kernel has no dummy device) plus what
// makes only the distributor answer ARP or neighbour solicitations for it. Every node holds the address so a
// transferred socket can bind to it and reply from it directly (direct server return).
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { promisify } from 'node:util';
import { BatonError } from '../errors.js';

const run = promisify(execFile);

function writeSysctl(key: string, value: string): void {
  const path = `/proc/sys/${key.replaceAll('.', '/')}`;
  try {
    fs.writeFileSync(path, value);
  } catch (err) {
    throw new BatonError('E_CONFIG', `cannot set ${key}=${value}: ${(err as Error).message}`, { step: 'dvipa' });
  }
}

export interface DvipaOptions {
  address: string;
  /** The distributor answers ARP or neighbour solicitations for the DVIPA; every other node must stay silent. */
  distributor: boolean;
  /**
   * keepalived decides which distributor holds the DVIPA on its interface (a cluster with
   * backups): batond leaves that copy alone, on every node.
   */
  keepalived: boolean;
  /** The node's interface on the shared segment. */
  interface: string;
}

/** The host prefix length of an address's family: /32 or /128. */
const hostPrefix = (address: string) => (net.isIPv4(address) ? 32 : 128);

/** `ip address del`, where an address already gone is not an error. */
async function deleteAddress(address: string, dev: string): Promise<void> {
  try {
    await run('ip', ['address', 'del', `${address}/${hostPrefix(address)}`, 'dev', dev]);
  } catch (err) {
    const stderr = String((err as { stderr?: string }).stderr ?? '');
    if (!/Cannot assign requested address|not found/i.test(stderr)) {
      throw new BatonError('E_CONFIG', `cannot take DVIPA ${address} off ${dev}: ${stderr.trim() || (err as Error).message}`, { step: 'dvipa' });
    }
  }
}

/**
 * Takes a DVIPA an operator removed off this node: lo, and for an IPv6 one the segment's interface,
 * unless keepalived holds it there (it takes it off itself when batond reloads it).
 */
export async function releaseDvipa(opts: Omit<DvipaOptions, 'distributor'>): Promise<void> {
  await deleteAddress(opts.address, 'lo');
  if (net.isIPv6(opts.address) && !opts.keepalived) await deleteAddress(opts.address, opts.interface);
}

export async function ensureDvipa(opts: DvipaOptions): Promise<void> {
  const prefix = hostPrefix(opts.address);
  try {
    // `replace` is idempotent: a restarted batond finds the address already there.
    await run('ip', ['address', 'replace', `${opts.address}/${prefix}`, 'dev', 'lo']);
    await run('ip', ['link', 'set', 'lo', 'up']);
  } catch (err) {
    throw new BatonError('E_CONFIG', `cannot put DVIPA ${opts.address} on lo: ${(err as Error).message}`, { step: 'dvipa' });
  }
  if (net.isIPv6(opts.address)) return ensureNeighbourAnswers(opts);
  // arp_ignore=1: answer ARP only for addresses on the receiving interface (the DVIPA is on lo).
  // arp_announce=2: never use the DVIPA as the source of our own ARP requests.
  const ignore = opts.distributor ? '0' : '1';
  const announce = opts.distributor ? '0' : '2';
  for (const scope of ['all', opts.interface]) {
    writeSysctl(`net.ipv4.conf.${scope}.arp_ignore`, ignore);
    writeSysctl(`net.ipv4.conf.${scope}.arp_announce`, announce);
  }
  // Steered packets arrive on an interface that is not the route back to the client's source on
  // some topologies; strict reverse-path filtering would drop them.
  for (const scope of ['all', 'default', opts.interface, 'lo']) writeSysctl(`net.ipv4.conf.${scope}.rp_filter`, '0');
}

/**
 * IPv6 has no arp_ignore: the kernel answers a neighbour solicitation only for an address on the
 * interface it arrived on, so a DVIPA on lo alone is never answered for (what arp_ignore=1 gives
 * IPv4 targets). The lone distributor also holds it on the segment's interface, where it answers;
 * with backups keepalived does that on the active one (and batond keeps off). Held there without duplicate address
 * detection (every other node is silent by design, and DAD would keep it tentative, unanswered,
 * for a second) and deprecated (preferred lifetime 0), so the node never picks it as the source
 * of its own connections (RFC 6724 rule 3), the counterpart of arp_announce=2. A node that is not
 * the lone distributor (any more) must not hold it there. IPv6 has no rp_filter sysctl.
 */
async function ensureNeighbourAnswers(opts: DvipaOptions): Promise<void> {
  // Taking keepalived's copy away would make it leave MASTER and come back to put it there again.
  if (opts.keepalived) return;
  if (!opts.distributor) return deleteAddress(opts.address, opts.interface);
  try {
    await run('ip', ['address', 'replace', `${opts.address}/128`, 'dev', opts.interface, 'nodad', 'preferred_lft', '0']);
  } catch (err) {
    throw new BatonError('E_CONFIG', `cannot put DVIPA ${opts.address} on ${opts.interface}: ${String((err as { stderr?: string }).stderr ?? '').trim() || (err as Error).message}`, { step: 'dvipa' });
  }
}

/**
 * The gateways of this node's default routes (both families), which can never be a DVIPA. Read
 * when asked: routes change while batond runs. Throws E_CONFIG when the table cannot be read: an
 * address that cannot be checked is refused.
 */
export function defaultGateways(): string[] {
  const out: string[] = [];
  for (const family of ['-4', '-6']) {
    let text: string;
    try {
      text = execFileSync('ip', ['-j', family, 'route', 'show', 'default'], { encoding: 'utf8', timeout: 2000, maxBuffer: 1 << 20 });
    } catch (err) {
      throw new BatonError('E_CONFIG', `cannot read the default routes (ip ${family} route): ${(err as Error).message}`, { step: 'dvipa' });
    }
    let routes: unknown;
    try {
      routes = JSON.parse(text || '[]');
    } catch {
      throw new BatonError('E_CONFIG', `ip ${family} route printed no JSON`, { step: 'dvipa' });
    }
    if (!Array.isArray(routes)) continue;
    for (const r of routes) if (r && typeof r === 'object' && typeof (r as { gateway?: unknown }).gateway === 'string') out.push((r as { gateway: string }).gateway);
  }
  return out;
}
