// The recent handoffs this node coordinated, newest first, for the REST API (/v1/transfers). Bounded:
// a busy node keeps the last `capacity` records, never an unbounded history.
import type { HandoffRecord } from '../transfer/handoff.js';

export interface TransferRecord extends HandoffRecord {
  /** When the handoff finished, ISO 8601. */
  at: string;
}

export class TransferLog {
  private readonly records: TransferRecord[] = [];
  private next = 0;

  constructor(private readonly capacity = 1000) {}

  add(record: HandoffRecord): void {
    const entry = { ...record, at: new Date().toISOString() };
    if (this.records.length < this.capacity) this.records.push(entry);
    else this.records[this.next] = entry;
    this.next = (this.next + 1) % this.capacity;
  }

  /** Newest first. */
  recent(limit = this.capacity): TransferRecord[] {
    const n = this.records.length;
    const out: TransferRecord[] = [];
    for (let i = 1; i <= Math.min(limit, n); i++) out.push(this.records[(this.next - i + n) % n]!);
    return out;
  }
}
