// docs/architecture.md shows which part of batond handles each message a peer or an application may
// send; the tables in the code are the authority, and this test fails when the doc drifts from them.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { APP_HANDLERS } from '../../../controller/agent/app-front.js';
import { PEER_HANDLERS } from '../../../controller/agent/peer-front.js';
import { repoRoot } from '../../../controller/paths.js';
import { Accepts } from '../../../controller/transfer/messages.js';

const doc = fs.readFileSync(path.join(repoRoot(), 'docs/architecture.md'), 'utf8');

/** The rows of the first table after a line starting with `after`, as arrays of cell texts (backticks dropped). */
function tableAfter(after: string): string[][] {
  const lines = doc.slice(doc.indexOf(after)).split('\n');
  const start = lines.findIndex((l) => l.startsWith('|'));
  const rows: string[][] = [];
  for (const line of lines.slice(start + 2)) {
    if (!line.startsWith('|')) break;
    rows.push(line.split('|').slice(1, -1).map((c) => c.trim().replaceAll('`', '')));
  }
  return rows;
}

describe('who handles which message (docs/architecture.md against the code)', () => {
  it('peer messages: every one the peer link accepts, each with its handler', () => {
    expect(Object.keys(PEER_HANDLERS).sort()).toEqual([...Accepts.agentFromPeer].sort());
    expect(Object.fromEntries(tableAfter('From a peer node:').map(([m, by]) => [m, by]))).toEqual(PEER_HANDLERS);
  });

  it('application messages: every one the application socket accepts, each with its role and handler', () => {
    expect(Object.keys(APP_HANDLERS).sort()).toEqual([...new Set([...Accepts.agentFromRouter, ...Accepts.agentFromTarget])].sort());
    expect(Object.fromEntries(tableAfter('From a local application').map(([m, role, by]) => [m, { role, by }]))).toEqual(APP_HANDLERS);
  });
});
