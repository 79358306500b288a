// docs/architecture.md draws the routing node's and the target's handoff phases, and
// docs/protocol.md tabulates what each message does in each phase. The tables in the code
// (handoff-phases.ts, target/phases.ts) are the authority; this test derives every arrow and
// every cell from them and fails when a document drifts.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../../../controller/paths.js';
import { HANDOFF_STEPS, ROLLBACK, ROUTING_PHASES, ROUTING_REPLIES, ROUTING_TRANSITIONS, STEP_PHASES, nextPhase } from '../../../controller/transfer/handoff-phases.js';
import { TARGET_EVENTS, TARGET_PHASES, TARGET_TRANSITIONS, outcomes } from '../../../controller/transfer/target/phases.js';

const read = (doc: string) => fs.readFileSync(path.join(repoRoot(), 'docs', doc), 'utf8');

/** The arrows of the mermaid state diagram whose first line is the comment `%% name`, as "from --> to : label". */
function diagram(doc: string, name: string): string[] {
  const text = read(doc);
  const start = text.indexOf(`\`\`\`mermaid\nstateDiagram-v2\n  %% ${name}\n`);
  expect(start, `docs/${doc} has no mermaid diagram "${name}"`).toBeGreaterThanOrEqual(0);
  const body = text.slice(start, text.indexOf('\n```', start + 3));
  return body
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.includes('-->'))
    .map((l) => l.replace(/\s+/g, ' '))
    .sort();
}

const arrow = (from: string, to: string, label: string) => `${from} --> ${to} : ${label}`;

describe('docs/architecture.md: the routing node\'s phases', () => {
  it('draws every step, every answer and every failure the tables define, and nothing else', () => {
    const expected = [arrow('[*]', ROUTING_PHASES[0], 'request')];
    for (const step of HANDOFF_STEPS) {
      const { from, to } = STEP_PHASES[step];
      if (to.length === 0) expected.push(arrow(from, from, step));
      for (const t of to) expected.push(arrow(from, t, step));
    }
    for (const [phase, row] of Object.entries(ROUTING_TRANSITIONS)) {
      for (const [message, to] of Object.entries(row)) expected.push(arrow(phase, to, message));
    }
    for (const [phase, undo] of Object.entries(ROLLBACK)) {
      if (undo === 'stands') continue;
      expected.push(arrow(phase, 'failed', `fails, undoes ${undo.length ? undo.join(' + ') : 'nothing'}`));
    }
    expect(diagram('architecture.md', 'routing node')).toEqual(expected.sort());
  });
});

describe('docs/architecture.md: the target\'s phases', () => {
  it('draws every event of TARGET_TRANSITIONS with each outcome it may have, and nothing else', () => {
    const expected = [arrow('[*]', TARGET_PHASES[0], 'offer')];
    for (const [phase, row] of Object.entries(TARGET_TRANSITIONS)) {
      for (const [event, outs] of Object.entries(row as Record<string, readonly string[]>)) {
        for (const o of outs) expected.push(arrow(phase, o, event));
      }
    }
    expect(diagram('architecture.md', 'target')).toEqual(expected.sort());
  });
});

/**
 * The rows of the first table at or after the first occurrence of `marker` in `text` (from the
 * `nth` occurrence when given), cells trimmed, backticks dropped; the header and separator rows
 * included.
 */
function tableAfter(text: string, marker: string, nth = 0): string[][] {
  let at = -1;
  for (let i = 0; i <= nth; i++) at = text.indexOf(marker, at + 1);
  expect(at, `no "${marker}" (${nth}) in the document`).toBeGreaterThanOrEqual(0);
  const lines = text.slice(at).split('\n');
  const start = lines.findIndex((l) => l.startsWith('|'));
  const rows: string[][] = [];
  for (const line of lines.slice(start)) {
    if (!line.startsWith('|')) break;
    rows.push(line.split('|').slice(1, -1).map((c) => c.trim().replaceAll('`', '')));
  }
  return rows;
}

describe('docs/protocol.md: what each message does in each phase', () => {
  it('routing node: each cell names the phase nextPhase gives, or says refused', () => {
    const [head, , ...rows] = tableAfter(read('protocol.md'), "### The routing node's phases");
    const messages = head!.slice(1);
    expect([...messages].sort()).toEqual([...new Set([...ROUTING_REPLIES.target, ...ROUTING_REPLIES.router])].sort());
    const listed = new Set<string>();
    for (const [phase, ...cells] of rows) {
      if (phase === 'any other') {
        const others = ROUTING_PHASES.filter((p) => !listed.has(p));
        for (const p of others) for (const m of messages) expect(nextPhase(p, m), `${p} × ${m}`).toBeUndefined();
        expect(cells.every((c) => c === 'refused')).toBe(true);
        continue;
      }
      listed.add(phase!);
      messages.forEach((m, i) => {
        const to = nextPhase(phase as (typeof ROUTING_PHASES)[number], m);
        if (to === undefined) expect(cells[i], `${phase} × ${m}`).toBe('refused');
        else expect(cells[i], `${phase} × ${m}`).toMatch(new RegExp(`^→ ${to}\\b`));
      });
    }
    expect(rows.at(-1)?.[0]).toBe('any other');
  });

  it('target: each phase has a row, and a cell says refused exactly when TARGET_TRANSITIONS does not take the event', () => {
    const [head, , ...rows] = tableAfter(read('protocol.md'), "### The target's phases");
    const events = head!.slice(1).map((h) => h.split(' ')[0]!);
    expect([...events].sort()).toEqual(TARGET_EVENTS.filter((e) => e !== 'offer').sort());
    expect(rows.map((r) => r[0])).toEqual([...TARGET_PHASES]);
    for (const [phase, ...cells] of rows) {
      if (phase === 'live') {
        // The transfer is over here (one cell says so): no event is taken.
        expect(Object.keys(TARGET_TRANSITIONS.live)).toEqual([]);
        continue;
      }
      events.forEach((e, i) => {
        const taken = outcomes(phase as (typeof TARGET_PHASES)[number], e as (typeof TARGET_EVENTS)[number]) !== undefined;
        expect(cells[i]!.startsWith('refused'), `${phase} × ${e}`).toBe(!taken);
      });
    }
  });
});

describe('docs/architecture.md: what is true in each phase', () => {
  it('describes every phase of each side, in order, and no other', () => {
    const phases = (nth: number) => tableAfter(read('architecture.md'), '| phase | what is true |', nth).slice(2).map((r) => r[0]);
    expect(phases(0)).toEqual([...ROUTING_PHASES]);
    expect(phases(1)).toEqual([...TARGET_PHASES]);
  });
});
