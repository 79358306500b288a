// The routing table's quotas: how many handed-off connections the table may hold in all, and how
// many one client may hold (one IPv4 address, one IPv6 prefix: flow.ts, sourceOf), so that no
// client can fill the table (E_QUOTA). Checked by the route service before a new handed-off
// connection takes an entry.
import { BatonError } from '../errors.js';
import type { ClusterConfig } from '../config/cluster.js';
import { connectionId, type FlowKey } from '../flow.js';
import { logSparsely } from '../input.js';
import type { Logger } from '../log.js';
import type { TableIndex } from './table-index.js';

export type QuotaKind = 'total' | 'per-source';

const DEFAULT_ENTRIES_PER_SOURCE = 4096;

export class Quotas {
  /** New handed-off connections refused by a quota, since start. */
  readonly refused = new Map<QuotaKind, number>();
  readonly limits: { handedOffEntries: number; entriesPerSource: number };

  constructor(
    config: ClusterConfig,
    /** The map's max_entries, from which the default total quota derives. */
    capacity: number,
    private readonly index: TableIndex,
    private readonly log: Logger,
  ) {
    this.limits = {
      // Room beyond the quota: entries that linger while TCP closes, handoffs already frozen.
      handedOffEntries: Math.min(config.limits?.handedOffEntries ?? Math.floor((capacity * 7) / 8), capacity),
      entriesPerSource: config.limits?.entriesPerSource ?? DEFAULT_ENTRIES_PER_SOURCE,
    };
  }

  /** Throws E_QUOTA (counted, logged sparsely) if a new entry for flow would exceed a quota. */
  check(flow: FlowKey): void {
    const { handedOffEntries, entriesPerSource } = this.limits;
    let kind: QuotaKind | undefined;
    let why = '';
    if (this.index.size >= handedOffEntries) {
      kind = 'total';
      why = `the routing table holds ${this.index.size} handed-off connections, its quota (limits.handedOffEntries) is ${handedOffEntries}`;
    } else {
      const source = this.index.sourceOf(flow.clientAddress);
      if ((this.index.count({ source }) ?? 0) >= entriesPerSource) {
        kind = 'per-source';
        why = `client ${source === flow.clientAddress ? flow.clientAddress : `${flow.clientAddress} (source ${source})`} holds ${entriesPerSource} handed-off connections, its quota (limits.entriesPerSource)`;
      }
    }
    if (!kind) return;
    const n = (this.refused.get(kind) ?? 0) + 1;
    this.refused.set(kind, n);
    if (logSparsely(n)) this.log.warn({ quota: kind, client: flow.clientAddress, refused: n }, 'handoff refused by a routing-table quota');
    throw new BatonError('E_QUOTA', `handoff refused: ${why}`, { step: 'admit', flow: connectionId(flow), quota: kind });
  }
}
