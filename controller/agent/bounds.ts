// Time bounds batond's parts share, named once.
import type { ClusterConfig } from '../config/cluster.js';

/** How long a connecting application or peer may take to say who it is (its hello). */
export const HELLO_TIMEOUT_MS = 5000;

/**
 * Step timeouts after which work nobody finished is given up: a freeze whose owner never
 * forwarded or unfroze it (route-service.ts restores the entry), a transfer the routing node
 * neither finished nor aborted at the target (the sweep of transfer/target/handoffs.ts drops its
 * socket). Long enough that a handoff still running (each of its steps bounded by one step
 * timeout) is never cut short.
 */
export const ABANDON_AFTER_STEP_TIMEOUTS = 8;

export function abandonAfterMs(config: Pick<ClusterConfig, 'handoffStepTimeoutMs'>): number {
  return config.handoffStepTimeoutMs * ABANDON_AFTER_STEP_TIMEOUTS;
}
