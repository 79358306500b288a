// The repository has to stand on its own: a reader has exactly what git tracks. Notes kept beside
// the repository (on the kernel, on virtual machines, the design and style briefs: the shared
// folder one level up) are not there for them, so no file of the repository may send them there:
// whatever such a note said that Baton relies on is stated in docs/ in the project's words, with
// the test that shows it (docs/native.md for TCP_REPAIR, docs/datapath.md for XDP on veth). Those
// references became links to sections of the docs, so a link or a cited section that no longer
// exists fails here too.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../../../controller/paths.js';

// Spelled in pieces so that this file, tracked like any other, does not match itself.
const OUTSIDE: RegExp[] = [
  new RegExp(['KERNEL', 'NOTES'].join('[-_ ]'), 'i'),
  new RegExp(['VM', 'NOTES'].join('[-_ ]'), 'i'),
  new RegExp(['DESIGN', 'md'].join('\\.')),
  new RegExp(['STYLE', 'md'].join('\\.')),
  new RegExp(['\\.\\.', 'shared'].join('/')),
  new RegExp(['', 'work', '(?:shared|notes)\\b'].join('/')),
];

/** Every reference to a file outside the repository in text, as `line: match`. */
function outsideReferences(text: string): string[] {
  const found: string[] = [];
  for (const [i, line] of text.split('\n').entries()) {
    for (const re of OUTSIDE) {
      const m = re.exec(line);
      if (m) found.push(`${i + 1}: ${m[0]}`);
    }
  }
  return found;
}

/**
 * The files git would commit: tracked, and new ones not ignored (so a reference is caught before
 * it is committed), that exist in the working tree (a file being deleted may still be tracked).
 */
function repositoryFiles(): string[] {
  const args = ['ls-files', '-z', '--cached', '--others', '--exclude-standard'];
  const out = execFileSync('git', args, { cwd: repoRoot(), encoding: 'utf8', maxBuffer: 64 << 20 });
  const files = out.split('\0').filter((f) => f !== '' && fs.statSync(path.join(repoRoot(), f), { throwIfNoEntry: false })?.isFile());
  return [...new Set(files)];
}

const read = (file: string) => fs.readFileSync(path.join(repoRoot(), file), 'utf8');

/** GitHub's anchor for a heading: lower case, punctuation dropped, each space a hyphen. */
function slug(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');
}

/** The headings of a Markdown text (outside code fences), as written. */
function headings(text: string): string[] {
  const out: string[] = [];
  let fenced = false;
  for (const line of text.split('\n')) {
    if (line.startsWith('```')) fenced = !fenced;
    const m = !fenced && /^#{1,6} (.+)$/.exec(line);
    if (m) out.push(m[1]!.replace(/`/g, '').trim());
  }
  return out;
}

/** Every anchor a link can name in a Markdown text: headings (duplicates numbered) and `<a id>`. */
function anchors(text: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const h of headings(text)) {
    const s = slug(h);
    const n = seen.get(s) ?? 0;
    seen.set(s, n + 1);
    out.add(n === 0 ? s : `${s}-${n}`);
  }
  for (const m of text.matchAll(/<a (?:id|name)="([^"]+)"/g)) out.add(m[1]!);
  return out;
}

describe('the repository stands on its own', () => {
  const files = repositoryFiles();

  it('finds the references it is there to find, and not the word "shared" in prose', () => {
    // The forms the repository once used, rebuilt from pieces.
    const notes = ['KERNEL', 'NOTES'].join('-');
    expect(outsideReferences(`(${notes}, "XDP steering on veth")`)).toEqual([`1: ${notes}`]);
    expect(outsideReferences(`see \`${['..', 'shared', notes].join('/')}.md\``)).toHaveLength(2);
    expect(outsideReferences(`where ${['DESIGN', 'md'].join('.')} says`)).toHaveLength(1);
    const seed = ['..', 'shared', 'seed'].join('/');
    expect(outsideReferences(`x\nThe claims are in \`${seed}/\``)).toEqual([`2: ${seed.slice(0, -5)}`]);
    expect(outsideReferences(`what ${['', 'work', 'notes'].join('/')}/brief.md says`)).toHaveLength(1);
    expect(outsideReferences('the node\'s interface on the shared segment; shared structs; docs/native.md')).toEqual([]);
  });

  it('no file of the repository refers to notes outside it', () => {
    expect(files.length).toBeGreaterThan(100);
    expect(files).toContain('test/unit/docs/self-contained.test.ts');
    const found = files.flatMap((f) => outsideReferences(read(f)).map((r) => `${f}:${r}`));
    expect(found).toEqual([]);
  });

  it('every link to a section of a Markdown file names a heading or anchor that exists', () => {
    const markdown = files.filter((f) => f.endsWith('.md'));
    const known = new Map(markdown.map((f) => [f, anchors(read(f))]));
    const broken: string[] = [];
    for (const f of markdown) {
      for (const m of read(f).matchAll(/\]\(([^)\s#]*)#([^)\s]+)\)/g)) {
        const [link, target, anchor] = [m[0], m[1]!, m[2]!];
        if (target.includes('://')) continue;
        const file = target === '' ? f : path.posix.normalize(path.posix.join(path.posix.dirname(f), target));
        if (!file.endsWith('.md')) continue;
        if (!known.get(file)?.has(anchor)) broken.push(`${f}: ${link}`);
      }
    }
    expect(broken).toEqual([]);
  });

  it('every section a comment cites as docs/<name>.md, "<heading>" exists', () => {
    const docs = new Map(files.filter((f) => /^docs\/[^/]+\.md$/.test(f)).map((f) => [f, headings(read(f)).map((h) => h.toLowerCase())]));
    const cited: string[] = [];
    const broken: string[] = [];
    for (const f of files) {
      // A citation may break across lines, the second starting with a comment marker.
      for (const m of read(f).matchAll(/(docs\/[\w-]+\.md),\s*(?:(?:\/\/|\*|#)\s*)?"([^"\n]+)"/g)) {
        const [doc, section] = [m[1]!, m[2]!.toLowerCase()];
        cited.push(`${f}: ${doc}, "${m[2]}"`);
        if (!docs.get(doc)?.some((h) => h.startsWith(section))) broken.push(`${f}: ${doc}, "${m[2]}"`);
      }
    }
    // The scan sees the citations that replaced the outside references.
    expect(cited).toContain('controller/transfer/handoff.ts: docs/native.md, "Why the handoff runs in this order"');
    expect(cited).toContain('bpf/pass.c: docs/datapath.md, "XDP_TX needs an XDP program on the peer veth"');
    expect(broken).toEqual([]);
  });
});
