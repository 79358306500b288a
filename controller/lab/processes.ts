// A tiny supervisor for lab processes: start detached inside a namespace with output to a log
// file and a pidfile; stop with SIGTERM, then SIGKILL after a bound. No restarts: a lab process
// that dies is a test failure to look at, not something to paper over.
//
// Processes are entered with `nsenter --net=/run/netns/<ns>` rather than `ip netns exec`: the
// latter also unshares the mount namespace and remounts /sys, so a batond started that way pins
// its maps in a private bpffs that dies with it (and labDown could not find the pins).
//
// Every process gets BATON_LAB=<prefix> and BATON_LAB_PROCESS=<name> in its environment. That
// marker is how ownership is proven later: a pid from a pidfile is only signalled if it still
// carries the marker (pids get reused), and labDown finds strays by it even when their namespace
// name is already gone.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BatonError } from '../errors.js';
import { namespacePath, procPids } from './netns.js';

export interface ProcessSpec {
  /** Names the log (<runDir>/<name>.log) and the pidfile (<runDir>/<name>.pid). */
  name: string;
  /** Full namespace name, e.g. baton-n2. */
  ns: string;
  argv: string[];
  env?: Record<string, string>;
  /** Started this long after the processes before it in the list (labUp): an order that timing must not decide. */
  startDelayMs?: number;
}

export const LAB_ENV = 'BATON_LAB';
export const LAB_PROCESS_ENV = 'BATON_LAB_PROCESS';
export const PROCESS_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
export const DEFAULT_STOP_BOUND_MS = 3000;

export interface StartedProcess {
  name: string;
  ns: string;
  pid: number;
  logFile: string;
  pidFile: string;
  /** Set once the process has exited while this Node process was still its parent. */
  exit?: { code: number | null; signal: NodeJS.Signals | null };
}

export function logFileOf(runDir: string, name: string): string {
  return path.join(runDir, `${name}.log`);
}

export function pidFileOf(runDir: string, name: string): string {
  return path.join(runDir, `${name}.pid`);
}

/** Starts spec detached in its namespace; resolves once the kernel has started it (not "ready"). */
export async function startProcess(spec: ProcessSpec, opts: { runDir: string; lab: string }): Promise<StartedProcess> {
  const ctx = { step: 'start-process', process: spec.name, ns: spec.ns };
  if (!PROCESS_NAME_PATTERN.test(spec.name)) {
    throw new BatonError('E_LAB', `invalid process name ${JSON.stringify(spec.name)}: want ${PROCESS_NAME_PATTERN.source} (it names files)`, ctx);
  }
  if (spec.argv.length === 0) throw new BatonError('E_LAB', `process ${spec.name} has an empty argv`, ctx);
  if (!fs.existsSync(namespacePath(spec.ns))) throw new BatonError('E_LAB', `namespace ${spec.ns} does not exist`, ctx);

  fs.mkdirSync(opts.runDir, { recursive: true });
  const logFile = logFileOf(opts.runDir, spec.name);
  const pidFile = pidFileOf(opts.runDir, spec.name);
  // Truncate: readiness checks grep the log, and a line from the previous run must not count.
  const fd = fs.openSync(logFile, 'w');
  try {
    const child = spawn('nsenter', [`--net=${namespacePath(spec.ns)}`, '--', ...spec.argv], {
      // Own session: a Ctrl-C aimed at `batonctl lab up` must not take the lab down with it.
      detached: true,
      stdio: ['ignore', fd, fd],
      env: { ...process.env, ...spec.env, [LAB_ENV]: opts.lab, [LAB_PROCESS_ENV]: spec.name },
    });
    const started: StartedProcess = { name: spec.name, ns: spec.ns, pid: 0, logFile, pidFile };
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', (err) => reject(new BatonError('E_LAB', `cannot start ${spec.name}: ${err.message}`, ctx, { cause: err })));
    });
    child.once('exit', (code, signal) => {
      started.exit = { code, signal };
    });
    child.unref();
    started.pid = child.pid!;
    writeAtomic(pidFile, `${started.pid}\n`);
    return started;
  } finally {
    fs.closeSync(fd);
  }
}

function writeAtomic(file: string, text: string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
}

/** The pid in <runDir>/<name>.pid, or undefined if there is no usable pidfile. */
export function readPidFile(file: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Every pidfile in runDir, by process name. */
export function listPidFiles(runDir: string): Array<{ name: string; file: string; pid: number | undefined }> {
  let entries: string[];
  try {
    entries = fs.readdirSync(runDir);
  } catch {
    return [];
  }
  return entries
    .filter((f) => f.endsWith('.pid'))
    .sort()
    .map((f) => {
      const file = path.join(runDir, f);
      return { name: f.slice(0, -'.pid'.length), file, pid: readPidFile(file) };
    });
}

/** Running (zombies count as gone: they only wait to be reaped) and, with lab, carrying its marker. */
export function isAlive(pid: number, lab?: string): boolean {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  // The command name in parentheses may contain spaces or ')': the state follows the last ')'.
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  if (state === 'Z' || state === 'X' || state === 'x') return false;
  return lab === undefined || labOf(pid) === lab;
}

/** The BATON_LAB marker in a process's initial environment, if any. */
export function labOf(pid: number): string | undefined {
  let environ = '';
  // A process in the middle of execve (ip netns exec becoming the command) reads as an empty
  // environment for a moment: seen as a supervised process briefly "not ours". Ours always have
  // one, so an empty read is asked again a few times, 1 ms apart.
  for (let attempt = 0; environ === '' && attempt < 5; attempt++) {
    if (attempt > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
    try {
      environ = fs.readFileSync(`/proc/${pid}/environ`, 'latin1');
    } catch {
      return undefined;
    }
  }
  const key = `${LAB_ENV}=`;
  for (const kv of environ.split('\0')) if (kv.startsWith(key)) return kv.slice(key.length);
  return undefined;
}

/** Every live process carrying the lab's marker: children of lab processes inherit it too. */
export function findMarkedProcesses(lab: string): number[] {
  return procPids().filter((pid) => pid !== process.pid && labOf(pid) === lab && isAlive(pid));
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

async function waitGone(pids: number[], boundMs: number): Promise<number[]> {
  const deadline = Date.now() + boundMs;
  let left = pids.filter((p) => isAlive(p));
  while (left.length > 0 && Date.now() < deadline) {
    await sleep(25);
    left = left.filter((p) => isAlive(p));
  }
  return left;
}

/**
 * SIGTERM to all, SIGKILL to whoever is still running after boundMs. Resolves with the pids that
 * survived even SIGKILL (stuck in the kernel): the caller decides whether that is an error.
 */
export async function stopProcesses(pids: number[], boundMs = DEFAULT_STOP_BOUND_MS): Promise<number[]> {
  const targets = [...new Set(pids)].filter((p) => p !== process.pid && isAlive(p));
  for (const pid of targets) signal(pid, 'SIGTERM');
  const stubborn = await waitGone(targets, boundMs);
  for (const pid of stubborn) signal(pid, 'SIGKILL');
  return waitGone(stubborn, 2000);
}

/** Stops the process named in runDir's pidfile, if it is still the lab's; removes the pidfile. */
export async function stopProcess(runDir: string, name: string, lab: string, boundMs = DEFAULT_STOP_BOUND_MS): Promise<void> {
  const file = pidFileOf(runDir, name);
  const pid = readPidFile(file);
  if (pid !== undefined && isAlive(pid, lab)) {
    const left = await stopProcesses([pid], boundMs);
    if (left.length) throw new BatonError('E_LAB', `process ${name} (pid ${pid}) survived SIGKILL`, { step: 'stop-process', process: name, pid });
  }
  fs.rmSync(file, { force: true });
}
