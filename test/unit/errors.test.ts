// The error table is the one definition of every code: the union, the failed message's wire
// literal, the REST API's status, the SDK's retry set and docs/api.md's table all follow it.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { problemOf } from '../../controller/api/problem.js';
import { BatonError, ERROR_CODES, ERRORS, isBatonErrorCode, isRetryable } from '../../controller/errors.js';
import { repoRoot } from '../../controller/paths.js';
import { Accepts, decodeMessage, header } from '../../controller/transfer/messages.js';

/** code → status, from the "## Errors" table of docs/api.md. */
function documentedStatuses(): Map<string, number> {
  const doc = fs.readFileSync(path.join(repoRoot(), 'docs/api.md'), 'utf8');
  const section = doc.slice(doc.indexOf('## Errors'), doc.indexOf('## Routes'));
  const out = new Map<string, number>();
  for (const row of section.split('\n').filter((l) => l.startsWith('| `'))) {
    const [codes = '', statuses = ''] = row.split('|').slice(1, 3);
    const names = [...codes.matchAll(/`([A-Z_]+)`/g)].map((m) => m[1]!);
    const numbers = statuses.split(',').map((x) => Number(x.trim()));
    names.forEach((n, i) => out.set(n, numbers[Math.min(i, numbers.length - 1)]!));
  }
  return out;
}

const failed = (code: unknown) => ({ header: header('failed', { connId: 'n1.x', step: 'offer', code: code as never, reason: 'r' }), blobs: [] });

describe('the error table', () => {
  it('docs/api.md lists every code with the status the API answers it with', () => {
    const documented = documentedStatuses();
    for (const code of ERROR_CODES) {
      expect(documented.get(code), code).toBe(ERRORS[code].status);
      expect(problemOf(new BatonError(code, 'x'), '/').status, code).toBe(ERRORS[code].status);
    }
  });

  it('a failed message carries exactly the table\'s codes, and the application gets the same one', () => {
    for (const code of ERROR_CODES) expect(decodeMessage(failed(code), Accepts.router).msg).toMatchObject({ code });
    for (const bad of ['E_WHATEVER', 'e_peer', '', 7]) expect(() => decodeMessage(failed(bad), Accepts.router)).toThrow(/invalid failed message/);
    expect(isBatonErrorCode('E_QUOTA')).toBe(true);
    expect(isBatonErrorCode('__proto__')).toBe(false);
  });

  it('handoff() moves on to its next target only where the connection is still the router\'s and another target may do', () => {
    expect(ERROR_CODES.filter(isRetryable).sort()).toEqual(['E_NO_TARGET', 'E_PEER', 'E_REJECTED', 'E_TIMEOUT']);
  });

  it('a BatonError keeps its message without the context suffix, for the wire', () => {
    const e = new BatonError('E_TIMEOUT', 'no accept within 2000 ms', { connId: 'n1.x', step: 'offer' });
    expect(e.message).toBe('no accept within 2000 ms (conn=n1.x step=offer)');
    expect(e.detail).toBe('no accept within 2000 ms');
  });

  it('a reason longer than the schema allows is cut where it is sent, so the message is still taken', () => {
    const long = { header: header('reject', { connId: 'n1.x', reason: 'x'.repeat(5000) }), blobs: [] };
    expect((decodeMessage(long, Accepts.peerReplies).msg as { reason: string }).reason).toHaveLength(512);
  });
});
