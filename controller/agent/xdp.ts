// The distributor's XDP lifecycle: open build/bpf/steer.o, pin its maps under
// /sys/fs/bpf/baton/<instance>/, load, attach to the DVIPA-facing interface, and hand back the
// routing table. Runs in the calling thread's network namespace (batond lives in its node's).
//
// Three lifetimes, on purpose:
//  - the attachment outlives the process: close() leaves the program steering, so a batond
//    restart (or crash) does not send handed-off connections back to the distributor's kernel,
//    which would reset them. detach() is the explicit "stop steering".
//  - the maps outlive the program: pinned, they are reused by the next load (same entries,
//    same counters) and the new program replaces the old one atomically.
//  - unpinInstance() is teardown: it forgets the maps (they die with the last program using them).
import fs from 'node:fs';
import path from 'node:path';
import { buildPath } from '../paths.js';
import type { Logger } from '../log.js';
import { BatonError, isBatonError } from '../errors.js';
import {
  BPF_FS_MAGIC,
  XDP_FLAGS_DRV_MODE,
  XDP_FLAGS_REPLACE,
  XDP_FLAGS_SKB_MODE,
  closeFd,
  closeObject,
  findMap,
  findProgram,
  ifNameToIndex,
  loadObject,
  mapFd,
  mapInfo,
  mountBpffs,
  numPossibleCpus,
  objGet,
  openObject,
  programFd,
  programId,
  setMaxEntries,
  setPinPath,
  xdpAttach,
  xdpDetach,
  xdpQueryId,
} from '../../native/libbpf.js';
import { ROUTES_MAP_NAME, ROUTES_MAX_ENTRIES_DEFAULT, RoutingTable, STATS_MAP_NAME, STEER_PROGRAM_NAME } from './routing-table.js';

export const BPFFS_ROOT = '/sys/fs/bpf';
export const PIN_SUBDIR = 'baton';

export type XdpMode = 'native' | 'generic';

export interface SteeringOptions {
  /** Names the pin directory; one per distributor (or per lab node) on this host. */
  instance: string;
  /** The interface the DVIPA's packets arrive on. */
  ifname: string;
  /** Defaults to <repo>/build/bpf/steer.o. */
  objectPath?: string;
  /** native (driver) XDP, or generic (skb) XDP which works on any device. */
  mode: XdpMode;
  /** Routing-table capacity. Omitted: whatever is pinned already, else the header's default. */
  maxEntries?: number;
  log?: Logger;
}

export interface Steering {
  readonly routes: RoutingTable;
  /** Kernel id of the attached program (`bpftool prog show id N`). */
  readonly programId: number;
  readonly ifname: string;
  readonly ifindex: number;
  readonly mode: XdpMode;
  readonly pinDir: string;
  /** Stops steering on the interface if our program is still the one attached; maps stay pinned. */
  detach(): void;
  /** Releases this process's handles (routes becomes unusable); the program keeps steering. */
  close(): void;
}

const INSTANCE_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/;
const MAX_ENTRIES_LIMIT = 0xffffffff;

function modeFlags(mode: XdpMode): number {
  return mode === 'native' ? XDP_FLAGS_DRV_MODE : XDP_FLAGS_SKB_MODE;
}

export function instancePinDir(instance: string): string {
  if (!INSTANCE_RE.test(instance)) {
    throw new BatonError('E_CONFIG', `instance name ${JSON.stringify(instance)} must match ${INSTANCE_RE.source}`, { step: 'xdp-load' });
  }
  return path.join(BPFFS_ROOT, PIN_SUBDIR, instance);
}

export function defaultObjectPath(): string {
  return buildPath('bpf', 'steer.o');
}

/**
 * Pins need a BPF filesystem; systemd mounts one at /sys/fs/bpf, minimal VMs do not. Mounting
 * one inside a private mount namespace (what `ip netns exec` gives: it remounts /sys) creates a
 * bpffs instance nobody else sees, which vanishes with this process: warn, since the promise
 * that a restart keeps the table would silently not hold.
 */
function ensureBpffs(log?: Logger): void {
  fs.mkdirSync(BPFFS_ROOT, { recursive: true });
  if (fs.statfsSync(BPFFS_ROOT).type === BPF_FS_MAGIC) return;
  mountBpffs(BPFFS_ROOT);
  // `ip netns exec` unshares the mount namespace and then execs us, so our parent (the shell
  // that ran ip) is still in the namespace we were supposed to pin into.
  let privateMounts = false;
  try {
    privateMounts = fs.statSync('/proc/self/ns/mnt').ino !== fs.statSync(`/proc/${process.ppid}/ns/mnt`).ino;
  } catch {
    // The parent is gone or not inspectable: nothing to compare against.
  }
  if (privateMounts) {
    log?.warn(
      { path: BPFFS_ROOT },
      'mounted a BPF filesystem in a private mount namespace: pinned maps will not outlive this process (start batond with `nsenter --net=` rather than `ip netns exec`)',
    );
  } else {
    log?.info({ path: BPFFS_ROOT }, 'mounted the BPF filesystem');
  }
}

/** max_entries of an already pinned routing table, or undefined if none is pinned. */
function pinnedCapacity(pinPath: string): number | undefined {
  if (!fs.existsSync(pinPath)) return undefined;
  const fd = objGet(pinPath);
  try {
    return mapInfo(fd).maxEntries;
  } finally {
    closeFd(fd);
  }
}

function resolveCapacity(requested: number | undefined, pinned: number | undefined, pinPath: string): number {
  if (requested !== undefined && (!Number.isInteger(requested) || requested < 1 || requested > MAX_ENTRIES_LIMIT)) {
    throw new BatonError('E_CONFIG', `maxEntries ${requested} must be an integer in 1..${MAX_ENTRIES_LIMIT}`, { step: 'xdp-load' });
  }
  if (pinned !== undefined && requested !== undefined && requested !== pinned) {
    // libbpf would refuse the reuse with a bare EINVAL; say what to do instead.
    throw new BatonError(
      'E_BPF',
      `routing table pinned at ${pinPath} holds ${pinned} entries, ${requested} requested: load with maxEntries ${pinned}, or unpin the instance (drops every steered connection)`,
      { step: 'xdp-load', pinned, requested },
    );
  }
  return requested ?? pinned ?? ROUTES_MAX_ENTRIES_DEFAULT;
}

export function loadSteering(opts: SteeringOptions): Steering {
  const pinDir = instancePinDir(opts.instance);
  const objectPath = opts.objectPath ?? defaultObjectPath();
  const flags = modeFlags(opts.mode);
  if (!fs.existsSync(objectPath)) {
    throw new BatonError('E_BPF', `XDP object ${objectPath} not found (run \`make bpf\`)`, { step: 'xdp-open', path: objectPath });
  }
  // Resolve the interface first: a typo should fail before anything is created or pinned.
  const ifindex = ifNameToIndex(opts.ifname);

  ensureBpffs(opts.log);
  fs.mkdirSync(pinDir, { recursive: true });
  const routesPin = path.join(pinDir, ROUTES_MAP_NAME);
  const maxEntries = resolveCapacity(opts.maxEntries, pinnedCapacity(routesPin), routesPin);

  const obj = openObject(objectPath);
  try {
    const routesMap = findMap(obj, ROUTES_MAP_NAME);
    const statsMap = findMap(obj, STATS_MAP_NAME);
    setPinPath(routesMap, routesPin);
    setPinPath(statsMap, path.join(pinDir, STATS_MAP_NAME));
    setMaxEntries(routesMap, maxEntries);
    loadObject(obj, { path: objectPath, pinDir });

    const progFd = programFd(findProgram(obj, STEER_PROGRAM_NAME));
    const id = programId(progFd);
    try {
      // No UPDATE_IF_NOEXIST: a previous batond's program is replaced in one step, and as it
      // shares the pinned maps no packet sees an empty table.
      xdpAttach(ifindex, progFd, flags);
    } catch (err) {
      const why =
        isBatonError(err, 'E_BPF') && err.context.errnoName === 'EEXIST'
          ? `a ${opts.mode === 'native' ? 'generic' : 'native'}-mode program is attached (detach it first)`
          : isBatonError(err, 'E_BPF') && err.context.errnoName === 'EBUSY'
            ? 'an XDP program held by a bpf_link (another loader) is attached'
            : undefined;
      if (why === undefined) throw err;
      throw new BatonError('E_BPF', `cannot attach ${opts.mode} XDP to ${opts.ifname}: ${why}`, {
        ...(err as BatonError).context,
        step: 'xdp-attach',
        ifname: opts.ifname,
      }, { cause: err });
    }

    const routes = new RoutingTable(mapFd(routesMap), mapFd(statsMap), numPossibleCpus());
    let attached = true;
    let open = true;
    opts.log?.info({ ifname: opts.ifname, ifindex, mode: opts.mode, programId: id, pinDir, maxEntries }, 'XDP steering attached');

    return {
      routes,
      programId: id,
      ifname: opts.ifname,
      ifindex,
      mode: opts.mode,
      pinDir,
      detach(): void {
        if (!attached) return;
        // Remove the program only if it is still ours: a newer batond's must keep steering.
        // With our fd the kernel compares atomically (REPLACE + old fd); after close() only the
        // id is left to compare, racy but only against another teardown.
        let ours = true;
        if (open) {
          try {
            xdpDetach(ifindex, flags | XDP_FLAGS_REPLACE, progFd);
          } catch (err) {
            if (!(isBatonError(err, 'E_BPF') && err.context.errnoName === 'EEXIST')) throw err;
            ours = false;
          }
        } else {
          ours = xdpQueryId(ifindex, flags) === id;
          if (ours) xdpDetach(ifindex, flags);
        }
        if (!ours) opts.log?.warn({ ifname: opts.ifname, programId: id }, 'XDP program already replaced or removed; left as is');
        attached = false;
      },
      close(): void {
        if (!open) return;
        open = false;
        routes.close();
        closeObject(obj);
      },
    };
  } catch (err) {
    closeObject(obj);
    throw err;
  }
}

/** Removes the instance's pins. Steering that is still attached keeps its maps alive until detached. */
export function unpinInstance(instance: string): void {
  fs.rmSync(instancePinDir(instance), { recursive: true, force: true });
}
