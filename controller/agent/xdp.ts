// The distributor's XDP lifecycle: open build/bpf/steer.o, pin its maps under
// /sys/fs/bpf/baton/<instance>/, load, tell the program which interface it runs on (its index
// and MAC: only frames sent to that MAC are steered), attach to the DVIPA-facing interface, and
// hand back the routing table. Runs in the calling thread's network namespace (batond lives in
// its node's).
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
  ARPHRD_ETHER,
  BPF_FS_MAGIC,
  XDP_FLAGS_DRV_MODE,
  XDP_FLAGS_REPLACE,
  XDP_FLAGS_SKB_MODE,
  closeFd,
  closeObject,
  findMap,
  findProgram,
  ifHardwareAddress,
  ifNameToIndex,
  loadObject,
  mapDefinition,
  mapFd,
  mapInfo,
  mapUpdate,
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
  type BpfMap,
} from '../../native/libbpf.js';
import { RoutingTable } from './routing-table.js';
import {
  CONFIG_MAP_NAME,
  ROUTES_MAP_NAME,
  ROUTES_MAX_ENTRIES_DEFAULT,
  STATS_MAP_NAME,
  STEER_PROGRAM_NAME,
  encodeConfig,
  formatMac,
} from './table-layout.js';

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
  /** The cluster's other distributors' MACs: frames they steered here are passed, never steered again (bpf/steer.c). */
  peerMacs?: readonly string[];
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
  /**
   * Whether a frame another distributor steered here goes to this node's kernel (on: standing by,
   * the active one's table decides, this node's replica may lag it) or is steered by this node's
   * table like any other (off: active, its table is the truth and the sender's may lag). Loaded
   * on; one map update (bpf/steer.c, baton_from_peer).
   */
  deferToPeers(on: boolean): void;
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

/**
 * The program's config for the interface (struct baton_config): its index and MAC. Steering
 * rewrites Ethernet headers and needs a unicast MAC to recognise frames sent to this node, so
 * anything else (loopback, a tunnel, a MAC of all zeros) is refused.
 */
function steeringConfig(ifname: string, ifindex: number, peers: readonly string[]): { mac: string; value: Buffer } {
  const hw = ifHardwareAddress(ifname);
  if (hw.type !== ARPHRD_ETHER) {
    throw new BatonError('E_CONFIG', `${ifname} is not an Ethernet interface (hardware type ${hw.type}): XDP steering rewrites Ethernet headers`, {
      step: 'xdp-load',
      ifname,
      hardwareType: hw.type,
    });
  }
  const mac = formatMac(hw.address, 0);
  try {
    return { mac, value: encodeConfig({ ifindex, mac, peers }) };
  } catch (err) {
    throw new BatonError('E_CONFIG', `${ifname}: ${(err as Error).message}`, { step: 'xdp-load', ifname, mac }, { cause: err });
  }
}

/**
 * libbpf reuses a pinned map only if its definition is unchanged, and fails the load otherwise.
 * The routing table must be reused (its entries are live connections: resolveCapacity), but the
 * counters and the config hold nothing a new program needs. When a build changed their
 * definition (a new verdict reason grows baton_stats), the old pin is removed so the load
 * creates and pins a new map; a program still attached keeps the old one until it is replaced.
 */
function unpinIfChanged(map: BpfMap, pinPath: string, consequence: string, log?: Logger): void {
  if (!fs.existsSync(pinPath)) return;
  const fd = objGet(pinPath);
  let pinned: ReturnType<typeof mapInfo>;
  try {
    pinned = mapInfo(fd);
  } finally {
    closeFd(fd);
  }
  const wanted = mapDefinition(map);
  const same = (Object.keys(wanted) as Array<keyof typeof wanted>).every((k) => pinned[k] === wanted[k]);
  if (same) return;
  fs.rmSync(pinPath);
  log?.info(
    { path: pinPath, pinned: { type: pinned.type, keySize: pinned.keySize, valueSize: pinned.valueSize, maxEntries: pinned.maxEntries, flags: pinned.flags }, wanted },
    `pinned map of an older layout replaced: ${consequence}`,
  );
}

export function loadSteering(opts: SteeringOptions): Steering {
  const pinDir = instancePinDir(opts.instance);
  const objectPath = opts.objectPath ?? defaultObjectPath();
  const flags = modeFlags(opts.mode);
  if (!fs.existsSync(objectPath)) {
    throw new BatonError('E_BPF', `XDP object ${objectPath} not found (run \`make bpf\`)`, { step: 'xdp-open', path: objectPath });
  }
  // Resolve the interface first: a typo, or an interface steering cannot work on, should fail
  // before anything is created or pinned.
  const ifindex = ifNameToIndex(opts.ifname);
  const config = steeringConfig(opts.ifname, ifindex, opts.peerMacs ?? []);

  ensureBpffs(opts.log);
  fs.mkdirSync(pinDir, { recursive: true });
  const routesPin = path.join(pinDir, ROUTES_MAP_NAME);
  const statsPin = path.join(pinDir, STATS_MAP_NAME);
  const configPin = path.join(pinDir, CONFIG_MAP_NAME);
  const maxEntries = resolveCapacity(opts.maxEntries, pinnedCapacity(routesPin), routesPin);

  const obj = openObject(objectPath);
  try {
    const routesMap = findMap(obj, ROUTES_MAP_NAME);
    const statsMap = findMap(obj, STATS_MAP_NAME);
    const configMap = findMap(obj, CONFIG_MAP_NAME);
    setPinPath(routesMap, routesPin);
    setPinPath(statsMap, statsPin);
    setPinPath(configMap, configPin);
    setMaxEntries(routesMap, maxEntries);
    unpinIfChanged(statsMap, statsPin, 'the XDP verdict counters restart from zero', opts.log);
    unpinIfChanged(configMap, configPin, 'the interface config is written again before the attach', opts.log);
    loadObject(obj, { path: objectPath, pinDir });

    // Before the attach, as a program without a config steers nothing. The program this one
    // replaces shares the pinned config and reads the same values; one left attached to an
    // interface batond no longer loads on stops steering there (passedUnconfigured).
    mapUpdate(mapFd(configMap), Buffer.alloc(4), config.value);

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
    opts.log?.info({ ifname: opts.ifname, ifindex, mac: config.mac, peerMacs: opts.peerMacs ?? [], mode: opts.mode, programId: id, pinDir, maxEntries }, 'XDP steering attached');

    return {
      routes,
      programId: id,
      ifname: opts.ifname,
      ifindex,
      mode: opts.mode,
      pinDir,
      deferToPeers(on: boolean): void {
        // After close() the config map's fd is gone: a role change during shutdown has nothing to tell.
        if (!open) return;
        mapUpdate(mapFd(configMap), Buffer.alloc(4), encodeConfig({ ifindex, mac: config.mac, peers: on ? (opts.peerMacs ?? []) : [] }));
      },
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
