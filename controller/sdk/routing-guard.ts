// Routing-phase limits. Between accept and the decision a routing application talks with a client
// it knows nothing about yet, on the distributor, which every connection of the cluster passes
// through: that phase is where a client that sends nothing, trickles bytes, floods, or opens
// connections by the thousand costs the most. The guard bounds it:
//
//   const guard = new RoutingGuard({ idleMs: 10_000, deadlineMs: 30_000, logger });
//   const server = net.createServer(guard.wrap((socket, phase) => {
//     // converse; then router.handoff(socket, …) — the guard lets go of the socket by itself —
//     // or phase.decided() when the connection is served here instead.
//   }));
//
// Admission (per source, in total) happens before the application's handler runs, so a refused
// connection never reaches it. The other limits run until the routing phase ends: a handoff
// (RouterClient.handoff() holds the limits while Baton owns the socket and lets go for good once
// it has moved; a failed handoff gives the socket back to the routing phase, with the time the
// handoff took not counted against the client), phase.decided(), or the socket closing.
//
// Closing is a reset unless the application gives a reply for the reason (HTTP: 408, 413, 429,
// 503): see docs/architecture.md, "Routing-phase limits", for why.
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Logger } from '../log.js';
import { LIMIT_REASONS, type LimitReason, positiveInteger, ROUTING_LIMIT_DEFAULTS, type RoutingLimits } from './routing-limits.js';
import { BatonError } from '../errors.js';
import { peerText, sourceOf } from '../flow.js';

export interface RoutingGuardOptions extends Partial<RoutingLimits> {
  /**
   * What to tell the client before closing, for protocols that can say it; undefined (the
   * default) resets the connection instead. A replied-to connection is half-closed and drained for
   * at most lingerMs so the reply is not destroyed by a reset, then reset if still open.
   */
  reply?: (reason: LimitReason) => string | Buffer | undefined;
  /** How long a connection closed with a reply is kept draining; default 1000 ms. */
  lingerMs?: number;
  /** Connections draining after a reply, at most; beyond it the guard resets without replying. Default 256. */
  maxLingering?: number;
  logger?: Logger;
  /** At most one summary log line per this interval, whatever the rate of closures; default 10 s. */
  logIntervalMs?: number;
}

/** The routing phase of one accepted connection, as its handler sees it. */
export interface RoutingPhase {
  /** The source the per-source limit counts this connection under. */
  readonly source: string;
  /** Bytes received in the routing phase so far. */
  readonly bytesReceived: number;
  /**
   * The application decided without a handoff (it serves the connection itself, or is done with
   * it): the limits stop for this socket. Idempotent. Not needed before handoff().
   */
  decided(): void;
}

export type RoutingHandler = (socket: net.Socket, phase: RoutingPhase) => void;

export interface RoutingGuardStats {
  /** Connections in the routing phase now. */
  active: number;
  /** Connections closed with a reply, still draining. */
  lingering: number;
  /** Every connection the guard has closed or refused since it was made, by reason. */
  closed: Record<LimitReason, number>;
}

interface Tracked {
  readonly socket: net.Socket;
  readonly source: string;
  deadlineAt: number;
  lastByteAt: number;
  bytes: number;
  /** Handoffs in progress: the limits are held while this is above 0. */
  holds: number;
  heldSince: number;
  timer: NodeJS.Timeout | undefined;
  byteCheckQueued: boolean;
  readonly onData: (chunk: Buffer) => void;
  readonly onClose: () => void;
}

/** What RouterClient.handoff() may do to the routing phase of a socket it is given. */
interface HandoffControl {
  hold(): void;
  unhold(): void;
  release(): void;
}

const guarded = new WeakMap<net.Socket, HandoffControl>();

export interface HandoffHold {
  /** The connection now lives on another node: the socket leaves the guard for good. */
  handedOff(): void;
  /** Every target failed: the socket is the application's again, back in the routing phase. */
  returned(): void;
}

/**
 * Called by RouterClient.handoff() before it touches the socket: from here on the socket is
 * Baton's, and no routing-phase limit may close it under a handoff in progress. A socket no guard
 * holds gets a hold that does nothing.
 */
export function holdForHandoff(socket: net.Socket): HandoffHold {
  const control = guarded.get(socket);
  control?.hold();
  let settled = false;
  return {
    handedOff() {
      if (!settled) control?.release();
      settled = true;
    },
    returned() {
      if (!settled) control?.unhold();
      settled = true;
    },
  };
}

const now = () => performance.now();

/** Ends a connection with a TCP reset: nothing is left on this side, not even TIME_WAIT. */
function reset(socket: net.Socket): void {
  // resetAndDestroy() on a socket without a handle destroys it with an 'error' nobody may hear.
  if (socket.destroyed) return;
  if ((socket as unknown as { _handle: unknown })._handle) socket.resetAndDestroy();
  else socket.destroy();
}

const ignoreError = () => {};

export class RoutingGuard {
  readonly limits: Readonly<RoutingLimits>;
  private readonly lingerMs: number;
  private readonly maxLingering: number;
  private readonly logIntervalMs: number;
  private readonly reply: RoutingGuardOptions['reply'];
  private readonly log: Logger | undefined;

  private readonly tracked = new Set<Tracked>();
  private readonly perSource = new Map<string, number>();
  private readonly lingering = new Map<net.Socket, NodeJS.Timeout>();
  private readonly closed = Object.fromEntries(LIMIT_REASONS.map((r) => [r, 0])) as Record<LimitReason, number>;

  // Sparse logging: the first closure after a quiet interval is logged at once, later ones are
  // summed into one line per interval, with at most a few sources named.
  private sinceLog = Object.fromEntries(LIMIT_REASONS.map((r) => [r, 0])) as Record<LimitReason, number>;
  private sourcesSinceLog = new Map<string, number>();
  private otherSourcesSinceLog = 0;
  private lastLogAt = -Infinity;
  private logTimer: NodeJS.Timeout | undefined;

  constructor(opts: RoutingGuardOptions = {}) {
    const pick = (k: keyof RoutingLimits) => positiveInteger(k, opts[k] ?? ROUTING_LIMIT_DEFAULTS[k]);
    this.limits = Object.freeze({
      idleMs: pick('idleMs'),
      deadlineMs: pick('deadlineMs'),
      maxBytes: pick('maxBytes'),
      maxPerSource: pick('maxPerSource'),
      ipv6SourcePrefix: pick('ipv6SourcePrefix'),
      maxTotal: pick('maxTotal'),
    });
    if (this.limits.ipv6SourcePrefix > 128) {
      throw new BatonError('E_CONFIG', `routing guard: ipv6SourcePrefix must be 1-128, got ${this.limits.ipv6SourcePrefix}`, { step: 'routing-guard', option: 'ipv6SourcePrefix' });
    }
    this.lingerMs = positiveInteger('lingerMs', opts.lingerMs ?? 1000);
    this.maxLingering = positiveInteger('maxLingering', opts.maxLingering ?? 256);
    this.logIntervalMs = positiveInteger('logIntervalMs', opts.logIntervalMs ?? 10_000);
    this.reply = opts.reply;
    this.log = opts.logger;
  }

  /**
   * A 'connection' listener for a net.Server: admits or refuses each connection, then hands the
   * admitted ones to `handler` with their routing phase. The guard reads the socket with a 'data'
   * listener of its own (counting bytes), so the socket is in flowing mode from accept.
   */
  wrap(handler: RoutingHandler): (socket: net.Socket) => void {
    return (socket) => {
      if (!socket.remoteAddress) {
        // Gone between the kernel's accept and this callback.
        socket.destroy();
        return;
      }
      const source = sourceOf(socket.remoteAddress, this.limits.ipv6SourcePrefix);
      const refusal: LimitReason | undefined =
        (this.perSource.get(source) ?? 0) >= this.limits.maxPerSource ? 'per-source' : this.tracked.size >= this.limits.maxTotal ? 'total' : undefined;
      if (refusal) {
        this.count(refusal, source, socket);
        this.shut(socket, refusal);
        return;
      }
      handler(socket, this.track(socket, source));
    };
  }

  /** Sockets the guard still holds (in the routing phase or draining after a reply); each owns at most one timer. */
  get size(): number {
    return this.tracked.size + this.lingering.size;
  }

  stats(): RoutingGuardStats {
    return { active: this.tracked.size, lingering: this.lingering.size, closed: { ...this.closed } };
  }

  /**
   * Stops guarding: connections in the routing phase are left to the application as they are,
   * draining ones are reset, the pending summary is logged. For shutting a server down.
   */
  close(): void {
    for (const entry of [...this.tracked]) this.untrack(entry);
    for (const socket of [...this.lingering.keys()]) reset(socket);
    if (this.logTimer) clearTimeout(this.logTimer);
    this.flushLog();
  }

  private track(socket: net.Socket, source: string): RoutingPhase {
    const t = now();
    const entry: Tracked = {
      socket,
      source,
      deadlineAt: t + this.limits.deadlineMs,
      lastByteAt: t,
      bytes: 0,
      holds: 0,
      heldSince: 0,
      timer: undefined,
      byteCheckQueued: false,
      onData: (chunk) => {
        entry.bytes += chunk.length;
        entry.lastByteAt = now();
        if (entry.bytes > this.limits.maxBytes) this.queueByteCheck(entry);
      },
      onClose: () => this.untrack(entry),
    };
    this.tracked.add(entry);
    this.perSource.set(source, (this.perSource.get(source) ?? 0) + 1);
    guarded.set(socket, { hold: () => this.hold(entry), unhold: () => this.unhold(entry), release: () => this.untrack(entry) });
    socket.on('data', entry.onData);
    socket.once('close', entry.onClose);
    this.arm(entry);
    const guard = this;
    return {
      source,
      get bytesReceived() {
        return entry.bytes;
      },
      decided() {
        guard.untrack(entry);
      },
    };
  }

  private untrack(entry: Tracked): void {
    if (!this.tracked.delete(entry)) return;
    if (entry.timer) clearTimeout(entry.timer);
    entry.timer = undefined;
    const n = (this.perSource.get(entry.source) ?? 1) - 1;
    if (n > 0) this.perSource.set(entry.source, n);
    else this.perSource.delete(entry.source);
    guarded.delete(entry.socket);
    entry.socket.off('data', entry.onData);
    entry.socket.off('close', entry.onClose);
  }

  private hold(entry: Tracked): void {
    if (!this.tracked.has(entry)) return;
    if (entry.holds++ === 0) {
      entry.heldSince = now();
      if (entry.timer) clearTimeout(entry.timer);
      entry.timer = undefined;
    }
  }

  private unhold(entry: Tracked): void {
    if (!this.tracked.has(entry) || entry.holds === 0 || --entry.holds > 0) return;
    // The handoff's time was Baton's, not the client's: it does not count against either bound.
    const t = now();
    entry.deadlineAt += t - entry.heldSince;
    entry.lastByteAt = t;
    this.arm(entry);
    if (entry.bytes > this.limits.maxBytes) this.queueByteCheck(entry);
  }

  /** One timer per connection, for whichever bound comes first; a byte only moves a number. */
  private arm(entry: Tracked): void {
    const due = Math.min(entry.deadlineAt, entry.lastByteAt + this.limits.idleMs);
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      if (!this.tracked.has(entry) || entry.holds > 0) return;
      const t = now();
      if (t >= entry.deadlineAt) this.limit(entry, 'deadline');
      else if (t - entry.lastByteAt >= this.limits.idleMs) this.limit(entry, 'idle');
      else this.arm(entry);
    }, Math.max(1, Math.ceil(due - now())));
  }

  /**
   * Checked after the chunk has reached every listener: the chunk that carries the decision may
   * run past the bound (the client sent on without waiting), and a handoff started for it must win.
   */
  private queueByteCheck(entry: Tracked): void {
    if (entry.byteCheckQueued) return;
    entry.byteCheckQueued = true;
    queueMicrotask(() => {
      entry.byteCheckQueued = false;
      if (this.tracked.has(entry) && entry.holds === 0 && entry.bytes > this.limits.maxBytes) this.limit(entry, 'too-many-bytes');
    });
  }

  private limit(entry: Tracked, reason: LimitReason): void {
    this.untrack(entry);
    this.count(reason, entry.source, entry.socket, entry.bytes);
    this.shut(entry.socket, reason);
  }

  private shut(socket: net.Socket, reason: LimitReason): void {
    const reply = !socket.destroyed && !socket.writableEnded && this.lingering.size < this.maxLingering ? this.replyFor(reason) : undefined;
    // The application's readers must not see another byte, nor answer it.
    socket.removeAllListeners('data');
    socket.removeAllListeners('readable');
    // Writes the application still makes, and the client's reset, end here.
    socket.on('error', ignoreError);
    if (reply === undefined) {
      reset(socket);
      return;
    }
    // Half-close after the reply and read on: unread bytes at close would make the kernel send a
    // reset, and a reset discards the reply at the client before it has read it.
    socket.on('data', () => {});
    socket.resume();
    socket.end(reply);
    const timer = setTimeout(() => reset(socket), this.lingerMs);
    this.lingering.set(socket, timer);
    socket.once('close', () => {
      clearTimeout(timer);
      this.lingering.delete(socket);
    });
  }

  /** The application's reply runs in a timer: a throw there must not take the process down. */
  private replyFor(reason: LimitReason): string | Buffer | undefined {
    try {
      return this.reply?.(reason);
    } catch (err) {
      this.log?.error({ reason, err: (err as Error).message }, 'routing guard: reply() threw; resetting instead');
      return undefined;
    }
  }

  private count(reason: LimitReason, source: string, socket: net.Socket, bytes = 0): void {
    this.closed[reason]++;
    this.sinceLog[reason]++;
    if (this.sourcesSinceLog.has(source) || this.sourcesSinceLog.size < 8) this.sourcesSinceLog.set(source, (this.sourcesSinceLog.get(source) ?? 0) + 1);
    else this.otherSourcesSinceLog++;
    this.log?.debug({ event: 'routing-limit', reason, client: peerText(socket), bytes }, 'routing-phase limit: closing');
    if (this.logTimer) return;
    const wait = this.lastLogAt + this.logIntervalMs - now();
    if (wait <= 0) this.flushLog();
    else this.logTimer = setTimeout(() => this.flushLog(), wait).unref();
  }

  private flushLog(): void {
    this.logTimer = undefined;
    const total = LIMIT_REASONS.reduce((n, r) => n + this.sinceLog[r], 0);
    if (total === 0) return;
    this.log?.warn(
      {
        event: 'routing-limits',
        closed: this.sinceLog,
        sources: Object.fromEntries(this.sourcesSinceLog),
        ...(this.otherSourcesSinceLog ? { otherSources: this.otherSourcesSinceLog } : {}),
        totals: { ...this.closed },
      },
      `routing-phase limits closed ${total} connection${total === 1 ? '' : 's'}`,
    );
    this.lastLogAt = now();
    this.sinceLog = Object.fromEntries(LIMIT_REASONS.map((r) => [r, 0])) as Record<LimitReason, number>;
    this.sourcesSinceLog = new Map();
    this.otherSourcesSinceLog = 0;
  }
}
