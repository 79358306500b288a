// The routing node's handoff as data: its phases, its steps, which step moves it from which phase
// to which, which message the target node or the routing application may send in which phase,
// and what a failure in each phase has to undo. handoff-machine.ts enforces these tables,
// handoff.ts runs the steps in order, and the wire schema (messages.ts: failed.step), the metrics'
// labels and the REST API's transfer records are built from the same arrays. docs/protocol.md
// ("One handoff") shows them as a diagram.
//
// A phase is what is true of the handoff now; a step is the work that moves it on. A failure names
// the step under way, and the phase it happened in decides the rollback.
//
// Only types are imported here: messages.ts builds its schema from these arrays, so this module
// must not load anything that loads messages.ts.
import type { Accepts } from './messages.js';

/**
 * requested  the application asked; nothing touched yet (check and admit run here)
 * exported   repair mode on, the socket's state read
 * offered    the state sent to the target node, its answer awaited
 * accepted   the target reinstated the socket (in repair mode)
 * frozen     the flow's routing-table entry is FROZEN: the client's packets are dropped
 * committed  the delta sent to the target, its answer awaited
 * ready      the target's socket is the frozen one (the delta applied, or there was none)
 * routed     the entry forwards to the target: the point of no return
 * closed     done told, live sent: the handoff is over
 * failed     rolled back (or being rolled back): nothing more moves it
 */
export const ROUTING_PHASES = ['requested', 'exported', 'offered', 'accepted', 'frozen', 'committed', 'ready', 'routed', 'closed', 'failed'] as const;
export type RoutingPhase = (typeof ROUTING_PHASES)[number];

/** The steps in the order a handoff runs them; a failed message names one (messages.ts). */
export const HANDOFF_STEPS = ['check', 'admit', 'export', 'offer', 'freeze', 'delta', 'commit', 'route', 'close'] as const;
export type HandoffStep = (typeof HANDOFF_STEPS)[number];

/**
 * The step a request refused before its first step began names (a duplicate id, too many
 * handoffs in flight, an unknown target, a descriptor that never arrived): export, the first step
 * that would have changed anything. batond has always said so; an application may rely on it.
 */
export const REQUEST_STEP: HandoffStep = 'export';

/**
 * Each step: the phase it starts from, the phases its own work may move the handoff to (none: it
 * only reads or asks), and the phase in which it awaits an answer, if it does. offer and commit
 * move to a phase that awaits the target's answer, and that answer (ROUTING_TRANSITIONS) moves
 * the handoff on; commit goes straight to ready when nothing changed since the snapshot (there is
 * nothing to commit). close awaits the application's closed in routed, and reaches closed by its
 * own work when no closed is due or none came.
 */
export const STEP_PHASES = {
  check: { from: 'requested', to: [] },
  admit: { from: 'requested', to: [] },
  export: { from: 'requested', to: ['exported'] },
  offer: { from: 'exported', to: ['offered'], awaits: 'offered' },
  freeze: { from: 'accepted', to: ['frozen'] },
  delta: { from: 'frozen', to: [] },
  commit: { from: 'frozen', to: ['committed', 'ready'], awaits: 'committed' },
  route: { from: 'ready', to: ['routed'] },
  close: { from: 'routed', to: ['closed'], awaits: 'routed' },
} as const satisfies Record<HandoffStep, { from: RoutingPhase; to: readonly RoutingPhase[]; awaits?: AnsweringPhase }>;

/**
 * What the routing node receives about a handoff in flight, by who sends it: the target node (on
 * the peer link the offer went out on) and the routing application (on its own link).
 */
export const ROUTING_REPLIES = {
  target: ['accept', 'reject', 'ready'],
  router: ['closed'],
} as const satisfies { target: ReadonlyArray<(typeof Accepts.peerReplies)[number]>; router: ReadonlyArray<(typeof Accepts.agentFromRouter)[number]> };
export type ReplySide = keyof typeof ROUTING_REPLIES;
export type RoutingReply = (typeof ROUTING_REPLIES)[ReplySide][number];

/**
 * phase × message → next phase. A pair not listed is refused: counted (out-of-phase), logged
 * sparsely, and nothing changes. A reject sends the handoff back to the phase before the request
 * it answers (the target kept nothing of a refused offer; a refused commit leaves the entry
 * frozen), and the handoff then fails from there.
 */
export const ROUTING_TRANSITIONS = {
  offered: { accept: 'accepted', reject: 'exported' },
  committed: { ready: 'ready', reject: 'frozen' },
  routed: { closed: 'closed' },
} as const satisfies Partial<Record<RoutingPhase, Partial<Record<RoutingReply, RoutingPhase>>>>;
export type AnsweringPhase = keyof typeof ROUTING_TRANSITIONS;
/** The messages legal in a phase that awaits an answer. */
export type AnswerTo<P extends AnsweringPhase> = keyof (typeof ROUTING_TRANSITIONS)[P] & RoutingReply;

/**
 * Which side sends the messages legal in each answering phase: the routing application when all of
 * them come from it, the target node otherwise (each phase hears from one side only).
 */
export const ANSWERING_SIDE = Object.fromEntries(
  Object.entries(ROUTING_TRANSITIONS).map(([phase, row]) => [phase, Object.keys(row).every((t) => (ROUTING_REPLIES.router as readonly string[]).includes(t)) ? 'router' : 'target']),
) as Readonly<Record<AnsweringPhase, ReplySide>>;

/** The phase a message moves the handoff to, or undefined when it is not legal in this phase. */
export function nextPhase(phase: RoutingPhase, type: string): RoutingPhase | undefined {
  const row: Partial<Record<string, RoutingPhase>> | undefined = (ROUTING_TRANSITIONS as Partial<Record<RoutingPhase, Partial<Record<string, RoutingPhase>>>>)[phase];
  return row && Object.hasOwn(row, type) ? row[type] : undefined;
}

/** Does this phase await an answer (some message is legal in it)? */
export function isAnswering(phase: RoutingPhase): phase is AnsweringPhase {
  return Object.hasOwn(ROUTING_TRANSITIONS, phase);
}

/**
 * What a failure in each phase undoes, in this order: put the routing-table entry back
 * (unfreeze), tell the target to drop the socket it may hold (abort), take the application's
 * socket out of repair mode (resume) so it can read again once told. 'stands': the route already
 * points at the target (or the failure was already handled): nothing is undone.
 */
export type Undo = 'unfreeze' | 'abort' | 'resume';
export const ROLLBACK = {
  requested: [],
  exported: ['resume'],
  offered: ['abort', 'resume'],
  accepted: ['abort', 'resume'],
  frozen: ['unfreeze', 'abort', 'resume'],
  committed: ['unfreeze', 'abort', 'resume'],
  ready: ['unfreeze', 'abort', 'resume'],
  routed: 'stands',
  closed: 'stands',
  failed: 'stands',
} as const satisfies Record<RoutingPhase, readonly Undo[] | 'stands'>;
