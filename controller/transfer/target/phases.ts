// The phases of one transfer at the target node, and which event moves it from which phase to
// which: the one table the target's handoff (handoffs.ts) follows, the docs draw, and the tests
// drive. An event not in the row of the transfer's phase is refused: counted
// (baton_transfer_rejected_total{reason="out-of-phase"}), logged sparsely, answered with a reject
// only when its sender waits for an answer (a commit), and nothing else happens: no socket call,
// no message to the application, the transfer stays in its phase.
//
//   offered    the offer passed every check that needs no one else's word (admission.ts) and is
//              held here; nothing is built. An offer from the distributor leaves at once; one from
//              any other node (a transfer again) waits here for the distributor's word that the
//              sender serves the flow (owner): one round trip.
//   deciding   the application decides on offers itself and was asked (decide); nothing is built.
//   imported   the socket is reinstated in repair mode and accept was sent.
//   committed  the routing node's delta is applied and ready was sent.
//   live       the socket left repair mode and is the application's: the transfer is over here
//              and the connection is one this node serves (served.ts).
//
// An offer starts a transfer in `offered`; an offer naming a transfer already here, in any phase,
// is refused as a duplicate (an offer refusal, admission.ts). Whatever the phase, a transfer also
// ends when its application goes away (reject to the routing node), when the link to the routing
// node closes, or when it is neither finished nor aborted in time (stale): these are not messages,
// and each is taken in every phase. A message for a transfer that is not here at all (never was,
// or ended: refused, aborted, live), or is here for another link or application, is not out of
// phase but unsolicited: counted as such, a commit answered with a reject, nothing else
// (docs/protocol.md, "The target's phases").

/** A transfer's phases at the target, in the order a handoff goes through them. */
export const TARGET_PHASES = ['offered', 'deciding', 'imported', 'committed', 'live'] as const;
export type TargetPhase = (typeof TARGET_PHASES)[number];

/**
 * What moves a transfer: the routing node's messages (offer, commit, live, abort), the deciding
 * application's answer (decided), and the distributor's answer about the sender (owner).
 */
export const TARGET_EVENTS = ['offer', 'owner', 'decided', 'commit', 'live', 'abort'] as const;
export type TargetEvent = (typeof TARGET_EVENTS)[number];

/** Where an event may lead: the next phase, or `ended` (refused, failed or aborted: nothing is left here). */
export type TargetOutcome = TargetPhase | 'ended';

/**
 * Phase × event → the outcomes the event may have in that phase; an event absent from a phase's
 * row is out of phase there. The first outcome is the handoff going on; the others are its
 * failures (the distributor says no, the application refuses, a socket step fails).
 */
export const TARGET_TRANSITIONS = {
  offered: { owner: ['deciding', 'imported', 'ended'], abort: ['ended'] },
  deciding: { decided: ['imported', 'ended'], abort: ['ended'] },
  imported: { commit: ['committed', 'ended'], live: ['live', 'ended'], abort: ['ended'] },
  committed: { live: ['live', 'ended'], abort: ['ended'] },
  live: {},
} as const satisfies Record<TargetPhase, Partial<Record<TargetEvent, readonly TargetOutcome[]>>>;

type Row<P extends TargetPhase> = (typeof TARGET_TRANSITIONS)[P];

/** The phases in which event is taken. */
export type PhasesTaking<E extends TargetEvent> = { [P in TargetPhase]: E extends keyof Row<P> ? P : never }[TargetPhase];

/** Where event may lead from phase P (from each of P, when P is several). */
export type NextPhase<P extends TargetPhase, E extends TargetEvent> = P extends TargetPhase
  ? E extends keyof Row<P>
    ? Row<P>[E] extends readonly TargetOutcome[]
      ? Row<P>[E][number]
      : never
    : never
  : never;

/** The outcomes event may have in phase; undefined when it is out of phase there. */
export function outcomes(phase: TargetPhase, event: TargetEvent): readonly TargetOutcome[] | undefined {
  return (TARGET_TRANSITIONS[phase] as Partial<Record<TargetEvent, readonly TargetOutcome[]>>)[event];
}

/**
 * Events whose sender waits for an answer, so a refusal out of phase is answered with a reject:
 * a commit waits for ready. (An offer waits for accept too, but a second one is a duplicate offer.)
 */
export const ANSWERED_OUT_OF_PHASE: ReadonlySet<TargetEvent> = new Set<TargetEvent>(['commit']);
