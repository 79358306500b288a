import { describe, expect, it } from 'vitest';
import { problemOf } from '../../../controller/api/problem.js';
import { BatonError } from '../../../controller/errors.js';

describe('problem+json', () => {
  it.each([
    ['E_CONFIG', 400],
    ['E_UNAUTHORIZED', 401],
    ['E_FORBIDDEN', 403],
    ['E_NOT_FOUND', 404],
    ['E_HANDOFF_STATE', 409],
    ['E_REJECTED', 409],
    ['E_PEER', 502],
    ['E_TIMEOUT', 504],
    ['E_NATIVE', 500],
  ] as const)('%s → %i, typed, with the error context as members', (code, status) => {
    const p = problemOf(new BatonError(code, 'what happened', { connId: 'c1', node: 'n2', step: 'move' }), '/v1/x');
    expect(p).toMatchObject({ type: `https://baton.invalid/problems/${code}`, title: code, status, instance: '/v1/x', connId: 'c1', node: 'n2', step: 'move' });
    expect(p.detail).toContain('what happened');
  });

  it('a schema failure is a 400 naming the field', () => {
    const err = Object.assign(new Error('body/weight must be >= 0'), { validation: [{}], statusCode: 400 });
    expect(problemOf(err, '/v1/targets/n2/a')).toMatchObject({ status: 400, title: 'E_VALIDATION', detail: 'body/weight must be >= 0' });
  });
});
