// Starting one distributor's keepalived, in the lab and under systemd alike: the files it needs
// are made from the cluster file first (controller/bin/baton-keepalived.ts prints the argv, which a
// shell then execs, so the supervisor's process is keepalived itself). And reloading it when the
// DVIPAs added through the API change: keepalived holds those too.
import fs from 'node:fs';
import { dvipaStateFile, readAddedDvipas } from '../agent/dvipa-set.js';
import { BatonError } from '../errors.js';
import { clearStalePidFiles, keepalivedArgv, keepalivedConfig, keepalivedPaths, runningKeepalived, type VrrpClusterView, vrrpNodeSpec, writeKeepalivedConfig } from './keepalived.js';
import { ensureFifo } from './vrrp-state.js';

/**
 * Everything one distributor's keepalived needs before it starts, from the cluster file: its
 * config written (in dir, batond's state directory), the notify FIFO created root's and 0600
 * (keepalived would create it as its script user, and delete it when it stops), the pidfiles a
 * killed keepalived left cleared. Returns the argv that runs it. Throws E_CONFIG for a node that
 * must run no keepalived: not a distributor, or the only one (batond is then active alone).
 * The lab and the systemd unit both start keepalived through this (controller/bin/baton-keepalived.ts).
 */
export async function prepareKeepalived(cluster: VrrpClusterView, node: string, dir: string): Promise<string[]> {
  if (cluster.distributors.length < 2) throw new BatonError('E_CONFIG', `the cluster has one distributor (${cluster.distributors[0] ?? 'none'}): it runs no keepalived, batond is active alone`, { node, step: 'keepalived' });
  const files = keepalivedPaths(dir, cluster.instance, node);
  // A fresh machine has no state directory yet: batond, which makes it too, may not have run.
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  // The DVIPAs an operator added before this start, as batond keeps them in the same directory.
  const added = readAddedDvipas(dvipaStateFile(dir, cluster.instance, node)).map((d) => d.address);
  writeKeepalivedConfig(files.config, keepalivedConfig(vrrpNodeSpec(cluster, node, files, added)));
  await ensureFifo(files.notifyFifo);
  clearStalePidFiles(files);
  return keepalivedArgv(files);
}

/**
 * Rewrites one distributor's keepalived.conf with the DVIPAs added through the API now, and makes
 * a running keepalived read it again (SIGHUP): as MASTER it puts a new address on the interface
 * and announces it, and takes a removed one off, without leaving MASTER. Not running: the file is
 * what it starts with. Returns whether a running keepalived was told.
 */
export function reloadKeepalived(cluster: VrrpClusterView, node: string, dir: string, added: readonly string[]): boolean {
  const files = keepalivedPaths(dir, cluster.instance, node);
  writeKeepalivedConfig(files.config, keepalivedConfig(vrrpNodeSpec(cluster, node, files, added)));
  const pid = runningKeepalived(files);
  if (pid === undefined) return false;
  try {
    process.kill(pid, 'SIGHUP');
  } catch (err) {
    throw new BatonError('E_NATIVE', `cannot make keepalived (pid ${pid}) reload ${files.config}: ${(err as Error).message}`, { node, step: 'keepalived' });
  }
  return true;
}
