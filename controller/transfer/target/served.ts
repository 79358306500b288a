// The connections live in target applications here, by handoff id, from the moment a transfer
// goes live until the application releases the connection, goes away, or the connection moves on
// to another node. Listed a page at a time (an operator's view of 100,000 of them must not block
// a handoff) and found by their 4-tuple too.
import { connectionId, type FlowKey } from '../../flow.js';
import { PagedMap } from '../../agent/paged-map.js';
import type { TargetApp } from './applications.js';

export interface ServedConnection {
  connId: string;
  app: TargetApp;
  flow: FlowKey;
  since: number;
}

/** A live connection as views show it. */
export interface ServedView {
  connId: string;
  flow: FlowKey;
  app: string;
  instance?: string;
  since: number;
}

const view = (o: ServedConnection): ServedView => ({ connId: o.connId, flow: o.flow, app: o.app.name, instance: o.app.instance, since: o.since });

export class ServedConnections {
  private readonly owned = new PagedMap<ServedConnection>();
  private readonly byFlow = new Map<string, string>();

  add(o: ServedConnection): void {
    this.owned.set(o.connId, o);
    this.byFlow.set(connectionId(o.flow), o.connId);
  }

  get(connId: string): ServedConnection | undefined {
    return this.owned.get(connId);
  }

  /** No longer served here; what it was, if it was. */
  remove(connId: string): ServedConnection | undefined {
    const o = this.owned.get(connId);
    if (!o) return undefined;
    this.owned.delete(connId);
    const key = connectionId(o.flow);
    if (this.byFlow.get(key) === connId) this.byFlow.delete(key);
    return o;
  }

  /** The application says its connection closed: the connection, if it was that application's. */
  released(app: TargetApp, connId: string): ServedConnection | undefined {
    const o = this.owned.get(connId);
    return o && o.app === app ? this.remove(connId) : undefined;
  }

  /** The application is gone: every connection it served, no longer served here. */
  releasedAll(app: TargetApp): ServedConnection[] {
    const gone: ServedConnection[] = [];
    for (const [connId, o] of this.owned.entries()) {
      if (o.app !== app) continue;
      this.remove(connId);
      gone.push(o);
    }
    return gone;
  }

  /** The connection with this 4-tuple moved on from this node: no longer served here. */
  movedOn(flow: FlowKey): ServedConnection | undefined {
    const connId = this.byFlow.get(connectionId(flow));
    return connId === undefined ? undefined : this.remove(connId);
  }

  /** The connection live here with this 4-tuple, if any. */
  served(flow: FlowKey): ServedView | undefined {
    const connId = this.byFlow.get(connectionId(flow));
    const o = connId === undefined ? undefined : this.owned.get(connId);
    return o && view(o);
  }

  get size(): number {
    return this.owned.size;
  }

  /**
   * A page of the connections, after the cursor `after` (a page's next): O(page) however many
   * there are. total is given unfiltered only.
   */
  page(q: { after?: number; limit: number; client?: string }): { total?: number; entries: ServedView[]; next?: string } {
    const page = this.owned.page({ after: q.after, limit: q.limit, match: q.client === undefined ? undefined : (o) => o.flow.clientAddress === q.client });
    return { ...(q.client === undefined ? { total: this.owned.size } : {}), entries: page.values.map(view), ...(page.next ? { next: page.next } : {}) };
  }
}
