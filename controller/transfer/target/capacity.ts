// What is held here, and by whom: the connections each target application serves or is being
// given (what its capacity bounds), and the offers in flight from each routing node with the bytes
// they hold (what limits.offersPerPeer and limits.offerBytesPerPeer bound). Counts only: the
// transfers and connections themselves are handoffs.ts's and served.ts's.
import type { TargetApp } from './applications.js';

export class Holdings {
  private readonly byApp = new Map<TargetApp, number>();
  private readonly byPeer = new Map<string, { offers: number; bytes: number }>();

  /** Connections the application serves or is being given. */
  held(app: TargetApp): number {
    return this.byApp.get(app) ?? 0;
  }

  /** One more (an offer taken in) or one fewer (a transfer ended, a connection closed or moved on). */
  hold(app: TargetApp, delta: 1 | -1): void {
    // An application already forgotten (gone) is not counted again by its transfers ending late.
    if (!this.byApp.has(app) && delta < 0) return;
    this.byApp.set(app, Math.max(0, (this.byApp.get(app) ?? 0) + delta));
  }

  /** The application is gone: nothing it held counts any more. */
  forget(app: TargetApp): void {
    this.byApp.delete(app);
  }

  /** The offers the node has in flight here and the bytes they hold. */
  share(peer: string): { offers: number; bytes: number } {
    return this.byPeer.get(peer) ?? { offers: 0, bytes: 0 };
  }

  /** An offer taken in (1, its bytes) or given back (-1, minus its bytes). */
  addShare(peer: string, offers: 1 | -1, bytes: number): void {
    const s = this.byPeer.get(peer) ?? { offers: 0, bytes: 0 };
    s.offers += offers;
    s.bytes += bytes;
    if (s.offers <= 0) this.byPeer.delete(peer);
    else this.byPeer.set(peer, s);
  }
}
