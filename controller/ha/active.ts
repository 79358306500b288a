// Which node is the active distributor, as this node knows it. keepalived (VRRP) decides; every
// distributor says what it is to every peer (a `distributor` announcement: active since when, or
// standing by) at each change and with every heartbeat, and every node sends its routing-table
// requests (release, finished, a transfer again, who serves a flow) to the one it believes
// active. Until one has spoken, a node assumes the first distributor of the cluster file.
//
// A claim to be active holds for EXPIRY_MS after it was last heard: a distributor that died stops
// repeating it. Two claims at once (split brain: both distributors MASTER because adverts are lost
// one way) are settled by the later activation: that node's gratuitous ARP is also the one the
// clients' side followed last. A distributor that stands down says so, and is dropped at once.
import { type ClusterConfig, preferredDistributor } from '../config/cluster.js';
import { EXPIRY_MS } from '../control/server.js';

export interface Announcement {
  node: string;
  /** When that node became active (epoch ms, its clock); 0 while it stands by. */
  since: number;
  active: boolean;
}

interface Claim {
  since: number;
  heardAt: number;
}

export class ActiveDistributor {
  private readonly claims = new Map<string, Claim>();
  /** The last node chosen: kept when no claim is current (every distributor silent). */
  private last: string;
  /** This node was active and stood down (keepalived made it BACKUP). */
  private stoodDown = false;

  constructor(
    private readonly config: Pick<ClusterConfig, 'distributors'>,
    readonly self: string,
    private readonly now: () => number = Date.now,
  ) {
    this.last = preferredDistributor(config);
  }

  /** The node this one sends routing-table requests to. */
  name(): string {
    const last = this.lastKnown();
    // This node stood down and nobody claims yet: not itself (its requests would come back to it),
    // the next distributor in order of preference.
    if (last === this.self && this.stoodDown) return this.config.distributors.find((d) => d !== this.self) ?? this.self;
    return last;
  }

  /** The node that claimed to be active last (the first distributor until one did), this node included. */
  lastKnown(): string {
    const best = this.current();
    if (best) this.last = best[0];
    return this.last;
  }

  /** When the node named by name() became active; 0 when nobody has claimed it yet. */
  since(): number {
    return this.current()?.[1].since ?? 0;
  }

  isSelf(): boolean {
    return this.name() === this.self;
  }

  /** Whether node claims to be active now (a claim heard within the expiry, or this node's own). */
  claimsActive(node: string): boolean {
    return [...this.fresh()].some(([n]) => n === node);
  }

  /** Whether a distributor other than this node claims to be active now. */
  othersActive(): boolean {
    return [...this.fresh()].some(([node]) => node !== this.self);
  }

  /**
   * A distributor's announcement (or this node's own change of role). Returns false, changing
   * nothing, for a node that is not one of the cluster's distributors.
   */
  heard(a: Announcement): boolean {
    if (!this.config.distributors.includes(a.node)) return false;
    if (a.node === this.self) this.stoodDown = !a.active;
    if (a.active) this.claims.set(a.node, { since: a.since, heardAt: this.now() });
    else this.claims.delete(a.node);
    return true;
  }

  private *fresh(): Iterable<[string, Claim]> {
    const now = this.now();
    for (const [node, claim] of this.claims) {
      // This node's own claim holds until it stands down; another's until it goes quiet.
      if (node === this.self || now - claim.heardAt <= EXPIRY_MS) yield [node, claim];
    }
  }

  /** The current claim with the latest activation; a tie goes to the order of preference. */
  private current(): [string, Claim] | undefined {
    let best: [string, Claim] | undefined;
    for (const entry of this.fresh()) {
      if (!best || entry[1].since > best[1].since || (entry[1].since === best[1].since && this.rank(entry[0]) < this.rank(best[0]))) best = entry;
    }
    return best;
  }

  private rank(node: string): number {
    return this.config.distributors.indexOf(node);
  }
}
