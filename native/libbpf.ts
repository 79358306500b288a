// libbpf (the system's libbpf.so.1) and the few libc calls the XDP lifecycle needs, through
// koffi. Thin on purpose: one typed wrapper per C function, a failure becomes a BatonError
// carrying the errno and its name, and everything above this file speaks Buffers and numbers.
//
// Error conventions of libbpf 1.x (always "strict" mode): int-returning calls return -errno;
// pointer-returning calls return NULL and set errno. libc calls return -1 and set errno.
//
// libbpf's own messages (why a map could not be reused, the verifier's log) are captured, not
// printed: libbpf writes them to stderr by default, which interleaves badly with structured
// logs. The print callback formats each message with vsnprintf on the va_list libbpf hands
// over: on x86-64 (and, by the AAPCS64 rules, arm64; not tried there) a va_list argument
// arrives as a pointer and can be forwarded untouched; elsewhere only the format string is
// kept. Recent lines are attached to the error of a failing open/load, and forwarded to a
// logger if one is set with setLibbpfLogger().
import os from 'node:os';
import koffi, { type TypeObject } from 'koffi';
import { BatonError } from '../controller/errors.js';
import { errnoName } from './errno.js';

// ---- constants from <linux/bpf.h>, <linux/if_link.h>, <linux/magic.h> -------------------

export const BPF_ANY = 0;
export const BPF_NOEXIST = 1;
export const BPF_EXIST = 2;

export const XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0;
export const XDP_FLAGS_SKB_MODE = 1 << 1;
export const XDP_FLAGS_DRV_MODE = 1 << 2;
export const XDP_FLAGS_REPLACE = 1 << 4;

export const BPF_FS_MAGIC = 0xcafe4a11;

// struct bpf_xdp_attach_opts { size_t sz; int old_prog_fd; size_t :0; } on LP64.
const XDP_ATTACH_OPTS_SIZE = 16;
// struct bpf_prog_info / bpf_map_info are larger; the kernel copies min(len, its size) and
// rejects non-zero bytes beyond what it knows, so a zeroed generous buffer is always accepted.
const OBJ_INFO_BUF_SIZE = 256;
const MAP_NAME_LEN = 16;

// ---- bindings ---------------------------------------------------------------------------

const lib = koffi.load('libbpf.so.1');
const libc = koffi.load('libc.so.6');

// koffi's type names are process-wide and a second definition throws; a test runner that loads
// this module twice in one process (module isolation without process isolation) must not crash.
function defineOnce(name: string, define: () => TypeObject): TypeObject {
  try {
    return koffi.type(name);
  } catch {
    return define();
  }
}
defineOnce('bpf_object', () => koffi.opaque('bpf_object'));
defineOnce('bpf_program', () => koffi.opaque('bpf_program'));
defineOnce('bpf_map', () => koffi.opaque('bpf_map'));
const PrintFn = defineOnce('baton_libbpf_print_fn', () => koffi.proto('int baton_libbpf_print_fn(int level, void *fmt, void *ap)'));

const c = {
  openFile: lib.func('bpf_object *bpf_object__open_file(const char *path, const void *opts)'),
  load: lib.func('int bpf_object__load(bpf_object *obj)'),
  close: lib.func('void bpf_object__close(bpf_object *obj)'),
  findProgram: lib.func('bpf_program *bpf_object__find_program_by_name(bpf_object *obj, const char *name)'),
  programFd: lib.func('int bpf_program__fd(bpf_program *prog)'),
  findMap: lib.func('bpf_map *bpf_object__find_map_by_name(bpf_object *obj, const char *name)'),
  mapFd: lib.func('int bpf_map__fd(bpf_map *map)'),
  setPinPath: lib.func('int bpf_map__set_pin_path(bpf_map *map, const char *path)'),
  setMaxEntries: lib.func('int bpf_map__set_max_entries(bpf_map *map, uint32_t max_entries)'),
  mapType: lib.func('int bpf_map__type(bpf_map *map)'),
  mapKeySize: lib.func('uint32_t bpf_map__key_size(bpf_map *map)'),
  mapValueSize: lib.func('uint32_t bpf_map__value_size(bpf_map *map)'),
  mapMaxEntries: lib.func('uint32_t bpf_map__max_entries(bpf_map *map)'),
  mapFlags: lib.func('uint32_t bpf_map__map_flags(bpf_map *map)'),
  objGet: lib.func('int bpf_obj_get(const char *pathname)'),
  objGetInfo: lib.func('int bpf_obj_get_info_by_fd(int fd, void *info, _Inout_ uint32_t *len)'),
  mapUpdate: lib.func('int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)'),
  mapLookup: lib.func('int bpf_map_lookup_elem(int fd, const void *key, void *value)'),
  mapDelete: lib.func('int bpf_map_delete_elem(int fd, const void *key)'),
  mapNextKey: lib.func('int bpf_map_get_next_key(int fd, const void *key, void *next_key)'),
  progTestRun: lib.func('int bpf_prog_test_run_opts(int prog_fd, void *opts)'),
  xdpAttach: lib.func('int bpf_xdp_attach(int ifindex, int prog_fd, uint32_t flags, const void *opts)'),
  xdpDetach: lib.func('int bpf_xdp_detach(int ifindex, uint32_t flags, const void *opts)'),
  xdpQueryId: lib.func('int bpf_xdp_query_id(int ifindex, int flags, _Out_ uint32_t *prog_id)'),
  numPossibleCpus: lib.func('int libbpf_num_possible_cpus(void)'),
  setPrint: lib.func('void *libbpf_set_print(baton_libbpf_print_fn *fn)'),
  vsnprintf: libc.func('int vsnprintf(void *buf, size_t size, void *fmt, void *ap)'),
  ifNameToIndex: libc.func('unsigned int if_nametoindex(const char *ifname)'),
  closeFd: libc.func('int close(int fd)'),
  mount: libc.func('int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const void *data)'),
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  ioctl: libc.func('int ioctl(int fd, unsigned long request, ...)'),
};

// ---- errors -----------------------------------------------------------------------------


function fail(fn: string, errno: number, context: Record<string, unknown> = {}): never {
  throw new BatonError('E_BPF', `${fn} failed: ${errnoName(errno)}`, {
    step: fn,
    errno,
    errnoName: errnoName(errno),
    ...context,
  });
}

/** libbpf int returns: negative is -errno. */
function checkNeg(fn: string, ret: number, context?: Record<string, unknown>): number {
  if (ret < 0) fail(fn, -ret, context);
  return ret;
}

// ---- libbpf's messages ------------------------------------------------------------------

export type LibbpfLevel = 'warn' | 'info' | 'debug';
export type LibbpfLogger = (level: LibbpfLevel, message: string) => void;

const LEVELS: readonly LibbpfLevel[] = ['warn', 'info', 'debug'];
const RECENT_MAX_LINES = 40;
const MESSAGE_MAX_BYTES = 4096;
const FORWARD_VA_LIST = process.arch === 'x64' || process.arch === 'arm64';

let logger: LibbpfLogger | null = null;
let wantDebug = false;
let recent: string[] = [];
const formatBuf = Buffer.alloc(MESSAGE_MAX_BYTES);

function onLibbpfMessage(level: number, fmt: bigint | null, ap: bigint | null): number {
  try {
    const name = LEVELS[level] ?? 'debug';
    if (name === 'debug' && !wantDebug) return 0;
    let text: string;
    if (FORWARD_VA_LIST && fmt !== null && ap !== null) {
      const n = c.vsnprintf(formatBuf, formatBuf.length, fmt, ap) as number;
      text = formatBuf.toString('utf8', 0, Math.max(0, Math.min(n, formatBuf.length - 1)));
    } else {
      text = fmt === null ? '' : koffi.decode.string(fmt);
    }
    text = text.trimEnd();
    if (text === '') return 0;
    if (name !== 'debug') {
      recent.push(text);
      if (recent.length > RECENT_MAX_LINES) recent = recent.slice(-RECENT_MAX_LINES);
    }
    logger?.(name, text);
  } catch {
    // A logging failure must never unwind through libbpf's C frames.
  }
  return 0;
}

// Registered once for the life of the process: libbpf keeps the pointer in a global.
const printCallback = koffi.register(onLibbpfMessage, koffi.pointer(PrintFn));
c.setPrint(printCallback);

/** Route libbpf's warnings and info (and debug, if asked) to a logger; null keeps them only for error reports. */
export function setLibbpfLogger(fn: LibbpfLogger | null, opts: { debug?: boolean } = {}): void {
  logger = fn;
  wantDebug = fn !== null && opts.debug === true;
}

/** Runs a call and, if it throws, attaches what libbpf said meanwhile to the error. */
function withLibbpfMessages<T>(call: () => T): T {
  recent = [];
  try {
    return call();
  } catch (err) {
    if (err instanceof BatonError && recent.length > 0) err.context.libbpf = recent.join('\n');
    throw err;
  }
}

// ---- objects, programs, maps ------------------------------------------------------------

declare const objectBrand: unique symbol;
declare const programBrand: unique symbol;
declare const mapBrand: unique symbol;
/** Opaque libbpf pointers (koffi 3 passes pointers as bigint). */
export type BpfObject = bigint & { [objectBrand]: true };
export type BpfProgram = bigint & { [programBrand]: true };
export type BpfMap = bigint & { [mapBrand]: true };

export function openObject(path: string): BpfObject {
  return withLibbpfMessages(() => {
    const obj = c.openFile(path, null) as bigint | null;
    if (obj === null) fail('bpf_object__open_file', koffi.errno(), { path });
    return obj as BpfObject;
  });
}

export function loadObject(obj: BpfObject, context: Record<string, unknown> = {}): void {
  withLibbpfMessages(() => checkNeg('bpf_object__load', c.load(obj) as number, context));
}

export function closeObject(obj: BpfObject): void {
  c.close(obj);
}

export function findProgram(obj: BpfObject, name: string): BpfProgram {
  const prog = c.findProgram(obj, name) as bigint | null;
  if (prog === null) fail('bpf_object__find_program_by_name', koffi.errno(), { program: name });
  return prog as BpfProgram;
}

export function programFd(prog: BpfProgram): number {
  return checkNeg('bpf_program__fd', c.programFd(prog) as number);
}

export function findMap(obj: BpfObject, name: string): BpfMap {
  const map = c.findMap(obj, name) as bigint | null;
  if (map === null) fail('bpf_object__find_map_by_name', koffi.errno(), { map: name });
  return map as BpfMap;
}

export function mapFd(map: BpfMap): number {
  return checkNeg('bpf_map__fd', c.mapFd(map) as number);
}

/** Must run before load: libbpf then reuses a compatible map pinned there, or pins the new one. */
export function setPinPath(map: BpfMap, path: string): void {
  checkNeg('bpf_map__set_pin_path', c.setPinPath(map, path) as number, { path });
}

/** Must run before load. */
export function setMaxEntries(map: BpfMap, maxEntries: number): void {
  checkNeg('bpf_map__set_max_entries', c.setMaxEntries(map, maxEntries) as number, { maxEntries });
}

/** What an opened object declares for a map (after any set_max_entries): the fields libbpf compares with a pinned map before reusing it. */
export function mapDefinition(map: BpfMap): Pick<BpfMapInfo, 'type' | 'keySize' | 'valueSize' | 'maxEntries' | 'flags'> {
  return {
    type: c.mapType(map) as number,
    keySize: c.mapKeySize(map) as number,
    valueSize: c.mapValueSize(map) as number,
    maxEntries: c.mapMaxEntries(map) as number,
    flags: c.mapFlags(map) as number,
  };
}

/** Opens a pinned object; the caller owns (and must close) the returned fd. */
export function objGet(path: string): number {
  return checkNeg('bpf_obj_get', c.objGet(path) as number, { path });
}

export interface BpfMapInfo {
  type: number;
  id: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
  name: string;
}

function objInfo(fd: number): Buffer {
  const info = Buffer.alloc(OBJ_INFO_BUF_SIZE);
  const len = [OBJ_INFO_BUF_SIZE];
  checkNeg('bpf_obj_get_info_by_fd', c.objGetInfo(fd, info, len) as number, { fd });
  return info;
}

export function mapInfo(fd: number): BpfMapInfo {
  // struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags, name[16].
  const info = objInfo(fd);
  const name = info.subarray(24, 24 + MAP_NAME_LEN);
  const nul = name.indexOf(0);
  return {
    type: info.readUInt32LE(0),
    id: info.readUInt32LE(4),
    keySize: info.readUInt32LE(8),
    valueSize: info.readUInt32LE(12),
    maxEntries: info.readUInt32LE(16),
    flags: info.readUInt32LE(20),
    name: name.toString('latin1', 0, nul < 0 ? MAP_NAME_LEN : nul),
  };
}

/** The kernel's id of a loaded program (what `bpftool prog show id N` and `ip link` display). */
export function programId(fd: number): number {
  // struct bpf_prog_info: type, id, ...
  return objInfo(fd).readUInt32LE(4);
}

// ---- map elements -----------------------------------------------------------------------

export function mapUpdate(fd: number, key: Buffer, value: Buffer, flags = BPF_ANY): void {
  checkNeg('bpf_map_update_elem', c.mapUpdate(fd, key, value, flags) as number, { fd });
}

/** Fills value and returns true, or returns false when the key is absent. */
export function mapLookup(fd: number, key: Buffer, value: Buffer): boolean {
  const ret = c.mapLookup(fd, key, value) as number;
  if (ret === -os.constants.errno.ENOENT) return false;
  checkNeg('bpf_map_lookup_elem', ret, { fd });
  return true;
}

/** Returns false when the key was absent. */
export function mapDelete(fd: number, key: Buffer): boolean {
  const ret = c.mapDelete(fd, key) as number;
  if (ret === -os.constants.errno.ENOENT) return false;
  checkNeg('bpf_map_delete_elem', ret, { fd });
  return true;
}

/** Writes the key after `key` (the first key when null) into next; false at the end. */
export function mapNextKey(fd: number, key: Buffer | null, next: Buffer): boolean {
  const ret = c.mapNextKey(fd, key, next) as number;
  if (ret === -os.constants.errno.ENOENT) return false;
  checkNeg('bpf_map_get_next_key', ret, { fd });
  return true;
}

// ---- test runs --------------------------------------------------------------------------

// struct bpf_test_run_opts on LP64, through batch_size: sz 0, data_in 8, data_size_in 24,
// ctx_in 32, ctx_size_in 48, retval 56, repeat 60, duration 64 (the rest stays zero).
const TEST_RUN_OPTS_SIZE = 80;
// struct xdp_md: data 0, data_end 4, data_meta 8, ingress_ifindex 12, rx_queue_index 16, egress_ifindex 20.
const XDP_MD_SIZE = 24;

/**
 * Runs an XDP program `repeat` times on one frame inside the kernel (BPF_PROG_TEST_RUN), as if
 * it had arrived on ingressIfindex (an interface of the calling thread's network namespace).
 * batond never needs it; the benchmarks and tests drive the steering program with it. The
 * kernel works on its own copy of the frame, and each repetition sees what the previous one
 * wrote into it. retval is the verdict, durationNs the average time of one run.
 */
export function xdpTestRun(progFd: number, frame: Buffer, opts: { ingressIfindex: number; repeat: number }): { retval: number; durationNs: number } {
  const ctx = Buffer.alloc(XDP_MD_SIZE);
  ctx.writeUInt32LE(frame.length, 4);
  ctx.writeUInt32LE(opts.ingressIfindex, 12);
  const o = Buffer.alloc(TEST_RUN_OPTS_SIZE);
  o.writeBigUInt64LE(BigInt(TEST_RUN_OPTS_SIZE), 0);
  o.writeBigUInt64LE(koffi.address(frame), 8);
  o.writeUInt32LE(frame.length, 24);
  o.writeBigUInt64LE(koffi.address(ctx), 32);
  o.writeUInt32LE(ctx.length, 48);
  o.writeInt32LE(opts.repeat, 60);
  checkNeg('bpf_prog_test_run_opts', c.progTestRun(progFd, o) as number, { fd: progFd });
  return { retval: o.readUInt32LE(56), durationNs: o.readUInt32LE(64) };
}

// ---- XDP attachment ---------------------------------------------------------------------

function attachOpts(oldProgFd: number | undefined): Buffer | null {
  if (oldProgFd === undefined) return null;
  const opts = Buffer.alloc(XDP_ATTACH_OPTS_SIZE);
  opts.writeBigUInt64LE(BigInt(XDP_ATTACH_OPTS_SIZE), 0);
  opts.writeInt32LE(oldProgFd, 8);
  return opts;
}

/**
 * Attaches in the mode given by flags; without UPDATE_IF_NOEXIST it replaces whatever runs in
 * that mode. With oldProgFd (and XDP_FLAGS_REPLACE) it replaces only that program.
 */
export function xdpAttach(ifindex: number, progFd: number, flags: number, oldProgFd?: number): void {
  checkNeg('bpf_xdp_attach', c.xdpAttach(ifindex, progFd, flags, attachOpts(oldProgFd)) as number, { ifindex, flags });
}

/** With oldProgFd (and XDP_FLAGS_REPLACE) detaches only if that program is the one attached (else EEXIST). */
export function xdpDetach(ifindex: number, flags: number, oldProgFd?: number): void {
  checkNeg('bpf_xdp_detach', c.xdpDetach(ifindex, flags, attachOpts(oldProgFd)) as number, { ifindex, flags });
}

/** The id of the program attached in the given mode, 0 if none. */
export function xdpQueryId(ifindex: number, flags: number): number {
  const id = [0];
  checkNeg('bpf_xdp_query_id', c.xdpQueryId(ifindex, flags, id) as number, { ifindex, flags });
  return id[0] ?? 0;
}

// ---- system -----------------------------------------------------------------------------

/** Per-CPU map values hold one slot per *possible* CPU, which can exceed the online count. */
export function numPossibleCpus(): number {
  return checkNeg('libbpf_num_possible_cpus', c.numPossibleCpus() as number);
}

/** Resolved in the calling thread's network namespace. */
export function ifNameToIndex(ifname: string): number {
  const index = c.ifNameToIndex(ifname) as number;
  if (index === 0) fail('if_nametoindex', koffi.errno(), { ifname });
  return index;
}

export function closeFd(fd: number): void {
  if ((c.closeFd(fd) as number) < 0) fail('close', koffi.errno(), { fd });
}

// <sys/socket.h>, <linux/sockios.h>, <net/if.h>, <net/if_arp.h>.
const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const SIOCGIFHWADDR = 0x8927;
const IFNAMSIZ = 16;
/** struct ifreq: the name, then a 24-byte union whose ifr_hwaddr is a struct sockaddr (family, then the address). */
const IFREQ_SIZE = 40;
const IFREQ_HWADDR_FAMILY = 16;
const IFREQ_HWADDR_DATA = 18;
export const ARPHRD_ETHER = 1;
const ETH_ALEN = 6;

/**
 * An interface's hardware type (ARPHRD_*) and its first 6 address bytes (the MAC, for
 * ARPHRD_ETHER), resolved in the calling thread's network namespace: the socket the ioctl runs
 * on belongs to it, where /sys/class/net would show the mount namespace's.
 */
export function ifHardwareAddress(ifname: string): { type: number; address: Buffer } {
  const name = Buffer.from(ifname, 'utf8');
  if (name.length === 0 || name.length >= IFNAMSIZ || name.includes(0)) fail('SIOCGIFHWADDR', os.constants.errno.ENODEV, { ifname });
  const fd = c.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) fail('socket', koffi.errno(), { ifname });
  try {
    const ifr = Buffer.alloc(IFREQ_SIZE);
    name.copy(ifr);
    if ((c.ioctl(fd, SIOCGIFHWADDR, 'void *', ifr) as number) < 0) fail('SIOCGIFHWADDR', koffi.errno(), { ifname });
    const type = os.endianness() === 'LE' ? ifr.readUInt16LE(IFREQ_HWADDR_FAMILY) : ifr.readUInt16BE(IFREQ_HWADDR_FAMILY);
    return { type, address: Buffer.from(ifr.subarray(IFREQ_HWADDR_DATA, IFREQ_HWADDR_DATA + ETH_ALEN)) };
  } finally {
    closeFd(fd);
  }
}

/** Mounts a BPF filesystem instance (what systemd does at boot for /sys/fs/bpf). */
export function mountBpffs(target: string): void {
  if ((c.mount('bpf', target, 'bpf', 0, null) as number) < 0) fail('mount', koffi.errno(), { target, fstype: 'bpf' });
}
