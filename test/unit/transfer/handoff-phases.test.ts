// The routing node's handoff phases as tables (handoff-phases.ts) and the machine that enforces
// them (handoff-machine.ts), without sockets: the steps in their order walk the phases end to end,
// a step cannot start or move from elsewhere, each message moves only where the table says, a
// link that closes fails only the answer awaited from it, and the wire schema takes exactly the
// steps. test/unit/transfer/handoff.test.ts runs the same machine inside the coordinator against a
// scripted target; test/fuzz/handoff-phases.test.ts throws random replies at it in every phase.
import { afterEach, describe, expect, it } from 'vitest';
import { isBatonError } from '../../../controller/errors.js';
import { createLogger } from '../../../controller/log.js';
import { channelRejections, PendingReplies } from '../../../controller/transfer/channel.js';
import { HandoffMachine } from '../../../controller/transfer/handoff-machine.js';
import { ANSWERING_SIDE, HANDOFF_STEPS, isAnswering, nextPhase, ROLLBACK, ROUTING_PHASES, ROUTING_REPLIES, ROUTING_TRANSITIONS, type RoutingPhase, STEP_PHASES } from '../../../controller/transfer/handoff-phases.js';
import { Accepts, decodeMessage, type Decoded, header, type MessageType } from '../../../controller/transfer/messages.js';

const log = createLogger({}, 'silent');
const machines: HandoffMachine[] = [];
afterEach(() => {
  while (machines.length) machines.pop()!.release();
});

function machine(): { m: HandoffMachine; target: PendingReplies<MessageType>; router: PendingReplies<MessageType> } {
  const m = new HandoffMachine('n1.t', log);
  machines.push(m);
  const target = new PendingReplies<MessageType>();
  const router = new PendingReplies<MessageType>();
  m.claim(router, 'router');
  m.claim(target, 'target');
  return { m, target, router };
}

const msg = (type: string, body: Record<string, unknown> = {}) => ({ msg: { v: 1, type, connId: 'n1.t', ...body }, blobs: [] }) as unknown as Decoded<MessageType>;

describe('routing handoff phases', () => {
  it('the steps in their order walk the phases from requested to closed, and only the table moves them', async () => {
    const { m, target, router } = machine();
    const path: RoutingPhase[] = [m.phase];
    const note = () => path.at(-1) !== m.phase && path.push(m.phase);
    // The answer each answering phase gets on the way, from the side that sends it.
    const replies = { offered: [target, msg('accept', { importUs: 1 })], committed: [target, msg('ready')], routed: [router, msg('closed')] } as const;
    for (const step of HANDOFF_STEPS) {
      m.begin(step);
      const { to: [to], awaits } = STEP_PHASES[step] as { to: readonly RoutingPhase[]; awaits?: RoutingPhase };
      // close starts in the phase it awaits its answer in (routed); offer and commit move there first.
      if (to && awaits !== m.phase) m.advance(to);
      note();
      if (awaits !== undefined && isAnswering(m.phase)) {
        const answer = m.answer(m.phase, 1000);
        const [link, reply] = replies[m.phase];
        expect(link.deliver(reply)).toBe(true);
        expect(await answer).toBe(reply);
        note();
      }
    }
    expect(path).toEqual(['requested', 'exported', 'offered', 'accepted', 'frozen', 'committed', 'ready', 'routed', 'closed']);
    // Every phase but failed is on the way (failed is where fail() puts any of them).
    expect([...path, 'failed'].sort()).toEqual([...ROUTING_PHASES].sort());
  });

  it('nothing to commit: the commit step goes from frozen to ready at once, no answer awaited', () => {
    const { m } = machine();
    for (const step of ['check', 'admit', 'export', 'offer'] as const) {
      m.begin(step);
      const [to] = STEP_PHASES[step].to;
      if (to) m.advance(to);
    }
    m.receive(msg('accept', { importUs: 1 }));
    m.begin('freeze');
    m.advance('frozen');
    m.begin('delta');
    m.begin('commit');
    m.advance('ready');
    expect(m.phase).toBe('ready');
    m.begin('route');
  });

  it('a step started from another phase, or moving where its table does not say, is refused and changes nothing', async () => {
    const { m } = machine();
    // A request refused before its first step names export (REQUEST_STEP), as batond always did.
    expect(m.step).toBe('export');
    expect(() => m.begin('offer')).toThrow(/step offer starts in phase exported, not requested/);
    expect(() => m.advance('frozen')).toThrow(/step export cannot move phase requested to frozen/);
    m.begin('check');
    expect(() => m.advance('exported')).toThrow(/step check cannot move/);
    expect(m.phase).toBe('requested');
    await expect(m.answer('offered', 10)).rejects.toMatchObject({ code: 'E_HANDOFF_STATE' });
    // route does not wait in routed: close does.
    const walked = machine().m;
    walked.begin('export');
    walked.advance('exported');
    walked.begin('offer');
    walked.advance('offered');
    walked.receive(msg('accept', { importUs: 1 }));
    for (const [step, to] of [['freeze', 'frozen'], ['commit', 'ready'], ['route', 'routed']] as const) {
      walked.begin(step);
      walked.advance(to);
    }
    await expect(walked.answer('routed', 10)).rejects.toThrow(/step route awaits no answer in phase routed/);
    walked.begin('close');
    expect(walked.phase).toBe('routed');
  });

  it('each phase that awaits an answer hears from one side, on messages that side\'s link carries', () => {
    const peerReplies: readonly string[] = Accepts.peerReplies;
    const fromRouter: readonly string[] = Accepts.agentFromRouter;
    expect(ROUTING_REPLIES.target.every((t) => peerReplies.includes(t))).toBe(true);
    expect(ROUTING_REPLIES.router.every((t) => fromRouter.includes(t))).toBe(true);
    for (const row of Object.values(ROUTING_TRANSITIONS)) {
      const sides = new Set(Object.keys(row).map((t) => ((ROUTING_REPLIES.router as readonly string[]).includes(t) ? 'router' : 'target')));
      expect(sides.size).toBe(1);
    }
    expect(ANSWERING_SIDE).toEqual({ offered: 'target', committed: 'target', routed: 'router' });
    // A reject returns the handoff to where it was before the request it answers.
    expect(nextPhase('offered', 'reject')).toBe('exported');
    expect(nextPhase('committed', 'reject')).toBe('frozen');
    expect(nextPhase('accepted', 'accept')).toBeUndefined();
    expect(nextPhase('offered', 'toString')).toBeUndefined();
  });

  it('rollback by phase: resume once exported, abort while the target may hold a socket, unfreeze once frozen, nothing once routed', () => {
    const at = (p: RoutingPhase) => ROUTING_PHASES.indexOf(p);
    for (const phase of ROUTING_PHASES) {
      const undo = ROLLBACK[phase];
      if (at(phase) >= at('routed')) {
        expect(undo, phase).toBe('stands');
        continue;
      }
      const between = (a: RoutingPhase, b: RoutingPhase) => at(phase) >= at(a) && at(phase) <= at(b);
      expect(undo, phase).toEqual([...(between('frozen', 'ready') ? ['unfreeze'] : []), ...(between('offered', 'ready') ? ['abort'] : []), ...(between('exported', 'ready') ? ['resume'] : [])]);
    }
  });

  it('a link that closes fails the answer awaited from it, never one awaited from the other side; a timeout leaves the phase as it was', async () => {
    const { m, target, router } = machine();
    m.begin('export');
    m.advance('exported');
    m.begin('offer');
    m.advance('offered');
    const answer = m.answer('offered', 60_000);
    let settled = false;
    answer.then(() => (settled = true), () => (settled = true));
    router.failAll(new Error('routing application disconnected'));
    await new Promise((r) => setImmediate(r));
    expect(settled).toBe(false);
    target.failAll(new Error('link to n2 closed'));
    await expect(answer).rejects.toMatchObject({ code: 'E_PEER', message: expect.stringContaining('link to n2 closed') });
    expect(m.phase).toBe('offered');

    const second = machine();
    second.m.begin('export');
    second.m.advance('exported');
    second.m.begin('offer');
    second.m.advance('offered');
    const err = await second.m.answer('offered', 20).catch((e: unknown) => e);
    expect(isBatonError(err, 'E_TIMEOUT') && err.message).toMatch(/^no accept\/reject within 20 ms/);
    // Its answer timed out: a late accept is refused, and the phase stays for the rollback to read.
    const before = channelRejections()['out-of-phase'];
    second.target.deliver(msg('accept', { importUs: 1 }));
    expect(channelRejections()['out-of-phase'] - before).toBe(1);
    expect(second.m.fail()).toEqual({ phase: 'offered', step: 'offer' });
    expect(second.m.phase).toBe('failed');
  });

  it('the failed message names one of the steps, nothing else', () => {
    const failed = (step: string) => ({ header: header('failed', { connId: 'n1.x', step: step as never, code: 'E_TIMEOUT', reason: 'r' }), blobs: [] });
    for (const step of HANDOFF_STEPS) expect(decodeMessage(failed(step), ['failed']).msg).toMatchObject({ step });
    for (const step of ['validate', 'handoff', '', 'x'.repeat(33)]) expect(() => decodeMessage(failed(step), ['failed'])).toThrow(/invalid failed message at \/step/);
  });
});
