// scripts/commands.txt is the one list of the programs Baton runs: deps.sh installs from it and the
// test suite's globalSetup checks it. These tests keep the three honest: a missing program stops
// the run naming its package, deps.sh reads the list as the check does, and the list holds every
// program the sources run (and nothing nobody runs).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../../../controller/paths.js';
import { type CommandSet, checkRequirements, missingRequirements, readCommandList, TEST_SETS, which } from '../../setup/commands.js';

const list = readCommandList();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-commands-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function depsPackages(deps: string): string[] {
  const out = execFileSync(path.join(repoRoot(), 'scripts/deps.sh'), ['--packages'], { encoding: 'utf8', env: { ...process.env, BATON_DEPS: deps } });
  return out.trim().split('\n').sort();
}

const packagesOf = (sets: CommandSet[]) => [...new Set(list.filter((r) => sets.includes(r.set)).map((r) => r.package))].sort();

/** Every source file under dir with one of these extensions. */
function sources(dir: string, exts: string[]): string[] {
  return fs.readdirSync(path.join(repoRoot(), dir), { recursive: true, encoding: 'utf8' })
    .filter((f) => exts.some((e) => f.endsWith(e)) && !f.split(path.sep).includes('node_modules'))
    .map((f) => path.join(repoRoot(), dir, f));
}

// How the sources hand a program to the kernel: execFile/spawn with the program first, an argv
// array given to one of the helpers that run one (run, sh, inNamespace, exec, inClient), a
// process spec's argv, `ip netns exec <ns> <program>`, and the helpers that build a client argv.
const NAME = `'([A-Za-z0-9_.-]+)'`;
const RUN_PATTERNS = [
  new RegExp(`\\b(?:spawn|spawnSync|execFile|execFileSync|execFileP|run)\\(\\s*${NAME}`, 'g'),
  new RegExp(`\\b(?:run|sh|inNamespace|exec|inClient)\\((?:\\s*[^,()']+?,)?\\s*\\[\\s*${NAME}`, 'g'),
  new RegExp(`'netns', 'exec', [^,]+, ${NAME}`, 'g'),
  new RegExp(`\\binNs\\([^,]+,\\s*${NAME}`, 'g'),
  new RegExp(`\\bargv: \\[\\s*${NAME}`, 'g'),
  new RegExp(`\\bargv\\.unshift\\(${NAME}`, 'g'),
  new RegExp(`\\breturn \\[\\s*${NAME},`, 'g'),
];

function programsRun(): Map<string, string> {
  const found = new Map<string, string>();
  for (const file of [...sources('controller', ['.ts']), ...sources('bench', ['.ts']), ...sources('examples', ['.ts', '.py']), ...sources('test', ['.ts', '.mjs', '.py'])]) {
    const text = fs.readFileSync(file, 'utf8');
    for (const re of RUN_PATTERNS) for (const m of text.matchAll(re)) if (!found.has(m[1]!)) found.set(m[1]!, path.relative(repoRoot(), file));
  }
  return found;
}

describe('scripts/commands.txt, the one list of programs', () => {
  it('is what deps.sh installs, set by set', () => {
    expect(depsPackages('runtime')).toEqual(packagesOf(['build', 'runtime']));
    expect(depsPackages('all')).toEqual(packagesOf([...TEST_SETS]));
    expect(depsPackages('bench')).toEqual(packagesOf(['build', 'runtime', 'test', 'bench']));
    expect(depsPackages('vm')).toEqual(packagesOf(['build', 'runtime', 'test', 'vm']));
    // The fresh-machine failure this list exists for: ping, which impaired.test.ts runs.
    expect(depsPackages('all')).toContain('iputils-ping');
  });

  it('stops the run naming the Debian package of a program missing from PATH', () => {
    // A PATH holding every listed program but ping, each a link to the real one.
    const bin = path.join(tmp, 'bin');
    fs.mkdirSync(bin);
    for (const r of list) {
      const real = r.what.startsWith('/') ? undefined : which(r.what, process.env.PATH ?? '');
      if (real && r.what !== 'ping') fs.symlinkSync(real, path.join(bin, r.what));
    }
    expect(missingRequirements(list, TEST_SETS, bin).map((r) => r.what)).toEqual(['ping']);
    expect(() => checkRequirements(list, TEST_SETS, bin)).toThrow(/ping: Debian package iputils-ping .*\ninstall: apt-get install iputils-ping /s);
    // This machine itself has them all (what the globalSetup checked before this file ran).
    expect(() => checkRequirements(list, TEST_SETS, process.env.PATH ?? '')).not.toThrow();
  });

  it('refuses a malformed line, naming it', () => {
    const bad = path.join(tmp, 'commands.txt');
    fs.writeFileSync(bad, '# a comment\nping iputils-ping tests impaired.test.ts\n');
    expect(() => readCommandList(bad)).toThrow(`${bad}:2: want <command or path> <package> <build|runtime|test|bench|vm> <who>`);
  });

  it('lists every program the sources run, and only programs something runs', () => {
    const run = programsRun();
    // The scan itself works: it sees programs run in each of the ways above.
    for (const p of ['ip', 'nsenter', 'setpriv', 'ethtool', 'ping', 'bpftool', 'haproxy', 'sleep', 'curl', 'python3']) expect(run.has(p), p).toBe(true);
    const listed = new Set(list.map((r) => r.what));
    const unlisted = [...run].filter(([p]) => !listed.has(p)).map(([p, file]) => `${p} (${file})`);
    expect(unlisted).toEqual([]);
    // What the TypeScript does not run, the Makefile, a script or the operations guide does.
    const elsewhere = [
      fs.readFileSync(path.join(repoRoot(), 'Makefile'), 'utf8'),
      ...sources('scripts', ['.sh']).map((f) => fs.readFileSync(f, 'utf8')),
      fs.readFileSync(path.join(repoRoot(), 'docs/operations.md'), 'utf8'),
    ].join('\n');
    const unused = list
      .filter((r) => !r.what.startsWith('/') && !run.has(r.what) && !new RegExp(`(^|[\\s/(\`])${r.what.replaceAll('.', '\\.')}\\b`, 'm').test(elsewhere))
      .map((r) => r.what);
    expect(unused).toEqual([]);
  });
});
