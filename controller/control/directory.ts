// The cluster-wide list of target applications listening on the DVIPA (claims 21–23): this node's
// own registrations, plus what every other node's batond reports. A node that stops reporting
// (dead, unreachable) drops out after expiryMs. Every change bumps seq and emits 'change'.
import { EventEmitter } from 'node:events';
import type { TargetInfo } from './messages.js';

const order = (a: TargetInfo, b: TargetInfo) =>
  a.node.localeCompare(b.node) || a.port - b.port || a.instance.localeCompare(b.instance);

export class TargetDirectory extends EventEmitter<{ change: [TargetInfo[]] }> {
  private localTargets: TargetInfo[] = [];
  private readonly remote = new Map<string, { targets: TargetInfo[]; lastSeen: number }>();
  private snapshot = '[]';
  private seqNo = 0;
  private readonly sweeper: NodeJS.Timeout;

  constructor(private readonly expiryMs: number) {
    super();
    this.sweeper = setInterval(() => this.sweep(), Math.max(100, expiryMs / 4));
    this.sweeper.unref();
  }

  get seq(): number {
    return this.seqNo;
  }

  all(): TargetInfo[] {
    return [...this.localTargets, ...[...this.remote.values()].flatMap((r) => r.targets)].sort(order);
  }

  local(): TargetInfo[] {
    return this.localTargets;
  }

  setLocal(targets: TargetInfo[]): void {
    this.localTargets = [...targets].sort(order);
    this.changed();
  }

  /** A peer's report of its own listeners; it replaces the previous one and refreshes its lease. */
  setRemote(node: string, targets: TargetInfo[]): void {
    this.remote.set(node, { targets: targets.filter((t) => t.node === node).sort(order), lastSeen: Date.now() });
    this.changed();
  }

  /** Milliseconds since node last reported, or undefined if it has not within the expiry. */
  reportAge(node: string): number | undefined {
    const r = this.remote.get(node);
    return r ? Date.now() - r.lastSeen : undefined;
  }

  close(): void {
    clearInterval(this.sweeper);
  }

  private sweep(): void {
    const now = Date.now();
    let dropped = false;
    for (const [node, r] of this.remote) {
      if (now - r.lastSeen > this.expiryMs) {
        this.remote.delete(node);
        dropped = true;
      }
    }
    if (dropped) this.changed();
  }

  private changed(): void {
    const all = this.all();
    const text = JSON.stringify(all);
    if (text === this.snapshot) return;
    this.snapshot = text;
    this.seqNo++;
    this.emit('change', all);
  }
}
