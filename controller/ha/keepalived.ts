// keepalived (VRRPv3) decides which distributor is active: the one that holds the DVIPA on its
// segment interface. batond never runs an election of its own; it writes keepalived's config,
// runs it (one per node, several per machine in the lab: one per network namespace) and follows
// its notify FIFO (vrrp-state.ts). This file turns the cluster file's view of the distributors
// into the text of one node's keepalived.conf and the argv that runs it, and clears the pidfiles a
// killed keepalived leaves behind, which would stop the next one from starting.
//
// The text is generated from values that end up inside keepalived's own config syntax, where a
// blank separates words, `#` and `!` start comments, braces open blocks, `$` expands macros and a
// leading `@` selects lines by host: every value is checked against a narrow pattern first, so a
// hostile cluster file cannot smuggle a directive (a `notify` script run as root) into it.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { BatonError } from '../errors.js';
import { familyOf } from '../flow.js';

/** VRRP's virtual router id when the cluster file names none (keepalived's own example value). */
export const DEFAULT_ROUTER_ID = 51;
/** Advert interval when the cluster file names none: a dead MASTER is noticed in about 0.35 s. */
export const DEFAULT_ADVERT_MS = 100;
/** Priority of the first distributor; each later one gets PRIORITY_STEP less, never below 1. */
export const TOP_PRIORITY = 200;
/** 25 keeps the schema's eight distributors on distinct priorities (200 … 25): ties are broken by address, not by preference. */
export const PRIORITY_STEP = 25;

/** DVIPAs added through the API that keepalived holds: as many as a node keeps (dvipa-set.ts). */
const MAX_ADDED = 256;

/** Names (instance, node) as the cluster file's schema allows them: they become words in keepalived.conf. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
/**
 * Interface names Baton accepts here: Linux allows almost any byte, keepalived.conf does not
 * (blanks, quotes, `#`, `!`, braces). Real NIC names (eth0, ens6, enp0s7, baton0, veth names) fit.
 */
export const INTERFACE_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,14}$/;
/** An absolute path keepalived.conf and an argv can carry as one word. */
const SAFE_PATH = /^\/[A-Za-z0-9._/-]{1,1023}$/;

/** Everything one node's keepalived.conf depends on: derived by vrrpNodeSpec, or given directly. */
export interface VrrpNodeSpec {
  /** The cluster's instance name: names the VRRP instance, the same on every distributor. */
  instance: string;
  /** This node's name: part of keepalived's router_id, which must differ between nodes. */
  node: string;
  /**
   * The cluster file's DVIPA addresses, at most one per family: keepalived puts them (/32, /128) on
   * `interface` while this node is MASTER. The first one's family is the family of the adverts.
   */
  dvipas: readonly string[];
  /**
   * The DVIPAs added through the API (either family): held and announced with the cluster file's,
   * or nobody would answer for them (every node's copy on lo is silent when keepalived decides).
   */
  added: readonly string[];
  /** This node's interface on the shared segment: adverts, gratuitous ARP and the DVIPA go there. */
  interface: string;
  /** VRRP priority, 1–254 (255 means "address owner" and is never used: no node owns the DVIPA). */
  priority: number;
  /** VRRP virtual router id, 1–255: the same on every distributor, unique on the segment. */
  routerId: number;
  /** Advert interval in ms, 10–40950 in steps of 10 (VRRPv3 counts centiseconds). */
  advertMs: number;
  /** Absolute path of the FIFO keepalived writes its state changes to (vrrp-state.ts reads it). */
  notifyFifo: string;
  /**
   * Absolute path of the file batond writes 1 to while it hands the DVIPA over (`batonctl dvipa
   * move`): keepalived, which watches it, puts the instance in FAULT at once, gives the address
   * up and sends a priority-0 advert; the next distributor is MASTER within a fraction of an
   * advert interval. 0 lets the instance rejoin as BACKUP.
   */
  trackFile: string;
}

/** The part of the cluster file the VRRP setup reads (a subset of ClusterConfig). */
export interface VrrpClusterView {
  instance: string;
  dvipa: { addresses: readonly string[] };
  /** Node names in order of preference: the first gets the highest priority. */
  distributors: readonly string[];
  vrrp?: { routerId?: number; advertMs?: number };
  nodes: ReadonlyArray<{ name: string; interface: string }>;
}

/** Where one node's keepalived keeps its files. */
export interface KeepalivedPaths {
  config: string;
  /** The parent process's pidfile (`--pid`). */
  pidFile: string;
  /** The VRRP child's pidfile (`--vrrp_pid`). */
  vrrpPidFile: string;
  /** The checker and BFD children never run (`--vrrp`), but keepalived consults their pidfiles at start: ours, not /run's. */
  checkersPidFile: string;
  bfdPidFile: string;
  notifyFifo: string;
  /** VrrpNodeSpec.trackFile. */
  trackFile: string;
}

function configError(message: string, context: Record<string, unknown> = {}): BatonError {
  return new BatonError('E_CONFIG', message, { step: 'keepalived', ...context });
}

/** The keepalived vrrp_instance name for a cluster instance (what the FIFO's INSTANCE lines carry). */
export function vrrpInstanceName(instance: string): string {
  if (!NAME.test(instance)) throw configError(`instance ${JSON.stringify(instance.slice(0, 80))} is not a valid name for a VRRP instance`);
  return `baton-${instance}`;
}

/**
 * The VRRP priority of a distributor: by its position in `distributors`, the first highest.
 * Throws E_CONFIG for a node that is not a distributor: it must not run keepalived at all.
 */
export function distributorPriority(distributors: readonly string[], node: string): number {
  const index = distributors.indexOf(node);
  if (index < 0) throw configError(`node ${JSON.stringify(node.slice(0, 80))} is not one of the distributors (${distributors.slice(0, 8).join(', ')}): it runs no keepalived`, { node });
  return Math.max(1, TOP_PRIORITY - PRIORITY_STEP * index);
}

/** The spec of one distributor node's keepalived, from the cluster file and the DVIPAs added through the API. */
export function vrrpNodeSpec(cluster: VrrpClusterView, node: string, files: Pick<KeepalivedPaths, 'notifyFifo' | 'trackFile'>, added: readonly string[] = []): VrrpNodeSpec {
  const priority = distributorPriority(cluster.distributors, node);
  const self = cluster.nodes.find((n) => n.name === node);
  if (!self) throw configError(`distributor ${JSON.stringify(node.slice(0, 80))} is not one of the nodes`, { node });
  const spec: VrrpNodeSpec = {
    instance: cluster.instance,
    node,
    dvipas: [...cluster.dvipa.addresses],
    added: [...added],
    interface: self.interface,
    priority,
    routerId: cluster.vrrp?.routerId ?? DEFAULT_ROUTER_ID,
    advertMs: cluster.vrrp?.advertMs ?? DEFAULT_ADVERT_MS,
    notifyFifo: files.notifyFifo,
    trackFile: files.trackFile,
  };
  checkSpec(spec);
  return spec;
}

/** Throws E_CONFIG naming the first value that cannot go into keepalived.conf as given. */
export function checkSpec(spec: VrrpNodeSpec): void {
  const bad = (field: string, why: string) => configError(`keepalived ${field}: ${why}`, { node: NAME.test(spec.node) ? spec.node : undefined });
  if (!NAME.test(spec.instance)) throw bad('instance', `want ${NAME.source}`);
  if (!NAME.test(spec.node)) throw bad('node', `want ${NAME.source}`);
  // Checked here, not only by the cluster file's schema: the addresses become words in keepalived.conf.
  const families = spec.dvipas.map(familyOf);
  if (spec.dvipas.length < 1 || spec.dvipas.length > 2 || families.includes(undefined) || families[0] === families[1]) {
    throw bad('dvipas', 'want one IPv4 address, one IPv6 address, or one of each');
  }
  if (spec.added.length > MAX_ADDED || spec.added.some((a) => !familyOf(a) || spec.dvipas.includes(a))) {
    throw bad('added', `want at most ${MAX_ADDED} IPv4 or IPv6 addresses, none of them the cluster file's`);
  }
  if (!INTERFACE_NAME.test(spec.interface)) throw bad('interface', `want ${INTERFACE_NAME.source}`);
  if (!Number.isInteger(spec.priority) || spec.priority < 1 || spec.priority > 254) throw bad('priority', 'want an integer 1-254');
  if (!Number.isInteger(spec.routerId) || spec.routerId < 1 || spec.routerId > 255) throw bad('routerId', 'want an integer 1-255');
  if (!Number.isInteger(spec.advertMs) || spec.advertMs < 10 || spec.advertMs > 40_950 || spec.advertMs % 10 !== 0) {
    throw bad('advertMs', 'want 10-40950 ms in steps of 10 (VRRPv3 counts centiseconds)');
  }
  checkPath('notifyFifo', spec.notifyFifo);
  checkPath('trackFile', spec.trackFile);
}

function checkPath(field: string, file: string): void {
  if (!SAFE_PATH.test(file) || file.split('/').includes('..')) {
    throw configError(`keepalived ${field}: want an absolute path of letters, digits, '.', '_', '-' and '/' (no '..'), got ${JSON.stringify(file.slice(0, 80))}`);
  }
}

/** keepalived's vrrp_rlimit_rttime (keepalivedConfig says why). */
export const VRRP_RLIMIT_RTTIME_US = 1_000_000;

/**
 * The text of one node's keepalived.conf. Every distributor gets the same instance, router id,
 * DVIPA and timers; only router_id, priority, interface and the FIFO differ.
 */
export function keepalivedConfig(spec: VrrpNodeSpec): string {
  checkSpec(spec);
  const name = vrrpInstanceName(spec.instance);
  const advertS = String(spec.advertMs / 1000);
  const excluded = [...spec.dvipas.slice(1), ...spec.added];
  return `# keepalived.conf of Baton cluster ${spec.instance}, node ${spec.node}, generated from the cluster file
# (controller/ha/keepalived.ts): change that, not this. keepalived decides which distributor
# holds the DVIPA; batond follows it (docs/operations.md, "Backup distributor").
global_defs {
  # Names this node in keepalived's logs: differs on every node.
  router_id baton-${spec.instance}-${spec.node}
  # VRRPv3 (RFC 5798): advert intervals below a second (v2 counts whole seconds).
  vrrp_version 3
  # No script is configured; should one ever be, it runs as nobody, and only from root-owned paths.
  script_user nobody
  enable_script_security
  # Adverts are sub-second: a VRRP process scheduled one interval late goes realtime (SCHED_RR)
  # instead of letting the backup take over a live MASTER.
  max_auto_priority 10
  min_auto_priority_delay ${spec.advertMs * 1000}
  # Realtime comes with RLIMIT_RTTIME: CPU time between blocking calls past it, and the kernel
  # kills the VRRP process (keepalived respawns it, BACKUP: a role change for nothing). The
  # default 10 ms is counted on a VM's clock, which runs on while the host has descheduled its
  # virtual CPU: under QEMU it killed both distributors' VRRP processes within a second of going
  # realtime. One second still ends a process that is really stuck.
  vrrp_rlimit_rttime ${VRRP_RLIMIT_RTTIME_US}
  # On becoming MASTER: 5 gratuitous ARPs at once (keepalived's default), and 5 more 1 s later
  # rather than 5 s: a neighbour that missed the first burst follows the DVIPA within a second.
  vrrp_garp_master_repeat 5
  vrrp_garp_master_delay 1
  # While MASTER, one gratuitous ARP a minute: a neighbour left pointing at the other node (after
  # both were MASTER for a while) is put right without waiting for its ARP entry to expire.
  vrrp_garp_master_refresh 60
  vrrp_garp_master_refresh_repeat 1
  # Two MASTERs meeting again: the one giving way sends one more advert first, so the one that
  # stays MASTER answers with gratuitous ARPs, the last ones the segment hears.
  vrrp_higher_prio_send_advert true
  # No vrrp_strict: it would add firewall rules dropping traffic to the DVIPA (no_accept).
  # State changes, one line each (INSTANCE "name" MASTER 200), read by batond.
  notify_fifo ${spec.notifyFifo}
  # A reload (SIGHUP) writes the current state again, so batond's view survives it.
  fifo_write_vrrp_states_on_reload
}

# batond writes 1 here while it hands the DVIPA over (batonctl dvipa move): FAULT at once, the
# address given up with a priority-0 advert, so the next distributor takes it within a fraction
# of an advert interval. keepalived starts the file at 0: a move never outlives a restart.
track_file baton-handover {
  file ${spec.trackFile}
  weight 0
  init_file 0 overwrite
}

vrrp_instance ${name} {
  # Every node starts as BACKUP and listens for three adverts before claiming the DVIPA.
  state BACKUP
  # A node that comes back (reboot, restart) does not take the DVIPA back from the active one:
  # each move is a takeover, and nobody asked for this one. Preference still decides among
  # BACKUPs, and between two MASTERs.
  nopreempt
  interface ${spec.interface}
  track_file {
    baton-handover
  }
  virtual_router_id ${spec.routerId}
  priority ${spec.priority}
  advert_int ${advertS}
  virtual_ipaddress {
    # Only while MASTER: the address on the segment's interface answers ARP (arp_ignore=1 on
    # every node) or neighbour solicitations (the kernel answers them only for addresses on the
    # interface asked). The same address stays on lo of every node for direct server return;
    # keepalived never touches it.
    ${vipLine(spec.dvipas[0]!, spec.interface)}
  }${excluded.length ? `
  # The other family's address and the DVIPAs added through the API (batond rewrites this file
  # and reloads keepalived when those change): held and announced (gratuitous ARP or unsolicited
  # neighbour advertisements) like the first, but not carried in the adverts, which have one
  # family and a bounded length.
  virtual_ipaddress_excluded {
    ${excluded.map((a) => vipLine(a, spec.interface)).join('\n    ')}
  }` : ''}
}
`;
}

/** One address line of a virtual_ipaddress block: a host address on the segment's interface. */
function vipLine(address: string, iface: string): string {
  return `${address}/${net.isIPv4(address) ? 32 : 128} dev ${iface}`;
}

/** The files of one node's keepalived in dir (a run directory: /run/baton, the lab's). */
export function keepalivedPaths(dir: string, instance: string, node: string): KeepalivedPaths {
  if (!NAME.test(instance) || !NAME.test(node)) throw configError('keepalived paths: instance and node must be valid names');
  const base = path.join(dir, `keepalived-${instance}-${node}`);
  checkPath('directory', base);
  // Not "*.pid": the lab supervisor treats every *.pid in its run directory as one of its processes.
  const paths: KeepalivedPaths = {
    config: `${base}.conf`,
    pidFile: `${base}.main-pid`,
    vrrpPidFile: `${base}.vrrp-pid`,
    checkersPidFile: `${base}.checkers-pid`,
    bfdPidFile: `${base}.bfd-pid`,
    notifyFifo: `${base}.fifo`,
    trackFile: `${base}.handover`,
  };
  return paths;
}

/**
 * The argv that runs one node's keepalived in the foreground (the caller supervises it, inside
 * the node's network namespace): VRRP only, logging to stdout/stderr only (no syslog), with its
 * own config and pidfiles so several run on one machine. SIGTERM stops it cleanly: it removes the
 * DVIPA from the interface, sends a priority-0 advert (the backup takes over at once) and writes
 * STOP to the FIFO. keepalived respawns its VRRP child itself if that one dies.
 */
export function keepalivedArgv(paths: KeepalivedPaths): string[] {
  for (const [field, file] of Object.entries(paths)) checkPath(field, file);
  return ['keepalived',
    '--dont-fork', '--log-console', '--no-syslog', '--vrrp',
    '--use-file', paths.config,
    '--pid', paths.pidFile,
    '--vrrp_pid', paths.vrrpPidFile,
    '--checkers_pid', paths.checkersPidFile,
    '--bfd_pid', paths.bfdPidFile,
  ];
}

/** Whether pid is a live (not zombie) process called keepalived, as /proc/<pid>/stat says. */
function isKeepalived(pid: number): boolean {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  // "pid (comm) S …": comm may hold spaces or ')', the state follows the last ')'.
  const close = stat.lastIndexOf(')');
  const comm = stat.slice(stat.indexOf('(') + 1, close);
  const state = stat.slice(close + 2, close + 3);
  return comm === 'keepalived' && state !== 'Z' && state !== 'X';
}

function pidIn(file: string): number | undefined {
  const buf = Buffer.alloc(32);
  let n: number;
  try {
    const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
    try {
      n = fs.readSync(fd, buf, 0, buf.length, 0);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return undefined;
  }
  const pid = Number(buf.subarray(0, n).toString('latin1').trim());
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

/** The pid of the keepalived these paths' main pidfile names, if it still runs. */
export function runningKeepalived(paths: KeepalivedPaths): number | undefined {
  const pid = pidIn(paths.pidFile);
  return pid !== undefined && isKeepalived(pid) ? pid : undefined;
}

/**
 * Removes the pidfiles that name no running keepalived, and returns them. keepalived refuses to
 * start ("daemon is already running") while any of its pidfiles names a process that answers
 * kill(pid, 0), whatever that process is: after a SIGKILL the files stay, and the pid in them
 * may be a zombie not yet reaped, or already another process's. A live keepalived's files are
 * kept (runningKeepalived says which; stop or adopt it rather than start a second one).
 */
export function clearStalePidFiles(paths: KeepalivedPaths): string[] {
  const removed: string[] = [];
  for (const file of [paths.pidFile, paths.vrrpPidFile, paths.checkersPidFile, paths.bfdPidFile]) {
    if (!fs.existsSync(file)) continue;
    const pid = pidIn(file);
    if (pid !== undefined && isKeepalived(pid)) continue;
    fs.rmSync(file, { force: true });
    removed.push(file);
  }
  return removed;
}

/** Writes the config atomically (a running keepalived reads it again on SIGHUP), 0644: it holds no secret. */
export function writeKeepalivedConfig(file: string, text: string): void {
  checkPath('config', file);
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(tmp, text, { mode: 0o644 });
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw configError(`cannot write ${file}: ${(err as Error).message}`, { file });
  }
}

/**
 * Says to keepalived (through the track file) whether this node is handing the DVIPA over: in
 * place, as keepalived watches the file itself (inotify), not its directory entry. Root-owned,
 * 0644, never through a symbolic link; its directory created if missing.
 */
export function writeTrackFile(file: string, handingOver: boolean): void {
  checkPath('trackFile', file);
  const { O_WRONLY, O_CREAT, O_TRUNC, O_NOFOLLOW } = fs.constants;
  try {
    // The state directory of a node that never ran batond does not exist yet (a fresh machine:
    // found on the first real VM, where batond failed at start).
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
    const fd = fs.openSync(file, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0o644);
    try {
      fs.writeSync(fd, handingOver ? '1\n' : '0\n');
    } finally {
      fs.closeSync(fd);
    }
  } catch (err) {
    throw new BatonError('E_NATIVE', `cannot write keepalived's track file ${file}: ${(err as Error).message}`, { step: 'dvipa-move', file });
  }
}

