// How a handoff changes the distributor's routing table: directly when this node is the active
// distributor, over the peer link to the active one otherwise (a connection moving on from the node that serves it).
// Either way the distributor's RouteService checks that the requester owns the flow.
import { BatonError } from '../errors.js';
import type { FlowKey } from '../flow.js';
import type { RouteService } from '../agent/route-service.js';
import type { Body, Message } from './messages.js';
import type { PeerLinks } from './peers.js';

export interface RouteWriter {
  /** Before anything is exported: may this flow take a routing-table entry (quotas)? Throws E_QUOTA if not. */
  admit(flow: FlowKey, connId: string): Promise<void>;
  freeze(flow: FlowKey, connId: string): Promise<void>;
  forward(flow: FlowKey, target: string, connId: string): Promise<void>;
  unfreeze(flow: FlowKey, connId: string): Promise<void>;
  release(flow: FlowKey, connId: string): Promise<void>;
  finished(flow: FlowKey, connId: string): Promise<void>;
}

export class LocalRoutes implements RouteWriter {
  constructor(
    private readonly service: RouteService,
    private readonly self: string,
  ) {}

  async admit(flow: FlowKey): Promise<void> {
    this.service.admit(this.self, flow);
  }

  async freeze(flow: FlowKey): Promise<void> {
    this.service.freeze(this.self, flow);
  }

  async forward(flow: FlowKey, target: string): Promise<void> {
    this.service.forward(this.self, flow, target);
  }

  async unfreeze(flow: FlowKey): Promise<void> {
    this.service.unfreeze(this.self, flow);
  }

  async release(flow: FlowKey): Promise<void> {
    this.service.release(this.self, flow);
  }

  async finished(flow: FlowKey): Promise<void> {
    this.service.finished(this.self, flow);
  }
}

/**
 * The table wherever the active distributor is, asked at each call: this node's own while it is
 * active (local() gives its routes then), over the peer link to the active one otherwise.
 */
export class ActiveRoutes implements RouteWriter {
  constructor(
    private readonly local: () => RouteWriter | undefined,
    private readonly remote: RouteWriter,
  ) {}

  private pick(): RouteWriter {
    return this.local() ?? this.remote;
  }

  admit(flow: FlowKey, connId: string): Promise<void> {
    return this.pick().admit(flow, connId);
  }

  freeze(flow: FlowKey, connId: string): Promise<void> {
    return this.pick().freeze(flow, connId);
  }

  forward(flow: FlowKey, target: string, connId: string): Promise<void> {
    return this.pick().forward(flow, target, connId);
  }

  unfreeze(flow: FlowKey, connId: string): Promise<void> {
    return this.pick().unfreeze(flow, connId);
  }

  release(flow: FlowKey, connId: string): Promise<void> {
    return this.pick().release(flow, connId);
  }

  finished(flow: FlowKey, connId: string): Promise<void> {
    return this.pick().finished(flow, connId);
  }
}

export class RemoteRoutes implements RouteWriter {
  /**
   * The request in flight per connection, which the next one for it waits for: a link awaits one
   * answer per connection id at a time, and a connection's requests must reach the distributor
   * in order anyway. Seen on loaded VMs: a release still unanswered when the kernel let the
   * connection go, whose finished was refused ("a reply is already awaited") and the entry left
   * RELEASED until its bound.
   */
  private readonly inFlight = new Map<string, Promise<void>>();

  constructor(
    private readonly peers: PeerLinks,
    /** The active distributor, as this node knows it now (ha/active.ts). */
    private readonly distributor: () => string,
    private readonly timeoutMs: number,
  ) {}

  /** A connection served here moving on already has its entry: no quota applies (the distributor checks ownership at freeze). */
  async admit(): Promise<void> {}

  freeze(flow: FlowKey, connId: string): Promise<void> {
    return this.ask('freeze', flow, connId);
  }

  forward(flow: FlowKey, target: string, connId: string): Promise<void> {
    return this.ask('forward', flow, connId, target);
  }

  unfreeze(flow: FlowKey, connId: string): Promise<void> {
    return this.ask('unfreeze', flow, connId);
  }

  release(flow: FlowKey, connId: string): Promise<void> {
    return this.ask('release', flow, connId);
  }

  finished(flow: FlowKey, connId: string): Promise<void> {
    return this.ask('finished', flow, connId);
  }

  private ask(op: Message<'route'>['op'], flow: FlowKey, connId: string, target?: string): Promise<void> {
    const before = this.inFlight.get(connId);
    // The previous request's outcome is its caller's: this one only waits for it to settle.
    const mine = before ? before.then(settled, settled).then(() => this.askNow(op, flow, connId, target)) : this.askNow(op, flow, connId, target);
    this.inFlight.set(connId, mine);
    const forget = () => {
      if (this.inFlight.get(connId) === mine) this.inFlight.delete(connId);
    };
    mine.then(forget, forget);
    return mine;
  }

  private async askNow(op: Message<'route'>['op'], flow: FlowKey, connId: string, target?: string): Promise<void> {
    const distributor = this.distributor();
    const answer = await askDistributor(this.peers, distributor, this.timeoutMs, { connId, op, flow, ...(target ? { target } : {}) });
    if (!answer.ok) {
      throw new BatonError('E_HANDOFF_STATE', `distributor ${distributor} refused ${op}: ${answer.reason ?? 'no reason'}`, { connId, step: op, node: distributor });
    }
  }
}

const settled = (): void => undefined;

/**
 * A route request to the distributor over the peer link, and its answer, yes or no: what a no
 * means is the caller's to say. Rejects (the step is the op) when the link fails or no answer
 * comes within timeoutMs.
 */
export async function askDistributor(peers: PeerLinks, distributor: string, timeoutMs: number, request: Body<'route'>): Promise<Message<'routed'>> {
  const link = await peers.get(distributor);
  const answer = link.replies.wait(request.connId, ['routed'], timeoutMs, request.op);
  link.channel.send('route', request);
  return (await answer).msg;
}
