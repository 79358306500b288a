// The cluster-wide list of target applications listening on the DVIPA (claims 21–23): this node's
// own registrations, plus what every other node's batond reports. A node that stops reporting
// (dead, unreachable) drops out after expiryMs. A change bumps seq and emits 'change' at once; more
// changes within coalesceMs of an emission are gathered into one emission at the end of that
// window. Every handoff changes a target's load twice (live, closed), and each emission goes to
// every router and every peer: at a few hundred handoffs a second, emitting each one cost the
// distributor's batond a third of its CPU (profiled: control datagrams and peer reports).
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
  private lastEmit = -Infinity;
  private trailing?: NodeJS.Timeout;

  constructor(
    private readonly expiryMs: number,
    private readonly coalesceMs = 50,
  ) {
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
    clearTimeout(this.trailing);
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
    if (this.trailing) return;
    const wait = this.lastEmit + this.coalesceMs - Date.now();
    if (wait <= 0) {
      this.emitIfChanged();
      return;
    }
    this.trailing = setTimeout(() => {
      this.trailing = undefined;
      this.emitIfChanged();
    }, wait);
    this.trailing.unref();
  }

  private emitIfChanged(): void {
    const all = this.all();
    const text = JSON.stringify(all);
    if (text === this.snapshot) return;
    this.snapshot = text;
    this.seqNo++;
    this.lastEmit = Date.now();
    this.emit('change', all);
  }
}
