// One handoff's phase at the routing node, and the only code that changes it (handoff-phases.ts has
// the tables). The coordinator (handoff.ts) moves it by its own steps; a message from the target
// node or the routing application moves it only as ROUTING_TRANSITIONS says. Every such message
// for the handoff's id on its two links reaches receive(), legal or not (PendingReplies.claim):
// what its phase does not allow (a ready while offered, a second accept, a closed before the route
// switched) is refused, counted in baton_transfer_rejected_total{reason="out-of-phase"}, logged
// sparsely, and changes nothing: the handoff goes on, or times out, as it would have.
import { BatonError } from '../errors.js';
import type { Logger } from '../log.js';
import { countRefusedMessage, type PendingReplies } from './channel.js';
import {
  ANSWERING_SIDE,
  type AnswerTo,
  type AnsweringPhase,
  ROUTING_REPLIES,
  type RoutingPhase,
  type HandoffStep,
  isAnswering,
  nextPhase,
  type ReplySide,
  REQUEST_STEP,
  ROUTING_TRANSITIONS,
  STEP_PHASES,
} from './handoff-phases.js';
import type { Decoded, MessageType } from './messages.js';
import { logSparsely } from '../input.js';

/** The answer a phase awaits: created on entering it, so a legal message never finds nobody to take it. */
interface Answer {
  side: ReplySide;
  promise: Promise<Decoded<MessageType>>;
  settle(outcome: { answer: Decoded<MessageType> } | { error: BatonError }): void;
  /** Armed by the step that waits (answer()), so a phase left without waiting leaves no timer behind. */
  timer?: NodeJS.Timeout;
  done: boolean;
}

export class HandoffMachine {
  private current: RoutingPhase = 'requested';
  private currentStep: HandoffStep = REQUEST_STEP;
  private pending?: Answer;
  private readonly releases: Array<() => void> = [];

  constructor(
    readonly connId: string,
    private readonly log: Logger,
  ) {}

  get phase(): RoutingPhase {
    return this.current;
  }

  /** The step under way: what a failure names. */
  get step(): HandoffStep {
    return this.currentStep;
  }

  /** Starts a step; it must start from its own phase (STEP_PHASES), or the coordinator has a bug. */
  begin(step: HandoffStep): void {
    const { from } = STEP_PHASES[step];
    if (this.current !== from) throw new BatonError('E_HANDOFF_STATE', `step ${step} starts in phase ${from}, not ${this.current}`, { connId: this.connId, step });
    this.currentStep = step;
  }

  /** The step under way moved the handoff on by its own work: only from its phase, only where STEP_PHASES says. */
  advance(to: RoutingPhase): void {
    const { from, to: allowed } = STEP_PHASES[this.currentStep];
    if (this.current !== from || !(allowed as readonly RoutingPhase[]).includes(to)) {
      throw new BatonError('E_HANDOFF_STATE', `step ${this.currentStep} cannot move phase ${this.current} to ${to}`, { connId: this.connId, step: this.currentStep });
    }
    this.enter(to);
  }

  /**
   * The answer the step under way awaits in phase (STEP_PHASES: awaits): the message that moved
   * the handoff on. Rejects with E_TIMEOUT after timeoutMs, or with the link's error if the link
   * it comes on closes.
   */
  answer<P extends AnsweringPhase>(phase: P, timeoutMs: number): Promise<Decoded<AnswerTo<P>>> {
    const a = this.pending;
    const awaits: RoutingPhase | undefined = (STEP_PHASES[this.currentStep] as { awaits?: RoutingPhase }).awaits;
    if (this.current !== phase || awaits !== phase || !a) {
      return Promise.reject(new BatonError('E_HANDOFF_STATE', `step ${this.currentStep} awaits no answer in phase ${this.current}`, { connId: this.connId, step: this.currentStep }));
    }
    if (!a.done && !a.timer) {
      const legal = Object.keys(ROUTING_TRANSITIONS[phase]).join('/');
      a.timer = setTimeout(() => a.settle({ error: new BatonError('E_TIMEOUT', `no ${legal} within ${timeoutMs} ms`, { connId: this.connId, step: this.currentStep }) }), timeoutMs);
    }
    return a.promise as Promise<Decoded<AnswerTo<P>>>;
  }

  /** A message of this handoff from either of its links: the transition ROUTING_TRANSITIONS gives, or refused. */
  receive(d: Decoded<MessageType>): void {
    const next = nextPhase(this.current, d.msg.type);
    const a = this.pending;
    // Legal only while its question is open: once answered (or timed out) the phase is being left.
    if (next === undefined || !a || a.done) {
      const refused = countRefusedMessage('out-of-phase');
      // A peer that floods them must not flood the log: the first ten, then every 1000th.
      if (logSparsely(refused)) {
        this.log.warn({ connId: this.connId, type: d.msg.type, phase: this.current, step: this.currentStep, refused }, 'message refused: not legal in the handoff\'s phase');
      }
      return;
    }
    a.settle({ answer: d });
    this.enter(next);
  }

  /** The link a side speaks on closed: the answer awaited from that side (if any) fails with err. */
  linkFailed(side: ReplySide, err: BatonError): void {
    const a = this.pending;
    if (a && !a.done && a.side === side) a.settle({ error: err });
  }

  /** Takes every message of this handoff's side on replies (its link), for as long as the handoff lives. */
  claim(replies: Pick<PendingReplies<never>, 'claim'>, side: ReplySide): void {
    this.releases.push(replies.claim(this.connId, { types: ROUTING_REPLIES[side], receive: (d) => this.receive(d), fail: (err) => this.linkFailed(side, err) }));
  }

  /**
   * The handoff failed: from now on nothing moves it (every message is refused). Returns the
   * phase it failed in, which decides the rollback (ROLLBACK), and the step it names.
   */
  fail(): { phase: RoutingPhase; step: HandoffStep } {
    const phase = this.current;
    this.enter('failed');
    return { phase, step: this.currentStep };
  }

  /** The handoff is over: its links' messages go back to whoever else waits on them. */
  release(): void {
    while (this.releases.length) this.releases.pop()!();
    this.discard();
  }

  private enter(to: RoutingPhase): void {
    this.discard();
    this.current = to;
    if (isAnswering(to)) this.pending = answerFrom(ANSWERING_SIDE[to]);
  }

  /** Drops the answer of the phase being left: nobody waits for it any more. */
  private discard(): void {
    const a = this.pending;
    this.pending = undefined;
    if (a && !a.done) {
      clearTimeout(a.timer);
      a.done = true;
    }
  }
}

function answerFrom(side: ReplySide): Answer {
  let resolve!: (d: Decoded<MessageType>) => void;
  let reject!: (e: BatonError) => void;
  const promise = new Promise<Decoded<MessageType>>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Rejected only while a step awaits it (answer() is called in the same tick the phase is
  // entered); this keeps a rejection of an answer nobody took from counting as unhandled.
  promise.catch(() => undefined);
  const a: Answer = {
    side,
    promise,
    done: false,
    settle(outcome) {
      if (a.done) return;
      a.done = true;
      clearTimeout(a.timer);
      if ('answer' in outcome) resolve(outcome.answer);
      else reject(outcome.error);
    },
  };
  return a;
}
