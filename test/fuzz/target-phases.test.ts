// The target's handoff phases under random message sequences: offers from the distributor (n1)
// and from another node (n3, whose offers wait for the distributor's word), the distributor's
// answers, a deciding or a non-deciding application's answers, commits (some that cannot apply),
// lives and aborts, for a few connection ids, in any order, from either link. A model of the
// machine, whose legality is TARGET_TRANSITIONS itself, predicts what each one does: the relay
// must make exactly the socket calls and send exactly the messages the model says, in order
// (every message through the real codecs both ways, test/helpers/target-world.ts). So the phase
// changes only through the table's transitions; every message the table refuses is counted
// (out-of-phase) and makes no socket call and no change, answered only when it is a commit; and a
// message for no transfer of that link or application is counted as unsolicited.
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { channelRejections } from '../../controller/transfer/channel.js';
import { outcomes, type TargetEvent, type TargetPhase } from '../../controller/transfer/target/phases.js';
import { targetWorld } from '../helpers/target-world.js';
import { checkAsync, runs, SEED, watchProcessErrors } from './fuzz.js';

const IDS = ['a', 'b'] as const;
const LINKS = ['n1', 'n3'] as const;
type Id = (typeof IDS)[number];
type Link = (typeof LINKS)[number];

/**
 * A routing node's message comes on the link of the transfer it names, or, one time in five, on
 * the other (a node that did not offer it); for an id with no transfer, on n1 or n3 as drawn.
 */
type Routed = { id: Id; on: Link; stranger: boolean };
type Step =
  | { kind: 'offer'; id: Id; on: Link }
  | { kind: 'owner'; id: Id; yes: boolean }
  | { kind: 'decided'; id: Id; accept: boolean }
  | ({ kind: 'commit'; unsent: number } & Routed)
  | ({ kind: 'live'; clock: boolean } & Routed)
  | ({ kind: 'abort' } & Routed);

const id = fc.constantFrom(...IDS);
const on = fc.constantFrom(...LINKS);
const stranger = fc.integer({ min: 0, max: 4 }).map((n) => n === 0);
const step: fc.Arbitrary<Step> = fc.oneof(
  fc.record({ kind: fc.constant('offer' as const), id, on }),
  fc.record({ kind: fc.constant('owner' as const), id, yes: fc.boolean() }),
  fc.record({ kind: fc.constant('decided' as const), id, accept: fc.boolean() }),
  // The offered tail is 4 bytes: more cannot have stayed unsent, and the commit fails.
  fc.record({ kind: fc.constant('commit' as const), id, on, stranger, unsent: fc.integer({ min: 0, max: 5 }) }),
  fc.record({ kind: fc.constant('live' as const), id, on, stranger, clock: fc.boolean() }),
  fc.record({ kind: fc.constant('abort' as const), id, on, stranger }),
);
const other = (link: Link): Link => (link === 'n1' ? 'n3' : 'n1');
/** A socket reinstated and the offer accepted on its link. */
const imports = (link: Link) => ['reinstate', `${link}:accept`];

/** One transfer as the model sees it. */
interface Modelled {
  phase: TargetPhase;
  link: Link;
  unsent: number;
  /** Which offer of this id it is: the distributor's answer to an earlier one must find nothing. */
  gen: number;
}

let sequences = 0;
const watch = watchProcessErrors();
afterAll(() => {
  watch.stop();
  console.log(`target phases fuzz: ${sequences} sequences, seed ${SEED}`);
});

describe('target handoff phases under random message sequences', () => {
  it('every step does exactly what the table allows: legal ones their transition, others nothing but a count (and a reject for a commit)', async () => {
    await checkAsync(
      'target phases',
      fc.asyncProperty(fc.boolean(), fc.array(step, { minLength: 1, maxLength: 40, size: 'max' }), async (decides, steps) => {
        sequences++;
        const w = targetWorld();
        const app = w.app({ decides });
        const model = new Map<Id, Modelled>();
        const gens = new Map<Id, number>();
        /** The distributor's questions not answered yet, oldest first, by id, with the offer they are about. */
        const asking = new Map<Id, Array<{ gen: number; index: number }>>();
        let askedSoFar = 0;
        const before = channelRejections();
        let outOfPhase = 0;
        let unsolicited = 0;
        let duplicates = 0;
        let notOwner = 0;
        /** Ids gone live: served here under their handoff id (a later live of the same id takes its place). */
        const lived = new Set<Id>();
        // A socket event's kind (the fd and bytes are the unit tests' business), or the message as `<who>:<type>`.
        const kinds = (from: number) => w.events.slice(from).map((e) => e.split(' ')[0]);
        /** Does the table take the event in the transfer's phase? */
        const legal = (t: Modelled, event: TargetEvent) => outcomes(t.phase, event) !== undefined;
        const built = (t: Modelled) => t.phase === 'imported' || t.phase === 'committed';
        /** What the sender's being vouched for starts: the application asked, or the socket built and accepted. */
        const start = (t: Modelled): string[] => {
          t.phase = decides ? 'deciding' : 'imported';
          return decides ? ['app:decide'] : imports(t.link);
        };

        for (const drawn of steps) {
          const from = w.events.length;
          const t = model.get(drawn.id);
          const s = 'stranger' in drawn && t ? { ...drawn, on: drawn.stranger ? other(t.link) : t.link } : drawn;
          const here = t && (s.kind === 'owner' || s.kind === 'decided' || t.link === s.on) ? t : undefined;
          let expected: string[] = [];
          const was = here?.phase;
          /** The phase after the step; undefined once the transfer ended here. */
          let next: TargetPhase | undefined = was;
          switch (s.kind) {
            case 'offer': {
              if (t) {
                duplicates++;
                expected = [`${s.on}:reject`];
                w.offer(s.on, s.id);
                break;
              }
              const gen = (gens.get(s.id) ?? 0) + 1;
              gens.set(s.id, gen);
              const fresh: Modelled = { phase: 'offered', link: s.on, unsent: 4, gen };
              model.set(s.id, fresh);
              if (s.on === 'n1') expected = start(fresh);
              else asking.set(s.id, [...(asking.get(s.id) ?? []), { gen, index: askedSoFar++ }]);
              next = fresh.phase;
              w.offer(s.on, s.id);
              break;
            }
            case 'owner': {
              const q = asking.get(s.id)?.shift();
              if (!q) continue;
              const current = t && t.gen === q.gen ? t : undefined;
              if (current) {
                expect(legal(current, 'owner')).toBe(true);
                if (s.yes) expected = start(current);
                else {
                  notOwner++;
                  expected = [`${current.link}:reject`];
                  model.delete(s.id);
                }
                next = s.yes ? current.phase : undefined;
              }
              await w.asked[q.index]!.answer(s.yes);
              break;
            }
            case 'decided': {
              if (!here) unsolicited++;
              else if (!legal(here, 'decided')) outOfPhase++;
              else if (here && s.accept) {
                expected = imports(here.link);
                here.phase = next = 'imported';
              } else if (here) {
                expected = [`${here.link}:reject`];
                model.delete(s.id);
                next = undefined;
              }
              w.answer(app, 'decided', s.accept ? { connId: s.id, accept: true } : { connId: s.id, accept: false, reason: 'fuzz says no' });
              break;
            }
            case 'commit': {
              if (!here) {
                unsolicited++;
                expected = [`${s.on}:reject`];
              } else if (!legal(here, 'commit')) {
                outOfPhase++;
                expected = [`${s.on}:reject`];
              } else if (s.unsent > here.unsent) {
                expected = ['discard', `${s.on}:reject`];
                model.delete(s.id);
                next = undefined;
              } else {
                expected = ['complete', `${s.on}:ready`];
                here.unsent = s.unsent;
                here.phase = next = 'committed';
              }
              w.commit(s.on, s.id, s.unsent);
              break;
            }
            case 'live': {
              if (!here) unsolicited++;
              else if (!legal(here, 'live')) outOfPhase++;
              else if (here) {
                expected = ['goLive', 'descriptor', 'app:transferred', 'release'];
                lived.add(s.id);
                model.delete(s.id);
                next = undefined;
              }
              w.live(s.on, s.id, s.clock ? 12345 : undefined);
              break;
            }
            case 'abort': {
              if (!here) unsolicited++;
              else {
                expect(legal(here, 'abort')).toBe(true);
                expected = here.phase === 'deciding' ? ['app:abort'] : built(here) ? ['discard'] : [];
                model.delete(s.id);
                next = undefined;
              }
              w.abort(s.on, s.id);
              break;
            }
          }
          expect(kinds(from), `${JSON.stringify(s)} in ${here?.phase ?? 'no transfer'}`).toEqual(expected);
          // Only the table's moves: the model moved along a row of TARGET_TRANSITIONS, or stayed.
          if (was && next !== was) expect(outcomes(was, s.kind)).toContain(next ?? 'ended');
          const now = channelRejections();
          expect(now['out-of-phase'] - before['out-of-phase']).toBe(outOfPhase);
          expect(now.unsolicited - before.unsolicited).toBe(unsolicited);
        }
        expect(w.relay.refusals()).toMatchObject({ duplicate: duplicates, 'not-owner': notOwner });
        expect(w.relay.servedCount).toBe(lived.size);
        expect(w.events.filter((e) => e.includes('undecodable'))).toEqual([]);
        // Whatever is still here is dropped at close, each reinstated socket silently.
        const from = w.events.length;
        const reinstated = [...model.values()].filter(built).length;
        w.relay.close();
        expect(kinds(from)).toEqual(Array(reinstated).fill('discard'));
      }),
      runs(1500),
    );
    expect(watch.errors).toEqual([]);
  });
});
