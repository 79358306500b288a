// Random replies against the routing node's handoff in every phase. A handoff is walked (by legal
// steps and answers only) to a random phase, awaiting its answer there as the coordinator would;
// then a random sequence of schema-valid messages arrives on its two links (the target node's and
// the routing application's), for its id or another, interleaved with either link closing. The
// phase must move only as ROUTING_TRANSITIONS says, the awaited answer must be the one legal
// message (or the closing link's error), and every other message must be counted: out-of-phase
// when the handoff took it and refused it, unsolicited when nobody waited for it at all.
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../controller/log.js';
import { channelRejections, PendingReplies } from '../../controller/transfer/channel.js';
import { HandoffMachine } from '../../controller/transfer/handoff-machine.js';
import { ANSWERING_SIDE, isAnswering, nextPhase, ROUTING_PHASES, ROUTING_REPLIES, type ReplySide, type RoutingPhase, STEP_PHASES } from '../../controller/transfer/handoff-phases.js';
import { Accepts, type Decoded, type MessageType, Schemas } from '../../controller/transfer/messages.js';
import { checkAsync, runs, SEED, valid, watchProcessErrors } from './fuzz.js';

const log = createLogger({}, 'silent');
const ID = 'n1.fuzzed';
const watch = watchProcessErrors();
afterAll(() => watch.stop());

/** The messages each link delivers to PendingReplies: every reply a peer sends; from the application, closed (node-agent). */
const LINK_TYPES: Record<ReplySide, readonly MessageType[]> = {
  target: Accepts.peerReplies.filter((t) => t !== 'welcome'),
  router: ['closed'],
};

type Event = { kind: 'reply'; side: ReplySide; type: MessageType; ours: boolean; body: Record<string, unknown> } | { kind: 'link-closes'; side: ReplySide };

/** Mostly for the handoff's own id: a reply for another id is simply nobody's. */
const ours = fc.oneof({ weight: 4, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) });

const reply: fc.Arbitrary<Event> = fc.constantFrom<ReplySide>('target', 'router').chain((side) =>
  fc.constantFrom(...LINK_TYPES[side]).chain((type) =>
    fc.record({ kind: fc.constant('reply' as const), side: fc.constant(side), type: fc.constant(type), ours, body: valid(Schemas[type]) as fc.Arbitrary<Record<string, unknown>> }),
  ),
);
const linkCloses: fc.Arbitrary<Event> = fc.record({ kind: fc.constant('link-closes' as const), side: fc.constantFrom<ReplySide>('target', 'router') });
const event = fc.oneof({ weight: 9, arbitrary: reply }, { weight: 1, arbitrary: linkCloses });

/**
 * A machine walked to phase the way the coordinator walks it: legal steps and answers only, so
 * nothing is counted on the way. When the phase awaits an answer, the step under way awaits it.
 * skip: reach ready the way a handoff with nothing to commit does; failFrom: where a failed one failed.
 */
function walkTo(phase: RoutingPhase, skip: boolean, failFrom: RoutingPhase) {
  const m = new HandoffMachine(ID, log);
  const links = { target: new PendingReplies<MessageType>(), router: new PendingReplies<MessageType>() };
  m.claim(links.router, 'router');
  m.claim(links.target, 'target');
  const reply = (type: string, body: Record<string, unknown> = {}) => ({ msg: { v: 1, type, connId: ID, ...body }, blobs: [] }) as unknown as Decoded<MessageType>;
  const goal = phase === 'failed' ? failFrom : phase;
  const onward: Partial<Record<RoutingPhase, () => void>> = {
    requested: () => (m.begin('export'), m.advance('exported')),
    exported: () => (m.begin('offer'), m.advance('offered')),
    offered: () => m.receive(reply('accept', { importUs: 1 })),
    accepted: () => (m.begin('freeze'), m.advance('frozen')),
    frozen: () => (m.begin('delta'), m.begin('commit'), m.advance(skip && goal !== 'committed' ? 'ready' : 'committed')),
    committed: () => m.receive(reply('ready')),
    ready: () => (m.begin('route'), m.advance('routed'), m.begin('close')),
    routed: () => m.receive(reply('closed')),
  };
  while (m.phase !== goal) onward[m.phase]!();
  if (phase === 'failed') m.fail();
  expect(m.phase).toBe(phase);
  return { m, links };
}

describe('routing handoff under random replies', () => {
  it('in every phase: only a legal reply moves it, once; every other one is counted and changes nothing', async () => {
    let events = 0;
    let moves = 0;
    await checkAsync(
      'handoff phases: random replies',
      fc.asyncProperty(fc.constantFrom(...ROUTING_PHASES), fc.boolean(), fc.constantFrom(...ROUTING_PHASES.filter((p) => p !== 'failed')), fc.array(event, { maxLength: 12 }), async (phase, skip, failFrom, sent) => {
        const { m, links } = walkTo(phase, skip, failFrom);
        // The coordinator awaits the answer in the phase its step awaits one in.
        const awaited = isAnswering(phase) && (STEP_PHASES[m.step] as { awaits?: RoutingPhase }).awaits === phase;
        const outcome: { answer?: Decoded<MessageType>; error?: unknown } = {};
        if (awaited) m.answer(phase as 'offered', 60_000).then((d) => (outcome.answer = d as Decoded<MessageType>), (e: unknown) => (outcome.error = e));
        // The model: the phase, whether its question is still open, and the counts.
        let model = phase;
        let open = awaited;
        let want: Decoded<MessageType> | undefined;
        let failedBy: ReplySide | undefined;
        const before = channelRejections();
        let outOfPhase = 0;
        let unsolicited = 0;
        const closed = new Set<ReplySide>();
        for (const e of sent) {
          events++;
          if (e.kind === 'link-closes') {
            if (closed.has(e.side)) continue;
            closed.add(e.side);
            links[e.side].failAll(new Error(`${e.side} link closed`));
            if (open && isAnswering(model) && ANSWERING_SIDE[model] === e.side) {
              open = false;
              failedBy = e.side;
            }
            continue;
          }
          // A closed link delivers nothing more.
          if (closed.has(e.side)) continue;
          const d = { msg: { ...e.body, type: e.type, connId: e.ours ? ID : `${ID}.other` }, blobs: [] } as unknown as Decoded<MessageType>;
          const claimed = e.ours && (ROUTING_REPLIES[e.side] as readonly string[]).includes(e.type);
          const took = links[e.side].deliver(d);
          if (!claimed) {
            unsolicited++;
            expect(took).toBe(false);
          } else {
            expect(took).toBe(true);
            const next = nextPhase(model, e.type);
            if (next !== undefined && open) {
              model = next;
              open = false;
              want = d;
              moves++;
            } else outOfPhase++;
          }
          expect(m.phase).toBe(model);
        }
        await new Promise((r) => setImmediate(r));
        const after = channelRejections();
        expect(after['out-of-phase'] - before['out-of-phase']).toBe(outOfPhase);
        expect(after.unsolicited - before.unsolicited).toBe(unsolicited);
        // The other counters are the channel's: nothing here touches them.
        for (const r of ['framing', 'too-large', 'schema', 'unexpected-type', 'blob-count'] as const) expect(after[r]).toBe(before[r]);
        if (want) expect(outcome.answer).toBe(want);
        else expect(outcome.answer).toBeUndefined();
        if (failedBy) expect(outcome.error).toMatchObject({ code: 'E_PEER', message: expect.stringContaining(`${failedBy} link closed`) });
        else expect(outcome.error).toBeUndefined();
        // Released, the handoff takes nothing more: its id is nobody's.
        m.release();
        const late = channelRejections().unsolicited;
        expect(links.target.deliver({ msg: { v: 1, type: 'accept', connId: ID, importUs: 1 }, blobs: [] } as unknown as Decoded<MessageType>)).toBe(false);
        expect(channelRejections().unsolicited - late).toBe(1);
      }),
      runs(3000),
    );
    // Not vacuous: a good share of the runs met the one legal reply of their phase.
    expect(moves).toBeGreaterThan(runs(3000) / 20);
    console.log(`handoff phases fuzz: ${events} events, ${moves} legal moves, seed ${SEED}`);
  });

  it('nothing escaped: no uncaught exception, no unhandled rejection', () => {
    expect(watch.errors).toEqual([]);
  });
});
