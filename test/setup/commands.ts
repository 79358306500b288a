// Before any test runs (vitest globalSetup): every program the code, the lab and the tests run must
// be installed, or the run stops here naming the Debian package for each one missing. Otherwise a
// fresh machine finds out one failing test at a time, deep in a lab, with an ENOENT from execFile.
// The list is scripts/commands.txt, the one scripts/deps.sh installs from.
import fs from 'node:fs';
import path from 'node:path';
import { repoRoot } from '../../controller/paths.js';

export const SETS = ['build', 'runtime', 'test', 'bench', 'vm'] as const;
export type CommandSet = (typeof SETS)[number];

/** What `make test` needs: everything but the benchmarks' baseline. */
export const TEST_SETS: readonly CommandSet[] = ['build', 'runtime', 'test'];

export interface Requirement {
  /** A command looked up on PATH, or an absolute path. */
  what: string;
  package: string;
  set: CommandSet;
  who: string;
  line: number;
}

export function commandListPath(): string {
  return path.join(repoRoot(), 'scripts', 'commands.txt');
}

/** Parses scripts/commands.txt; throws naming the line of anything deps.sh would refuse too. */
export function readCommandList(file = commandListPath()): Requirement[] {
  const out: Requirement[] = [];
  fs.readFileSync(file, 'utf8')
    .split('\n')
    .forEach((raw, i) => {
      const text = raw.trim();
      if (text === '' || text.startsWith('#')) return;
      const [what = '', pkg = '', set = '', ...who] = text.split(/\s+/);
      if (!pkg || !(SETS as readonly string[]).includes(set)) {
        throw new Error(`${file}:${i + 1}: want <command or path> <package> <${SETS.join('|')}> <who>, got: ${text.slice(0, 120)}`);
      }
      out.push({ what, package: pkg, set: set as CommandSet, who: who.join(' '), line: i + 1 });
    });
  return out;
}

/** Where execFile would find command on this PATH, if anywhere. */
export function which(command: string, searchPath: string): string | undefined {
  for (const dir of searchPath.split(':')) {
    if (!dir) continue;
    const file = path.join(dir, command);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      if (fs.statSync(file).isFile()) return file;
    } catch {
      // Not in this directory: the next one may have it.
    }
  }
  return undefined;
}

/** The requirements of these sets that are not met: a command not on searchPath, a file absent. */
export function missingRequirements(list: Requirement[], sets: readonly CommandSet[], searchPath: string): Requirement[] {
  return list.filter((r) => sets.includes(r.set) && (r.what.startsWith('/') ? !fs.existsSync(r.what) : which(r.what, searchPath) === undefined));
}

/** Throws one error naming every missing program, its package, and the command that installs them all. */
export function checkRequirements(list: Requirement[], sets: readonly CommandSet[], searchPath: string): void {
  const missing = missingRequirements(list, sets, searchPath);
  if (missing.length === 0) return;
  const packages = [...new Set(missing.map((m) => m.package))];
  throw new Error(
    `missing ${missing.length === 1 ? 'a program' : 'programs'} the tests need (scripts/commands.txt), on PATH=${searchPath}:\n` +
      missing.map((m) => `  ${m.what}: Debian package ${m.package} (${m.who})`).join('\n') +
      `\ninstall: apt-get install ${packages.join(' ')}   (or scripts/deps.sh, which installs the whole list)`,
  );
}

export default function setup(): void {
  checkRequirements(readCommandList(), TEST_SETS, process.env.PATH ?? '');
}
