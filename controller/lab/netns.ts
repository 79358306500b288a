// Thin wrappers around iproute2 for the namespace lab. Every command is an argv handed to
// execFile: names and addresses come from options and lab.json, and a shell would turn them into
// code. Each call has a time bound so a wedged `ip` cannot hang a teardown.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { BatonError } from '../errors.js';

export const NETNS_DIR = '/run/netns';

export interface RunOptions {
  /** Names the lab step in the error context. */
  step: string;
  timeoutMs?: number;
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

export class CommandError extends BatonError {
  readonly stderr: string;
  readonly exitCode: number | string | undefined;

  constructor(argv: string[], stderr: string, exitCode: number | string | undefined, step: string, cause: unknown) {
    super('E_LAB', `${argv.join(' ')} failed: ${stderr.trim() || String((cause as Error)?.message ?? cause)}`, { step, argv, exitCode }, { cause });
    this.stderr = stderr;
    this.exitCode = exitCode;
  }
}

/** Runs argv (no shell) and resolves with its output; rejects with a CommandError otherwise. */
export function run(argv: string[], opts: RunOptions): Promise<RunResult> {
  const [file, ...args] = argv;
  if (!file) throw new BatonError('E_LAB', 'empty command', { step: opts.step });
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: opts.timeoutMs ?? 10_000, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) {
        const e = err as NodeJS.ErrnoException & { code?: number | string; killed?: boolean };
        const why = e.killed ? `${stderr}\n(killed after ${opts.timeoutMs ?? 10_000} ms)` : stderr;
        reject(new CommandError(argv, why, e.code, opts.step, err));
      } else {
        resolve({ stdout, stderr });
      }
    });
  });
}

/** `ip -n <ns> ...`, or plain `ip ...` in the caller's namespace when ns is undefined. */
export function ip(ns: string | undefined, args: string[], opts: RunOptions): Promise<RunResult> {
  return run(ns === undefined ? ['ip', ...args] : ['ip', '-n', ns, ...args], opts);
}

/**
 * Runs argv inside a namespace. `nsenter --net` rather than `ip netns exec`: the latter also
 * remounts /sys in a private mount namespace, which hides the host's bpffs (see processes.ts).
 */
export function inNamespace(ns: string, argv: string[], opts: RunOptions): Promise<RunResult> {
  return run(['nsenter', `--net=${namespacePath(ns)}`, '--', ...argv], opts);
}

export function namespacePath(ns: string): string {
  return path.join(NETNS_DIR, ns);
}

export function namespaceExists(ns: string): boolean {
  return fs.existsSync(namespacePath(ns));
}

/** Names under /run/netns (what `ip netns list` shows), without spawning ip. */
export function listNamespaces(): string[] {
  try {
    return fs.readdirSync(NETNS_DIR).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new BatonError('E_LAB', `cannot list ${NETNS_DIR}: ${(err as Error).message}`, { step: 'list-namespaces' }, { cause: err });
  }
}

export async function createNamespace(ns: string): Promise<void> {
  await ip(undefined, ['netns', 'add', ns], { step: 'create-namespace' });
}

/** Deletes a namespace; a missing one is not an error. */
export async function deleteNamespace(ns: string): Promise<void> {
  if (!namespaceExists(ns)) return;
  try {
    await ip(undefined, ['netns', 'delete', ns], { step: 'delete-namespace' });
  } catch (err) {
    if (!namespaceExists(ns)) return;
    throw err;
  }
}

/**
 * Pids of processes whose network namespace is ns. Same test as `ip netns pids` (compare the
 * namespace inode with /proc/<pid>/ns/net) done in-process: it needs no fork per call and does not
 * fail when a process exits during the scan.
 */
export function namespacePids(ns: string): number[] {
  let target: fs.Stats;
  try {
    target = fs.statSync(namespacePath(ns));
  } catch {
    return [];
  }
  const pids: number[] = [];
  for (const pid of procPids()) {
    try {
      const st = fs.statSync(`/proc/${pid}/ns/net`);
      if (st.ino === target.ino && st.dev === target.dev) pids.push(pid);
    } catch {
      // Exited during the scan, or a kernel thread without a namespace link.
    }
  }
  return pids;
}

export function procPids(): number[] {
  return fs
    .readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .map(Number);
}

interface IpLink {
  ifname: string;
  link_type?: string;
  address?: string;
  xdp?: unknown;
}

/** Links of a namespace as `ip -j link show` reports them. */
export async function listLinks(ns: string): Promise<IpLink[]> {
  const { stdout } = await ip(ns, ['-j', 'link', 'show'], { step: 'list-links' });
  return JSON.parse(stdout) as IpLink[];
}
