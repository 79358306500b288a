// A framed, schema-checked duplex channel over a stream socket. Every Baton stream link uses it:
// node↔node (TCP) and application↔node (Unix socket).
//
// A frame that breaks the framing closes the channel: the stream cannot be resynchronised. A
// well-framed message that fails its schema, or is not one this side may receive, is logged and
// dropped; the channel and every connection it carries stay as they were.
import { EventEmitter } from 'node:events';
import type net from 'node:net';
import { BatonError, isBatonError } from '../errors.js';
import { errorText, guard, type InputSource } from '../input.js';
import type { Logger } from '../log.js';
import { DEFAULT_MAX_FRAME_BYTES, encodeFrame, FrameDecoder, REJECT_REASONS, type RejectReason, rejectionOf } from './framing.js';
import { type Body, decodeMessage, type Decoded, header, type MessageType } from './messages.js';

export type { RejectReason } from './framing.js';

// Every channel of the process adds here too: channels come and go, the node's counters must not.
const totals = new Map<RejectReason, number>();

/**
 * Frames refused by every channel of this process since it started, by reason (all reasons
 * present, zero when none): monotonic, for a Prometheus counter. framing and too-large closed a
 * channel; schema, unexpected-type and blob-count dropped one message and left the channel open;
 * out-of-phase messages were dropped by the handoff they named (countRefusedMessage), unsolicited
 * ones because nobody waited for them (PendingReplies).
 */
export function channelRejections(): Record<RejectReason, number> {
  return Object.fromEntries(REJECT_REASONS.map((r) => [r, totals.get(r) ?? 0])) as Record<RejectReason, number>;
}

/**
 * Counts a well-formed message that a handler refused for its reason (out-of-phase: the handoff it
 * names is not in a phase that takes it; unsolicited: nobody waits for it), in the same totals as
 * the channel's own refusals.
 * Returns how many of that reason so far, for sparse logs.
 */
export function countRefusedMessage(reason: RejectReason): number {
  const n = (totals.get(reason) ?? 0) + 1;
  totals.set(reason, n);
  return n;
}

export interface ChannelEvents<K extends MessageType> {
  message: [Decoded<K>];
  close: [Error | undefined];
}

export class Channel<In extends MessageType> extends EventEmitter<ChannelEvents<In>> {
  private readonly decoder: FrameDecoder;
  private closed = false;
  private corked = false;
  /** Counts corks, so that the end-of-tick uncork of a batch flush() already sent leaves a later batch alone. */
  private corks = 0;
  /** Frames this channel refused, by reason (channelRejections() sums every channel). */
  readonly rejected = new Map<RejectReason, number>();

  constructor(
    readonly socket: net.Socket,
    private readonly accepts: readonly In[],
    private readonly log: Logger,
    /** Who is at the other end, as baton_input_errors_total labels it: a peer node, an application, batond (sdk). */
    source: InputSource = 'peer',
    maxFrameBytes = DEFAULT_MAX_FRAME_BYTES,
  ) {
    super();
    this.decoder = new FrameDecoder(maxFrameBytes);
    socket.setNoDelay(true);
    // Whatever a frame makes throw here or in a 'message' listener (a bug the input found) stays
    // here: logged sparsely with a bounded message, counted in baton_input_errors_total{source},
    // and this link closed. The process, and every other link, goes on. (Who is at the other end
    // is in the logger's bindings: the peer, or the remote address of an accepted link.)
    socket.on(
      'data',
      guard(source, log, (chunk: Buffer) => this.receive(chunk), (err) => this.close(new BatonError('E_PROTOCOL', `input handler failed: ${errorText(err)}`, { step: 'receive' }))),
    );
    socket.on('error', (err) => this.close(err));
    socket.on('close', () => this.close());
  }

  send<K extends MessageType>(type: K, body: Body<K>, blobs: Buffer[] = []): boolean {
    if (this.closed) return false;
    const parts = encodeFrame(header(type, body), blobs);
    // Corked until the current tick's synchronous work is done: every frame sent meanwhile on this
    // channel (under load, the replies to several handoffs read in one chunk) leaves in one writev
    // instead of one each, and a frame never waits longer than that (no Nagle delay).
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      const cork = ++this.corks;
      process.nextTick(() => {
        if (this.corked && this.corks === cork) this.flush();
      });
    }
    for (const p of parts) this.socket.write(p);
    return true;
  }

  /**
   * Sends what this tick queued now rather than at its end: for a frame the client is waiting on
   * (live, transferred), whose receiver should not wait for the rest of the sender's tick.
   */
  flush(): void {
    if (!this.corked) return;
    this.corked = false;
    this.socket.uncork();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  close(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    if (err) this.log.warn({ err: err.message }, 'channel closed on error');
    // Frames sent earlier in this tick still go out (the kernel has them before the close).
    this.flush();
    this.socket.destroy();
    this.emit('close', err);
  }

  private receive(chunk: Buffer): void {
    if (this.closed) return;
    this.decoder.append(chunk);
    // A listener may close the channel on one message (a refused hello): the frames that came in
    // the same read are from a link already given up, and must not reach anyone.
    while (!this.closed) {
      let frame;
      try {
        frame = this.decoder.next();
      } catch (err) {
        this.count(rejectionOf(err) ?? 'framing');
        this.log.error({ err: errorText(err), remote: this.socket.remoteAddress }, 'framing violation: closing channel');
        this.close(err as Error);
        return;
      }
      if (!frame) return;
      let decoded: Decoded<In>;
      try {
        decoded = decodeMessage(frame, this.accepts);
      } catch (err) {
        const reason = rejectionOf(err);
        // Anything but a refusal is a bug the input found: the data handler's guard closes the link.
        if (!reason || !isBatonError(err)) throw err;
        this.count(reason);
        this.log.error({ err: errorText(err), connId: err.context.connId, reason }, 'message rejected');
        continue;
      }
      this.emit('message', decoded);
    }
  }

  private count(reason: RejectReason): void {
    this.rejected.set(reason, (this.rejected.get(reason) ?? 0) + 1);
    totals.set(reason, (totals.get(reason) ?? 0) + 1);
  }
}

/**
 * A handoff in flight that takes every message of these types for its id on one link, legal or
 * not: its phase decides what each may do (handoff-machine.ts), not whether someone happens to
 * wait for that type at that moment.
 */
export interface ReplyClaim {
  types: readonly string[];
  receive(d: Decoded<MessageType>): void;
  /** The link closed. */
  fail(err: BatonError): void;
}

/**
 * Replies awaited per connection id, so a channel carrying thousands of concurrent handoffs
 * dispatches each reply in O(1): to the handoff that claimed the id for that type, else to a
 * waiter for it. A reply neither takes is counted (unsolicited) and reported to onUnsolicited.
 */
export class PendingReplies<In extends MessageType> {
  private readonly waiting = new Map<string, { types: readonly string[]; resolve: (d: Decoded<In>) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private readonly claims = new Map<string, ReplyClaim>();

  constructor(
    /**
     * A reply nobody takes, with the process's count of unsolicited messages so far: the other
     * end can send them at will, so a log of them should be sparse (logSparsely).
     */
    private readonly onUnsolicited: (d: Decoded<In>, unsolicited: number) => void = () => undefined,
  ) {}

  wait<K extends In>(connId: string, types: readonly K[], timeoutMs: number, step: string): Promise<Decoded<K>> {
    if (this.waiting.has(connId)) {
      return Promise.reject(new BatonError('E_HANDOFF_STATE', 'a reply is already awaited for this connection', { connId, step }));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(connId);
        reject(new BatonError('E_TIMEOUT', `no ${types.join('/')} within ${timeoutMs} ms`, { connId, step }));
      }, timeoutMs);
      this.waiting.set(connId, { types, resolve: resolve as (d: Decoded<In>) => void, reject, timer });
    });
  }

  /** Until the returned function is called, every message of claim.types for connId goes to claim. */
  claim(connId: string, claim: ReplyClaim): () => void {
    // One coordinator registers each handoff id once; a second claim would steal the first's replies.
    if (this.claims.has(connId)) throw new BatonError('E_HANDOFF_STATE', 'a handoff already holds this id on this link', { connId });
    this.claims.set(connId, claim);
    return () => {
      if (this.claims.get(connId) === claim) this.claims.delete(connId);
    };
  }

  /**
   * Hands a message to the handoff that claimed it (which may refuse it: it counts and logs that
   * itself) or to its waiter: true. False when neither takes it (late, after its handoff or
   * request ended, or never asked for): counted as unsolicited and reported to onUnsolicited.
   */
  deliver(d: Decoded<In>): boolean {
    const { type, connId } = d.msg as { type: string; connId?: string };
    if (connId !== undefined) {
      const claim = this.claims.get(connId);
      if (claim && claim.types.includes(type)) {
        claim.receive(d as Decoded<MessageType>);
        return true;
      }
      const w = this.waiting.get(connId);
      if (w && w.types.includes(type)) {
        clearTimeout(w.timer);
        this.waiting.delete(connId);
        w.resolve(d);
        return true;
      }
    }
    this.onUnsolicited(d, countRefusedMessage('unsolicited'));
    return false;
  }

  /** The link closed: every waiter fails with err, every claim hears of it (and stays until released). */
  failAll(err: Error): void {
    const failure = (connId: string) => new BatonError(isBatonError(err) ? err.code : 'E_PEER', err.message, { connId });
    for (const [connId, w] of this.waiting) {
      clearTimeout(w.timer);
      w.reject(failure(connId));
    }
    this.waiting.clear();
    for (const [connId, claim] of this.claims) claim.fail(failure(connId));
  }
}
