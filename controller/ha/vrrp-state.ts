// The VRRP state of this node's keepalived instance, as keepalived tells it: one line per change
// on its notify FIFO (`INSTANCE "baton-prod" MASTER 200`). batond reads that FIFO to know whether
// it is the active distributor; it never decides itself.
//
// The FIFO is input like any other: whoever can write it can claim this node is MASTER, and a
// writer can send anything, of any length. So the FIFO must be a FIFO, owned by root (or batond's
// user), writable by its owner only (created 0600 here when missing); a line is at most
// maxLineBytes (a longer one is dropped and counted, never buffered whole); only printable ASCII
// in keepalived's format counts; anything else is counted and logged sparsely as a short escaped
// prefix.
//
// How it is opened matters (test/unit/ha/keepalived.test.ts shows the first two):
//   - O_RDWR | O_NONBLOCK: a blocking O_RDONLY open waits for a writer, and an O_RDONLY reader
//     reads EOF each time the last writer closes (keepalived restarting). Holding the write side
//     too, the FIFO never ends; keepalived opens it the same way, so neither waits for the other.
//   - read through net.Socket({ fd }) (libuv polls the pipe on the event loop). fs.createReadStream
//     reads from the thread pool: on a non-blocking FIFO it fails with EAGAIN at once, on a
//     blocking one a pool thread sits in read() and the process cannot exit until a line comes.
//   - batond creates the FIFO, not keepalived: keepalived creates a missing one itself, but then
//     unlinks it when it stops, and a reader holding the old one would never hear the restarted
//     keepalived, which makes a new FIFO under the same name.
// Lines keepalived wrote while no batond read stay in the pipe (up to its 64 KiB) and are read,
// in order, when batond opens it again: the last one is the current state.
import { execFile } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { BatonError } from '../errors.js';
import { bounded, errorText, logSparsely, parseJson } from '../input.js';
import type { Logger } from '../log.js';
import { INTERFACE_NAME } from './keepalived.js';

/** The states keepalived reports for an instance. DELETED (an instance removed by a reload) reads as STOP. */
export const VRRP_STATES = ['MASTER', 'BACKUP', 'FAULT', 'STOP'] as const;
export type VrrpStateName = (typeof VRRP_STATES)[number];

/** Instance lines that are not a state: another MASTER of lower priority heard, a priority change. */
export const VRRP_EVENTS = ['MASTER_RX_LOWER_PRI', 'MASTER_PRIORITY', 'BACKUP_PRIORITY'] as const;
export type VrrpEventName = (typeof VRRP_EVENTS)[number];

/** keepalived's longest line is about 50 bytes plus the instance name (ours: at most 69 characters). */
export const DEFAULT_MAX_LINE_BYTES = 256;

export type FifoLine =
  | { kind: 'state'; instance: string; state: VrrpStateName; priority: number }
  | { kind: 'event'; instance: string; event: VrrpEventName; priority: number }
  | { kind: 'group'; group: string }
  | { kind: 'unknown'; reason: string };

export interface VrrpTransition {
  state: VrrpStateName;
  previous: VrrpStateName | undefined;
  /** The priority keepalived reported with it (absent when learnt from the address). */
  priority?: number;
  /** fifo: keepalived said so; address: the DVIPA was found on the interface at start. */
  source: 'fifo' | 'address';
  /** When batond learnt it (epoch ms). */
  at: number;
}

export interface VrrpEvent {
  event: VrrpEventName;
  priority: number;
  at: number;
}

/** What the FIFO carried since it was opened; all monotonic. */
export interface VrrpFifoCounts {
  /** Complete lines read, whatever they held. */
  lines: number;
  /** State lines for our instance. */
  states: number;
  /** Event lines for our instance (MASTER_RX_LOWER_PRI, priority changes). */
  events: number;
  /** Instance lines for another instance: ignored. */
  otherInstances: number;
  /** GROUP lines (sync groups, which Baton does not configure): ignored. */
  groups: number;
  /** Lines not in keepalived's format, or not printable ASCII: ignored. */
  unknown: number;
  /** Lines longer than maxLineBytes: dropped without being buffered. */
  tooLong: number;
}

const LINE = /^(INSTANCE|GROUP) "([^"]{1,128})" ([A-Z_]{1,24}) ([0-9]{1,3})$/;

/** Parses one line (without its newline) of keepalived's notify FIFO. Never throws. */
export function parseFifoLine(line: Buffer | string): FifoLine {
  const bytes = typeof line === 'string' ? Buffer.from(line, 'latin1') : line;
  // Printable ASCII only: keepalived writes nothing else, and a NUL, a control character or a
  // byte of some other encoding would otherwise have to be decided about.
  for (const b of bytes) if (b < 0x20 || b > 0x7e) return { kind: 'unknown', reason: 'not printable ASCII' };
  const m = LINE.exec(bytes.toString('latin1'));
  if (!m) return { kind: 'unknown', reason: 'not keepalived\'s format' };
  const [, type, name, word, prio] = m as unknown as [string, string, string, string, string];
  const priority = Number(prio);
  if (priority > 255) return { kind: 'unknown', reason: 'priority above 255' };
  if (type === 'GROUP') return { kind: 'group', group: name };
  if (word === 'DELETED') return { kind: 'state', instance: name, state: 'STOP', priority };
  if ((VRRP_STATES as readonly string[]).includes(word)) return { kind: 'state', instance: name, state: word as VrrpStateName, priority };
  if ((VRRP_EVENTS as readonly string[]).includes(word)) return { kind: 'event', instance: name, event: word as VrrpEventName, priority };
  return { kind: 'unknown', reason: 'unknown state' };
}

function fifoError(message: string, file: string, cause?: unknown): BatonError {
  return new BatonError('E_CONFIG', message, { step: 'vrrp-fifo', file }, cause === undefined ? undefined : { cause });
}

function run(file: string, args: string[], timeoutMs: number): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 1 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) reject(Object.assign(err, { stderr }));
      else resolve({ stdout, stderr });
    });
  });
}

/**
 * Makes sure file is a FIFO batond may trust: creates it (mode 0600) when missing; refuses
 * anything else there (a regular file, a symbolic link, a directory), a FIFO group or others may
 * write, or one owned by another user than root or this process's. Returns its lstat.
 */
export async function ensureFifo(file: string, opts: { timeoutMs?: number } = {}): Promise<fs.Stats> {
  if (!path.isAbsolute(file) || file.length > 4096 || file.includes('\0')) throw fifoError(`notify FIFO path must be absolute: ${bounded(file, 80)}`, bounded(file, 80));
  let st = fs.lstatSync(file, { throwIfNoEntry: false });
  if (!st) {
    // Node has no mkfifo(3); coreutils' mkfifo creates it with exactly this mode (umask aside,
    // which cannot add bits). A FIFO another process created in between is checked below.
    try {
      await run('mkfifo', ['-m', '600', '--', file], opts.timeoutMs ?? 5000);
    } catch (err) {
      const stderr = String((err as { stderr?: string }).stderr ?? '');
      if (!/File exists/.test(stderr)) throw fifoError(`cannot create notify FIFO ${file}: ${bounded(stderr.trim(), 200) || errorText(err)}`, file, err);
    }
    st = fs.lstatSync(file, { throwIfNoEntry: false });
    if (!st) throw fifoError(`notify FIFO ${file} vanished right after it was created`, file);
  }
  checkFifoStat(file, st);
  return st;
}

function checkFifoStat(file: string, st: fs.Stats): void {
  if (!st.isFIFO()) {
    const what = st.isSymbolicLink() ? 'a symbolic link' : st.isFile() ? 'a regular file' : st.isDirectory() ? 'a directory' : 'not a FIFO';
    throw fifoError(`notify FIFO ${file} exists and is ${what}: remove it, batond creates the FIFO`, file);
  }
  if (st.mode & 0o022) {
    throw fifoError(`notify FIFO ${file} is writable by group or others (mode ${(st.mode & 0o777).toString(8)}): whoever writes it can make this node the active distributor; chmod 600 it`, file);
  }
  const euid = process.geteuid?.() ?? 0;
  if (st.uid !== 0 && st.uid !== euid) throw fifoError(`notify FIFO ${file} belongs to uid ${st.uid}, not root or batond's user`, file);
}

export interface VrrpStateOptions {
  /** The notify FIFO keepalived.conf names (keepalivedPaths().notifyFifo). */
  fifo: string;
  /** The keepalived instance to follow (vrrpInstanceName(cluster instance)); other instances are ignored. */
  instance: string;
  log: Logger;
  maxLineBytes?: number;
}

/**
 * Follows one keepalived instance through its notify FIFO. Emits `state` on each change of
 * state, `event` on MASTER_RX_LOWER_PRI and priority changes, and `closed` if the FIFO ever
 * fails (it does not end by itself: this reader holds its write side too).
 */
export class VrrpState extends EventEmitter<{ state: [VrrpTransition]; event: [VrrpEvent]; closed: [string] }> {
  private current: VrrpStateName | undefined;
  private priority: number | undefined;
  private readonly tally: VrrpFifoCounts = { lines: 0, states: 0, events: 0, otherInstances: 0, groups: 0, unknown: 0, tooLong: 0 };
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Inside a line already longer than the bound: its bytes are dropped up to the next newline. */
  private discarding = false;
  private closing = false;
  private readonly maxLineBytes: number;

  private constructor(
    private readonly socket: net.Socket,
    private readonly opts: VrrpStateOptions,
  ) {
    super();
    this.maxLineBytes = opts.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.lost(`read failed: ${errorText(err)}`));
    socket.on('end', () => this.lost('the FIFO ended'));
    socket.on('close', () => this.lost('the FIFO closed'));
  }

  /** Creates the FIFO if missing (0600), checks it, and starts reading. */
  static async open(opts: VrrpStateOptions): Promise<VrrpState> {
    const before = await ensureFifo(opts.fifo);
    let fd: number;
    try {
      fd = fs.openSync(opts.fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK | fs.constants.O_NOFOLLOW);
    } catch (err) {
      throw fifoError(`cannot open notify FIFO ${opts.fifo}: ${errorText(err)}`, opts.fifo, err);
    }
    // The same file as checked: nothing swapped it between the check and the open.
    const st = fs.fstatSync(fd);
    if (st.dev !== before.dev || st.ino !== before.ino || !st.isFIFO()) {
      fs.closeSync(fd);
      throw fifoError(`notify FIFO ${opts.fifo} was replaced while being opened`, opts.fifo);
    }
    const socket = new net.Socket({ fd, readable: true, writable: false });
    const reader = new VrrpState(socket, opts);
    opts.log.info({ fifo: opts.fifo, vrrpInstance: opts.instance }, 'following keepalived through its notify FIFO');
    return reader;
  }

  /** The instance's state as last reported; undefined until keepalived (or the address) said. */
  state(): VrrpStateName | undefined {
    return this.current;
  }

  /** The priority keepalived last reported with a state or event line. */
  lastPriority(): number | undefined {
    return this.priority;
  }

  counts(): Readonly<VrrpFifoCounts> {
    return { ...this.tally };
  }

  /**
   * At start, before keepalived says anything: if the DVIPA is on the segment interface,
   * keepalived is MASTER (it puts the address there only then), and this batond need not wait for
   * a transition to know it. Anything the FIFO said meanwhile (or had buffered) wins: it is newer.
   * Not holding the address leaves the state as it was (undefined: not known to be MASTER).
   * A keepalived killed with SIGKILL leaves the address behind: ask only while keepalived runs
   * (runningKeepalived in keepalived.ts), or after starting it (it takes a stale copy off as it
   * starts BACKUP).
   */
  async learnFromAddress(iface: string, address: string, opts: { ns?: string; timeoutMs?: number } = {}): Promise<VrrpStateName | undefined> {
    const statesBefore = this.tally.states;
    const holds = await holdsAddress(iface, address, opts);
    if (holds && this.tally.states === statesBefore && this.current === undefined) this.set('MASTER', undefined, 'address');
    return this.current;
  }

  close(): void {
    this.closing = true;
    this.socket.destroy();
  }

  private lost(why: string): void {
    if (this.closing) return;
    this.closing = true;
    this.opts.log.error({ fifo: this.opts.fifo, err: why }, 'lost the keepalived notify FIFO: VRRP state changes are no longer seen');
    this.socket.destroy();
    this.emit('closed', why);
  }

  private onData(chunk: Buffer): void {
    let start = 0;
    while (start < chunk.length) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl < 0 ? chunk.length : nl;
      if (!this.discarding && end > start) {
        if (this.pendingBytes + (end - start) > this.maxLineBytes) {
          this.discarding = true;
          this.tally.tooLong++;
          if (logSparsely(this.tally.tooLong)) {
            const head = Buffer.concat([...this.pending, chunk.subarray(start, Math.min(end, start + 48))]).subarray(0, 48);
            this.opts.log.warn({ fifo: this.opts.fifo, maxLineBytes: this.maxLineBytes, prefix: bounded(head.toString('latin1'), 48), tooLong: this.tally.tooLong }, 'notify FIFO line too long: dropped');
          }
          this.pending = [];
          this.pendingBytes = 0;
        } else {
          // A copy: a slice would keep the whole 64 KiB chunk alive for a few bytes.
          this.pending.push(Buffer.from(chunk.subarray(start, end)));
          this.pendingBytes += end - start;
        }
      }
      if (nl < 0) return;
      if (this.discarding) this.discarding = false;
      else this.onLine(this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending));
      this.pending = [];
      this.pendingBytes = 0;
      start = nl + 1;
    }
  }

  private onLine(line: Buffer): void {
    this.tally.lines++;
    const parsed = parseFifoLine(line);
    switch (parsed.kind) {
      case 'unknown':
        this.tally.unknown++;
        if (logSparsely(this.tally.unknown)) {
          this.opts.log.warn({ fifo: this.opts.fifo, reason: parsed.reason, line: bounded(line.subarray(0, 64).toString('latin1'), 48), unknown: this.tally.unknown }, 'notify FIFO line ignored');
        }
        return;
      case 'group':
        this.tally.groups++;
        return;
      case 'state':
      case 'event':
        if (parsed.instance !== this.opts.instance) {
          this.tally.otherInstances++;
          if (logSparsely(this.tally.otherInstances)) {
            this.opts.log.warn({ fifo: this.opts.fifo, vrrpInstance: bounded(parsed.instance, 64), otherInstances: this.tally.otherInstances }, 'notify FIFO line for another VRRP instance ignored');
          }
          return;
        }
        this.priority = parsed.priority;
        if (parsed.kind === 'event') {
          this.tally.events++;
          if (parsed.event === 'MASTER_RX_LOWER_PRI' && logSparsely(this.tally.events)) {
            this.opts.log.warn({ vrrpInstance: this.opts.instance, priority: parsed.priority }, 'another MASTER of lower priority on the segment: both held the DVIPA (adverts lost one way)');
          }
          this.emit('event', { event: parsed.event, priority: parsed.priority, at: Date.now() });
          return;
        }
        this.tally.states++;
        this.set(parsed.state, parsed.priority, 'fifo');
    }
  }

  private set(state: VrrpStateName, priority: number | undefined, source: VrrpTransition['source']): void {
    const previous = this.current;
    if (state === previous) return;
    this.current = state;
    const t: VrrpTransition = { state, previous, source, at: Date.now(), ...(priority === undefined ? {} : { priority }) };
    this.opts.log.info({ vrrpInstance: this.opts.instance, state, previous: previous ?? null, priority: priority ?? null, source }, 'VRRP state');
    this.emit('state', t);
  }
}

/**
 * Whether address (IPv4) is on interface iface right now: keepalived puts the DVIPA on the
 * segment interface only while MASTER. `ip -j address show dev <iface>`, bounded in time and
 * output; ns runs it in another network namespace (`ip -n`), for the lab and tests.
 */
export async function holdsAddress(iface: string, address: string, opts: { ns?: string; timeoutMs?: number } = {}): Promise<boolean> {
  if (!INTERFACE_NAME.test(iface)) throw new BatonError('E_CONFIG', `interface name ${JSON.stringify(bounded(iface, 20))} refused`, { step: 'vrrp-address' });
  if (!net.isIPv4(address)) throw new BatonError('E_CONFIG', `${JSON.stringify(bounded(address, 40))} is not an IPv4 address`, { step: 'vrrp-address' });
  if (opts.ns !== undefined && !/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(opts.ns)) throw new BatonError('E_CONFIG', 'namespace name refused', { step: 'vrrp-address' });
  const timeoutMs = opts.timeoutMs ?? 2000;
  const args = [...(opts.ns === undefined ? [] : ['-n', opts.ns]), '-j', 'address', 'show', 'dev', iface];
  let stdout: string;
  try {
    ({ stdout } = await run('ip', args, timeoutMs));
  } catch (err) {
    const e = err as { killed?: boolean; stderr?: string; code?: unknown };
    if (e.killed) throw new BatonError('E_TIMEOUT', `ip address show dev ${iface} did not answer within ${timeoutMs} ms`, { step: 'vrrp-address' }, { cause: err });
    throw new BatonError('E_CONFIG', `cannot read the addresses of ${iface}: ${bounded(String(e.stderr ?? '').trim(), 200) || errorText(err)}`, { step: 'vrrp-address' }, { cause: err });
  }
  const parsed = parseJson(stdout, { maxBytes: 1 << 20, maxDepth: 8 });
  if (!parsed.ok) throw new BatonError('E_CONFIG', `ip -j address show dev ${iface}: ${parsed.reason}: ${parsed.detail}`, { step: 'vrrp-address' });
  if (!Array.isArray(parsed.value)) return false;
  for (const link of parsed.value) {
    const infos = (link as { addr_info?: unknown } | null)?.addr_info;
    if (!Array.isArray(infos)) continue;
    for (const a of infos) {
      const info = a as { family?: unknown; local?: unknown } | null;
      if (info?.family === 'inet' && info.local === address) return true;
    }
  }
  return false;
}
