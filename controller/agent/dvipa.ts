// Puts the DVIPA on this node: a /32 on `lo` (this kernel has no dummy device) plus the ARP
// sysctls that make only the distributor answer for it. Every node holds the address so a
// transferred socket can bind to it and reply from it directly (direct server return).
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
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
  /** The distributor answers ARP for the DVIPA; every other node must stay silent. */
  distributor: boolean;
  /** The node's interface on the shared segment. */
  interface: string;
}

/** Takes a DVIPA an operator removed off this node; an address already gone is not an error. */
export async function releaseDvipa(address: string): Promise<void> {
  try {
    await run('ip', ['address', 'del', `${address}/32`, 'dev', 'lo']);
  } catch (err) {
    const stderr = String((err as { stderr?: string }).stderr ?? '');
    if (!/Cannot assign requested address|not found/i.test(stderr)) {
      throw new BatonError('E_CONFIG', `cannot take DVIPA ${address} off lo: ${stderr.trim() || (err as Error).message}`, { step: 'dvipa' });
    }
  }
}

export async function ensureDvipa(opts: DvipaOptions): Promise<void> {
  try {
    // `replace` is idempotent: a restarted batond finds the address already there.
    await run('ip', ['address', 'replace', `${opts.address}/32`, 'dev', 'lo']);
    await run('ip', ['link', 'set', 'lo', 'up']);
  } catch (err) {
    throw new BatonError('E_CONFIG', `cannot put DVIPA ${opts.address} on lo: ${(err as Error).message}`, { step: 'dvipa' });
  }
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
