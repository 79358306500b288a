// The example routers' choice of target instances: the user's own node first (even before the
// list has caught up with it), then the other instances with spare capacity, least loaded first.
import { describe, expect, it } from 'vitest';
import { targetsFor } from '../../../examples/common.js';

const t = (node: string, instance: string, load: number, capacity: number, port = 80, operator = { weight: 100, draining: false }) => ({ node, app: 'http-target', instance, port, load, capacity, ...operator });

describe('targetsFor', () => {
  it('without a discovered list: the user\'s node, then the configured ones', () => {
    expect(targetsFor('n3', 80, [], ['n2', 'n3'])).toEqual([{ node: 'n3', port: 80 }, { node: 'n2', port: 80 }]);
  });

  it('own node first, least loaded instance first; others by spare capacity then load; other ports ignored', () => {
    const list = [t('n2', 'a', 5, 10), t('n2', 'b', 1, 10), t('n3', 'full', 4, 4), t('n3', 'idle', 0, 4), t('n3', 'line', 0, 9, 7000)];
    expect(targetsFor('n2', 80, list, []).map((x) => `${x.node}/${x.instance}`)).toEqual(['n2/b', 'n2/a', 'n3/idle', 'n3/full']);
  });

  it('asks the user\'s node even when the list does not show it yet', () => {
    expect(targetsFor('n2', 80, [t('n3', 'x', 0, 4)], [])).toEqual([{ node: 'n2', port: 80 }, { node: 'n3', port: 80, instance: 'x' }]);
  });

  it('skips drained and weight-0 instances, the user\'s own included; weight scales the share', () => {
    const list = [
      t('n2', 'drained', 0, 10, 80, { weight: 100, draining: true }),
      t('n3', 'zero', 0, 10, 80, { weight: 0, draining: false }),
      t('n3', 'half', 2, 10, 80, { weight: 50, draining: false }),
      t('n4', 'double', 3, 10, 80, { weight: 200, draining: false }),
    ];
    // half: 20 % used at weight 50 ranks as 40 %; double: 30 % at weight 200 as 15 %.
    expect(targetsFor('n2', 80, list, []).map((x) => `${x.node}/${x.instance}`)).toEqual(['n4/double', 'n3/half']);
  });
});
