// Does a node serve a flow? Only the distributor's routing table says, and a target node cannot
// read it: a target offered a connection by a node other than the distributor (a transfer again)
// asks the distributor over the peer link (`route` op `owner`, answered by `routed`), and accepts
// the offer only on a yes (target/handoffs.ts, OfferPolicy.confirmOwner). On the distributor itself
// the table is asked directly.
import { BatonError } from '../errors.js';
import type { FlowKey } from '../flow.js';
import type { PeerLinks } from './peers.js';
import { askDistributor } from './routes.js';

/** The distributor's side of the question (RouteService.serves). */
export interface OwnerTable {
  serves(node: string, flow: FlowKey): boolean;
}

export class FlowOwnership {
  constructor(
    private readonly peers: PeerLinks,
    /** The active distributor, as this node knows it now (ha/active.ts). */
    private readonly distributor: () => string,
    private readonly timeoutMs: number,
    /** The table when it is here (this node is the active distributor), undefined otherwise. */
    private readonly local: () => OwnerTable | undefined,
  ) {}

  /** Resolves when node serves flow by the distributor's routing table; rejects saying why not. */
  async confirm(node: string, flow: FlowKey, connId: string): Promise<void> {
    const local = this.local();
    if (local) {
      if (!local.serves(node, flow)) throw new BatonError('E_REJECTED', `${node} does not serve this flow`, { connId, step: 'owner', node });
      return;
    }
    const distributor = this.distributor();
    const answer = await askDistributor(this.peers, distributor, this.timeoutMs, { connId, op: 'owner', flow, target: node });
    if (!answer.ok) throw new BatonError('E_REJECTED', `distributor ${distributor}: ${answer.reason ?? 'no reason'}`, { connId, step: 'owner', node: distributor });
  }
}
