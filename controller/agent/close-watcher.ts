// When TCP, not the application, is done with a connection this node served. An application's
// close only starts TCP's closing handshake: a client that has not closed yet may still send data
// and its FIN (FIN_WAIT1/2, for as long as it likes), and a client whose FIN was not acknowledged
// retransmits it (LAST_ACK, CLOSING). Each of those packets reaches the distributor first; with no
// entry there, its kernel answers with a reset. So the entry goes only once this node's kernel has
// finished with the 4-tuple: no socket left, or TIME_WAIT (the client's last packet, at most a
// retransmitted FIN, is covered by the distributor's releaseGraceMs from then).
//
// The kernel is asked with sock_diag, one netlink round trip per flow (~10 µs), first soon after
// the close, then less and less often: most closes finish within a round trip, a few take a
// client's whole FIN_WAIT2 time (tcp_fin_timeout, 60 s by default).
import type { TcpStateName } from '../../native/diag.js';
import type { Logger } from '../log.js';
import { connectionId, type FlowKey } from '../flow.js';

export type KernelTcpState = TcpStateName | 'GONE' | 'UNKNOWN';
type StateLookup = (flow: FlowKey) => KernelTcpState;

/** States in which the client has nothing more to send that the node must still receive. */
const FINISHED = new Set<KernelTcpState>(['GONE', 'CLOSE', 'TIME_WAIT']);

interface Watched {
  flow: FlowKey;
  connId: string;
  since: number;
  nextCheck: number;
  interval: number;
  /** onStillClosing was called for it. */
  told: boolean;
}

export interface CloseWatcherOptions {
  /** First check this long after the close; each later one waits twice as long, up to maxIntervalMs. */
  firstCheckMs?: number;
  maxIntervalMs?: number;
  /** Give up on a flow after this long (the distributor removes a released entry after its own bound anyway). */
  giveUpAfterMs?: number;
  /**
   * Called once per flow, at its first check, if TCP is not done with it then. Most closes are
   * done by then (within a round trip), and report only their end (onFinished); the node agent
   * tells the distributor of a close in progress only for the others (one message less per
   * connection, node-agent.ts).
   */
  onStillClosing?: (flow: FlowKey, connId: string, state: KernelTcpState) => void;
}

export class CloseWatcher {
  private readonly watched = new Map<string, Watched>();
  private readonly ticker: NodeJS.Timeout;
  private readonly firstCheckMs: number;
  private readonly maxIntervalMs: number;
  private readonly giveUpAfterMs: number;
  private readonly onStillClosing: NonNullable<CloseWatcherOptions['onStillClosing']>;
  private lookupErrors = 0;
  private lastErrorLog = -Infinity;

  constructor(
    private readonly lookup: StateLookup,
    /** TCP is done with the flow (or the watch gave up: finished is false). */
    private readonly onFinished: (flow: FlowKey, connId: string, how: { state: KernelTcpState; finished: boolean; afterMs: number }) => void,
    private readonly log: Logger,
    opts: CloseWatcherOptions = {},
  ) {
    this.firstCheckMs = opts.firstCheckMs ?? 50;
    this.maxIntervalMs = opts.maxIntervalMs ?? 2000;
    this.giveUpAfterMs = opts.giveUpAfterMs ?? 180_000;
    this.onStillClosing = opts.onStillClosing ?? (() => undefined);
    this.ticker = setInterval(() => this.check(), Math.max(10, Math.min(this.firstCheckMs, 50)));
    this.ticker.unref();
  }

  watch(flow: FlowKey, connId: string): void {
    const now = Date.now();
    this.watched.set(connectionId(flow), { flow, connId, since: now, nextCheck: now + this.firstCheckMs, interval: this.firstCheckMs, told: false });
  }

  /** A new connection on this 4-tuple now lives here: the old one's end is no longer news. */
  forget(flow: FlowKey): void {
    this.watched.delete(connectionId(flow));
  }

  /** Flows whose close is still in progress. */
  size(): number {
    return this.watched.size;
  }

  close(): void {
    clearInterval(this.ticker);
  }

  private check(): void {
    const now = Date.now();
    for (const [key, w] of this.watched) {
      if (w.nextCheck > now) continue;
      let state: KernelTcpState;
      try {
        state = this.lookup(w.flow);
      } catch (err) {
        // Without the kernel's word, do what was done before it was asked: the grace starts now.
        state = 'UNKNOWN';
        this.lookupErrors++;
        if (now - this.lastErrorLog >= 60_000) {
          this.lastErrorLog = now;
          this.log.warn({ connId: w.connId, err: (err as Error).message, errors: this.lookupErrors }, 'cannot read the kernel state of a closing connection: its entry goes after the grace');
        }
      }
      const finished = FINISHED.has(state) || state === 'UNKNOWN';
      if (finished || now - w.since >= this.giveUpAfterMs) {
        this.watched.delete(key);
        if (!finished) this.log.warn({ connId: w.connId, state, afterMs: now - w.since }, 'connection still not closed by TCP: letting its entry go anyway');
        this.onFinished(w.flow, w.connId, { state, finished, afterMs: now - w.since });
        continue;
      }
      if (!w.told) {
        w.told = true;
        this.onStillClosing(w.flow, w.connId, state);
      }
      w.interval = Math.min(w.interval * 2, this.maxIntervalMs);
      w.nextCheck = now + w.interval;
    }
  }
}
