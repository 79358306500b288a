// Which distributor a node sends its routing-table requests to: the first one until one claims to
// be active; a node that is not a distributor is never believed; a claim lapses when its node goes
// quiet, and ends when it stands down; two at once (split brain) are settled by the later
// activation.
import { describe, expect, it } from 'vitest';
import { ActiveDistributor } from '../../../controller/ha/active.js';
import { EXPIRY_MS } from '../../../controller/control/server.js';

const config = { distributors: ['n1', 'n2'] };

/** A node's view with a clock the test moves. */
function view(self: string) {
  let t = 1_000_000;
  const active = new ActiveDistributor(config, self, () => t);
  return { active, advance: (ms: number) => (t += ms) };
}

describe('the active distributor as a node knows it', () => {
  it('is the first distributor until one claims to be active', () => {
    const { active } = view('n3');
    expect(active.name()).toBe('n1');
    expect(active.since()).toBe(0);
    expect(active.isSelf()).toBe(false);
    expect(view('n1').active.isSelf()).toBe(true);
  });

  it('follows a claim, and keeps the last one when every distributor goes quiet', () => {
    const { active, advance } = view('n3');
    expect(active.heard({ node: 'n2', since: 2000, active: true })).toBe(true);
    expect(active.name()).toBe('n2');
    expect(active.since()).toBe(2000);
    advance(EXPIRY_MS + 1);
    // Nobody claims any more: the last one known is still the best guess.
    expect(active.name()).toBe('n2');
    expect(active.othersActive()).toBe(false);
  });

  it('never believes a node that is not a distributor', () => {
    const { active } = view('n3');
    expect(active.heard({ node: 'n3', since: 5, active: true })).toBe(false);
    expect(active.heard({ node: 'n9', since: 5, active: true })).toBe(false);
    expect(active.name()).toBe('n1');
  });

  it('split brain: the later activation wins, whichever order the claims come in', () => {
    for (const order of [[{ node: 'n1', since: 1000, active: true }, { node: 'n2', since: 5000, active: true }], [{ node: 'n2', since: 5000, active: true }, { node: 'n1', since: 1000, active: true }]]) {
      const { active } = view('n3');
      for (const a of order) active.heard(a);
      expect(active.name()).toBe('n2');
    }
  });

  it('a claim lapses when its node goes quiet (it died): the other one, still repeating its own, wins', () => {
    const { active, advance } = view('n3');
    active.heard({ node: 'n1', since: 9000, active: true });
    active.heard({ node: 'n2', since: 5000, active: true });
    expect(active.name()).toBe('n1');
    advance(EXPIRY_MS / 2);
    active.heard({ node: 'n2', since: 5000, active: true });
    advance(EXPIRY_MS / 2 + 1);
    expect(active.name()).toBe('n2');
  });

  it('a distributor that stands down is dropped at once, even with the later activation', () => {
    const { active } = view('n3');
    active.heard({ node: 'n2', since: 5000, active: true });
    active.heard({ node: 'n1', since: 9000, active: true });
    expect(active.name()).toBe('n1');
    active.heard({ node: 'n1', since: 0, active: false });
    expect(active.name()).toBe('n2');
  });

  it('having stood down with nobody else claiming, it names the next distributor, never itself', () => {
    const { active } = view('n1');
    active.heard({ node: 'n1', since: 5000, active: true });
    expect(active.name()).toBe('n1');
    active.heard({ node: 'n1', since: 0, active: false });
    expect(active.name()).toBe('n2');
  });

  it('its own claim holds until it stands down, however long; othersActive sees only the others', () => {
    const { active, advance } = view('n2');
    active.heard({ node: 'n2', since: 5000, active: true });
    advance(10 * EXPIRY_MS);
    expect(active.isSelf()).toBe(true);
    expect(active.othersActive()).toBe(false);
    active.heard({ node: 'n1', since: 1000, active: true });
    expect(active.othersActive()).toBe(true);
    expect(active.name()).toBe('n2');
  });
});
