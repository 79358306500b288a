// What batond listens on, checked before it touches the node. Another process holding one of those
// addresses (a second batond, a stale one still exiting, anything configured on the same port)
// must stop the start with an error naming the address and, when /proc lets batond see it, the
// holder's pid and command: before the DVIPA is on lo and XDP attached, and never by taking the
// address over (removing a live agent socket file cuts the running batond off its applications).
//
// The holder is found the way ss -p finds it: the socket's inode from /proc/net/{tcp,tcp6,udp,udp6}
// or /proc/net/unix (this network namespace's tables), then the process with a descriptor on
// socket:[inode] in /proc/<pid>/fd. Reading another process's descriptors takes ptrace read access:
// under the systemd unit's capabilities (no CAP_SYS_PTRACE) a holder with more capabilities than
// batond stays anonymous, and the error says so.
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import type { ClusterConfig, NodeConfig } from '../config/cluster.js';
import { BatonError } from '../errors.js';
import { addressToBytes } from '../flow.js';
import { bounded } from '../input.js';

export interface InetEndpoint {
  proto: 'tcp' | 'udp';
  /** An IPv4 or IPv6 address (nodes[].address, in its canonical text), or 127.0.0.1. */
  host: string;
  port: number;
  /** What it is for, as the config names it: "peer links (nodes[].peerPort)". */
  what: string;
}

export interface UnixEndpoint {
  proto: 'unix';
  path: string;
  what: string;
}

export type Endpoint = InetEndpoint | UnixEndpoint;

export interface SocketEntry {
  /** The local address's bytes, network order: 4 from a tcp or udp table, 16 from tcp6 or udp6. */
  address: Buffer;
  port: number;
  /** The kernel's state number: 0x0A is a listening TCP socket. */
  state: number;
  inode: number;
}

export interface UnixEntry {
  path: string;
  inode: number;
  listening: boolean;
}

export type Holder = { pid: number; command: string } | { unreadable: true } | undefined;

const TCP_LISTEN = 0x0a;
/** Unix socket flag __SO_ACCEPTCON: the socket listens. */
const UNIX_ACCEPTCON = 0x10000;
/**
 * Descriptors looked at while searching for a holder, at most: the search only explains a failed
 * start, and must not make one slow on a machine with very many open files.
 */
const MAX_FDS_SCANNED = 200_000;
/** Table lines read, at most: a namespace with more sockets than this gets an anonymous holder. */
const MAX_TABLE_LINES = 100_000;

export function describeEndpoint(e: Endpoint): string {
  return e.proto === 'unix' ? `${e.what} ${e.path}` : `${e.what}, ${e.proto} ${e.host}:${e.port}`;
}

/** One /proc/net/{tcp,udp}[6] address ("0100007F:1F90"), on a host of this byte order. */
function procAddress(hex: string, endianness: 'LE' | 'BE'): { address: Buffer; port: number } | undefined {
  const [addr, port] = hex.split(':');
  if (!addr || !port || !/^[0-9A-Fa-f]+$/.test(addr) || (addr.length !== 8 && addr.length !== 32) || !/^[0-9A-Fa-f]{4}$/.test(port)) return undefined;
  // The kernel prints each 32-bit word of the network-order address as a host-order integer.
  const address = Buffer.from(addr, 'hex');
  if (endianness === 'LE') for (let i = 0; i < address.length; i += 4) address.subarray(i, i + 4).reverse();
  return { address, port: parseInt(port, 16) };
}

/** The entries of a /proc/net/{tcp,tcp6,udp,udp6} table; lines it cannot read are skipped. */
export function parseInetTable(text: string, endianness: 'LE' | 'BE' = os.endianness()): SocketEntry[] {
  const out: SocketEntry[] = [];
  for (const line of text.split('\n').slice(1, MAX_TABLE_LINES + 1)) {
    const f = line.trim().split(/\s+/);
    const local = f[1] && procAddress(f[1], endianness);
    const inode = Number(f[9]);
    if (!local || !/^[0-9A-Fa-f]{2}$/.test(f[3] ?? '') || !Number.isSafeInteger(inode)) continue;
    out.push({ ...local, state: parseInt(f[3]!, 16), inode });
  }
  return out;
}

/** The entries of /proc/net/unix that have a path (abstract ones start with @). */
export function parseUnixTable(text: string): UnixEntry[] {
  const out: UnixEntry[] = [];
  for (const line of text.split('\n').slice(1, MAX_TABLE_LINES + 1)) {
    const f = line.trim().split(/\s+/);
    const flags = parseInt(f[3] ?? '', 16);
    const inode = Number(f[6]);
    if (f.length < 8 || !Number.isSafeInteger(inode) || Number.isNaN(flags)) continue;
    out.push({ path: f.slice(7).join(' '), inode, listening: (flags & UNIX_ACCEPTCON) !== 0 });
  }
  return out;
}

const V4_MAPPED = Buffer.from('00000000000000000000ffff', 'hex');

/** Does a socket bound to this address keep host from binding the same port? */
function covers(address: Buffer, host: string): boolean {
  if (net.isIPv6(host)) {
    // Only an IPv6 socket can hold an IPv6 address: the same one, or :: (the wildcard).
    return address.length === 16 && (address.every((b) => b === 0) || address.equals(addressToBytes(6, host)));
  }
  const mine = Buffer.from(host.split('.').map(Number));
  if (address.every((b) => b === 0)) return true; // 0.0.0.0, or :: (dual-stack unless v6only)
  if (address.length === 4) return address.equals(mine);
  return address.subarray(0, 12).equals(V4_MAPPED) && address.subarray(12).equals(mine);
}

function readTable(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    // A kernel without IPv6 has no tcp6 table: nothing there can hold the address.
    return '';
  }
}

/** The inode of the socket holding e in this network namespace, listening ones first. */
export function holdingInode(e: Endpoint, procRoot = '/proc'): number | undefined {
  if (e.proto === 'unix') {
    const entries = parseUnixTable(readTable(`${procRoot}/net/unix`)).filter((u) => u.path === e.path);
    return (entries.find((u) => u.listening) ?? entries[0])?.inode;
  }
  const entries = ['', '6']
    .flatMap((v) => parseInetTable(readTable(`${procRoot}/net/${e.proto}${v}`)))
    .filter((s) => s.port === e.port && covers(s.address, e.host));
  return (entries.find((s) => e.proto === 'udp' || s.state === TCP_LISTEN) ?? entries[0])?.inode;
}

/** The process with a descriptor on socket inode, when /proc lets this process see it. */
export function socketHolder(inode: number, procRoot = '/proc'): Holder {
  const link = `socket:[${inode}]`;
  let scanned = 0;
  let unreadable = false;
  for (const entry of fs.readdirSync(procRoot)) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    let fds: string[];
    try {
      fds = fs.readdirSync(`${procRoot}/${entry}/fd`);
    } catch (err) {
      // EACCES: not ours to look into (ptrace access); ENOENT: the process just exited.
      if ((err as NodeJS.ErrnoException).code === 'EACCES') unreadable = true;
      continue;
    }
    for (const fd of fds) {
      if (++scanned > MAX_FDS_SCANNED) return { unreadable: true };
      let target: string;
      try {
        target = fs.readlinkSync(`${procRoot}/${entry}/fd/${fd}`);
      } catch (err) {
        // EACCES: the directory lists, the links do not resolve without ptrace access. ENOENT:
        // closed meanwhile.
        if ((err as NodeJS.ErrnoException).code === 'EACCES') {
          unreadable = true;
          break;
        }
        continue;
      }
      if (target === link) return { pid: Number(entry), command: commandOf(Number(entry), procRoot) };
    }
  }
  return unreadable ? { unreadable: true } : undefined;
}

/** "python3 -m http.server 4700", bounded: a command line is whatever its process wrote there. */
function commandOf(pid: number, procRoot: string): string {
  try {
    const argv = fs.readFileSync(`${procRoot}/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ');
    if (argv) return bounded(argv, 120);
  } catch {
    // Gone, or unreadable: its comm below is world-readable.
  }
  try {
    return bounded(fs.readFileSync(`${procRoot}/${pid}/comm`, 'utf8').trim(), 32);
  } catch {
    return 'unknown command';
  }
}

/** The error for an endpoint another process holds: E_IN_USE, naming the holder when it can. */
export function inUseError(e: Endpoint, procRoot = '/proc'): BatonError {
  const inode = holdingInode(e, procRoot);
  const holder = inode === undefined ? undefined : socketHolder(inode, procRoot);
  const by =
    inode === undefined
      ? 'in use (no socket holds it in /proc/net now: its holder may have just closed it)'
      : holder === undefined
        ? `in use by socket inode ${inode}, which no process batond can see holds`
        : 'pid' in holder
          ? `in use by pid ${holder.pid} (${holder.command})`
          : `in use by a process batond may not look into (socket inode ${inode}; ss -lp as root names it)`;
  const where = e.proto === 'unix' ? { path: e.path } : { host: e.host, port: e.port, proto: e.proto };
  return new BatonError('E_IN_USE', `${describeEndpoint(e)} is ${by}`, {
    step: 'listen',
    ...where,
    ...(holder && 'pid' in holder ? { holderPid: holder.pid, holderCommand: holder.command } : {}),
  });
}

/** Binds e for a moment, exactly as its server will; resolves if that worked. */
function probe(e: InetEndpoint): Promise<void> {
  return new Promise((resolve, reject) => {
    if (e.proto === 'tcp') {
      const server = net.createServer();
      server.once('error', reject);
      server.listen({ host: e.host, port: e.port, exclusive: true }, () => server.close(() => resolve()));
    } else {
      const socket = dgram.createSocket('udp4');
      socket.once('error', (err) => {
        socket.close();
        reject(err);
      });
      socket.bind({ address: e.host, port: e.port, exclusive: true }, () => socket.close(() => resolve()));
    }
  });
}

/** Whether a process accepts connections on the Unix socket at path right now. */
function unixListener(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ path });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    // ECONNREFUSED: a socket file nobody listens on (its batond died); ENOENT: none at all.
    s.once('error', () => resolve(false));
  });
}

/**
 * Checks that batond can take every endpoint, changing nothing of anyone's: each TCP and UDP
 * address is bound and released again, a Unix socket path must not have a listener. Throws
 * E_IN_USE naming the first one held, E_CONFIG for any other reason one cannot be taken.
 */
export async function ensureFree(endpoints: Endpoint[]): Promise<void> {
  for (const e of endpoints) {
    if (e.proto === 'unix') {
      await ensureUnixPathFree(e);
      continue;
    }
    try {
      await probe(e);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') throw inUseError(e);
      throw new BatonError('E_CONFIG', `cannot listen on ${describeEndpoint(e)}: ${(err as Error).message}`, { step: 'listen', host: e.host, port: e.port }, { cause: err });
    }
  }
}

/**
 * A Unix socket path batond is about to listen on: a live listener there is refused (E_IN_USE),
 * a socket file nobody listens on is a previous batond's and is removed, anything else at the
 * path (a regular file, a directory) is not batond's to remove (E_CONFIG).
 */
async function ensureUnixPathFree(e: UnixEndpoint): Promise<void> {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(e.path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new BatonError('E_CONFIG', `cannot look at ${describeEndpoint(e)}: ${(err as Error).message}`, { step: 'listen', path: e.path }, { cause: err });
  }
  if (!stat.isSocket()) throw new BatonError('E_CONFIG', `${describeEndpoint(e)} exists and is not a socket: not removing it`, { step: 'listen', path: e.path });
  if (await unixListener(e.path)) throw inUseError(e);
  fs.rmSync(e.path, { force: true });
}

/**
 * For a listen that failed after ensureFree passed (another process took the address in between):
 * E_IN_USE if the endpoint is held now, otherwise the original error.
 */
export async function explainListenFailure(err: unknown, e: Endpoint): Promise<unknown> {
  if (e.proto === 'unix') return (await unixListener(e.path)) ? inUseError(e) : err;
  try {
    await probe(e);
    return err;
  } catch (now) {
    return (now as NodeJS.ErrnoException).code === 'EADDRINUSE' ? inUseError(e) : err;
  }
}

/** Every address a node's batond listens on, named as its config names them. */
export function agentEndpoints(config: ClusterConfig, self: NodeConfig): { control: InetEndpoint; peer: InetEndpoint; agent: UnixEndpoint; api: InetEndpoint } {
  return {
    control: { proto: 'udp', host: '127.0.0.1', port: config.controlPort, what: 'control socket (controlPort)' },
    peer: { proto: 'tcp', host: self.address, port: self.peerPort, what: 'peer links (nodes[].peerPort)' },
    agent: { proto: 'unix', path: self.agentSocket, what: 'agent socket (nodes[].agentSocket)' },
    api: { proto: 'tcp', host: self.address, port: config.api.port, what: 'REST API (api.port)' },
  };
}
