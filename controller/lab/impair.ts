// Packet loss and delay on the lab's segment. This kernel has neither netem nor any delaying
// qdisc (docs/lab.md, "Impairing the segment"), so a relay does it: every port of the bridge
// (the three nodes and the lab's client) is taken off br0 and joined to it again through
// impair-relay.py, which drops a share of the frames the bridge sends towards that port and
// holds the rest for a fixed time.
//
//   node eth0 ── <port> ──[relay]── ri-<port> ── rb-<port> ── br0      (all but eth0 in <prefix>-sw)
//
// A frame is impaired once per crossing of the bridge, on its way out: what netem on the egress
// of every bridge port would do. So client → distributor, a client segment the distributor
// steers on to a target (it crosses twice: client → n1, then n1 → target), the target's replies
// to the client, and node ↔ node traffic (transfer links, control datagrams) all see it. Frames
// are never reordered: one delay for all.
import fs from 'node:fs';
import path from 'node:path';
import { randomInt } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { BatonError } from '../errors.js';
import { createLogger } from '../log.js';
import { repoRoot } from '../paths.js';
import type { LabDescription } from './description.js';
import { inNamespace, ip, listLinks } from './netns.js';
import { isAlive, readPidFile, pidFileOf, startProcess, stopProcess } from './processes.js';

export interface ImpairOptions {
  /** Share of the frames dropped on each crossing of the bridge, 0 to <100. */
  lossPercent: number;
  /** How long each crossing holds a frame, from the kernel's arrival time, 0 to 2000 ms. */
  delayMs: number;
  /** Seeds the drop decisions; random (and reported) when omitted. */
  seed?: number;
}

export interface ImpairCounters {
  frames: number;
  dropped: number;
  forwarded: number;
}

export interface ImpairStats {
  ready: boolean;
  /** Written as the relay stopped: nothing will change any more. */
  final: boolean;
  pid: number;
  seed: number;
  lossPercent: number;
  delayMs: number;
  /** Per bridge port: toPort is impaired (frames the bridge sent towards it), fromPort is not. */
  links: Record<string, { toPort: ImpairCounters; fromPort: { frames: number } }>;
  /** toPort summed over every port. */
  impaired: ImpairCounters;
  /** Frames held right now. */
  queued: number;
  /** Time from the kernel's arrival to the relay's send, over forwarded impaired frames. */
  holdMs: { count: number; min: number | null; p50: number | null; p99: number | null; max: number };
  /**
   * Losses the relay did not choose: checksumPartial (a frame sent on with an incomplete
   * checksum, which its receiver drops), truncated (larger than a frame read), sendErrors,
   * kernelDrops (the relay's receive queue overflowed).
   */
  anomalies: { checksumPartial: number; truncated: number; sendErrors: number; kernelDrops: number };
  sendErrnos: Record<string, number>;
  updatedAt: number;
}

export interface Impairment {
  readonly seed: number;
  /** The bridge ports whose traffic passes the relay. */
  readonly ports: readonly string[];
  /** The relay's counters as of its last write (every 250 ms). */
  stats(): ImpairStats;
  /** Puts every port back on the bridge and stops the relay; resolves with its final counters. */
  remove(): Promise<ImpairStats>;
}

export const RELAY_PROCESS = 'impair-relay';
const RELAY_SCRIPT = path.join('controller', 'lab', 'impair-relay.py');
const READY_TIMEOUT_MS = 5000;
const IFNAMSIZ = 15;
const log = createLogger({ component: 'lab-impair' });

const relaySide = (port: string) => `ri-${port}`;
const bridgeSide = (port: string) => `rb-${port}`;

export function impairStatsFile(lab: LabDescription): string {
  return path.join(lab.runDir, `${RELAY_PROCESS}.stats.json`);
}

function readStats(file: string): ImpairStats | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as ImpairStats;
  } catch {
    // The relay replaces the file atomically; it is absent only before its first report.
    return undefined;
  }
}

function checkOptions(opts: ImpairOptions): number {
  const bad = (what: string) => new BatonError('E_LAB', `impairment: ${what}`, { step: 'impair-options', ...opts });
  if (!Number.isFinite(opts.lossPercent) || opts.lossPercent < 0 || opts.lossPercent >= 100) throw bad(`lossPercent ${opts.lossPercent} is not in 0..<100`);
  if (!Number.isFinite(opts.delayMs) || opts.delayMs < 0 || opts.delayMs > 2000) throw bad(`delayMs ${opts.delayMs} is not in 0..2000`);
  const seed = opts.seed ?? randomInt(2 ** 31);
  if (!Number.isSafeInteger(seed) || seed < 0) throw bad(`seed ${seed} is not a non-negative integer`);
  return seed;
}

export async function impairLab(lab: LabDescription, opts: ImpairOptions): Promise<Impairment> {
  const seed = checkOptions(opts);
  const sw = lab.bridge.ns;
  const ports = [...lab.nodes.map((n) => n.bridgePort), lab.client.bridgePort];
  for (const p of ports) {
    if (relaySide(p).length > IFNAMSIZ) throw new BatonError('E_LAB', `bridge port ${p}: ${relaySide(p)} is longer than ${IFNAMSIZ} characters`, { step: 'impair-options' });
  }
  const existing = new Set((await listLinks(sw)).map((l) => l.ifname));
  const taken = ports.flatMap((p) => [relaySide(p), bridgeSide(p)]).filter((d) => existing.has(d));
  if (taken.length) {
    throw new BatonError('E_LAB', `lab ${lab.prefix} is impaired already (${taken.join(', ')} exist in ${sw}): remove that impairment first`, { step: 'impair-preflight' });
  }

  const statsFile = impairStatsFile(lab);
  const made: string[] = [];
  const rewired: string[] = [];
  let relayStarted = false;
  let removed: ImpairStats | undefined;
  const step = (port: string) => ({ step: `impair-${port}` });

  // Back to the lab's own wiring; runs after a half-done impairLab as well as for remove().
  const undo = async (): Promise<ImpairStats | undefined> => {
    const problems: string[] = [];
    const attempt = async (what: string, p: Promise<unknown>) => {
      try {
        await p;
      } catch (err) {
        problems.push(`${what}: ${(err as Error).message}`);
      }
    };
    for (const p of rewired.splice(0)) {
      await attempt(`detach ${bridgeSide(p)}`, ip(sw, ['link', 'set', 'dev', bridgeSide(p), 'nomaster'], step(p)));
      await attempt(`re-attach ${p}`, ip(sw, ['link', 'set', 'dev', p, 'master', lab.bridge.name], step(p)));
    }
    if (relayStarted) {
      relayStarted = false;
      await attempt('stop the relay', stopProcess(lab.runDir, RELAY_PROCESS, lab.prefix));
    }
    for (const p of made.splice(0)) await attempt(`delete ${relaySide(p)}`, ip(sw, ['link', 'delete', 'dev', relaySide(p)], step(p)));
    if (problems.length) throw new BatonError('E_LAB', `lab ${lab.prefix}: impairment not fully removed: ${problems.join('; ')}`, { step: 'impair-remove', problems });
    return readStats(statsFile);
  };

  try {
    for (const p of ports) {
      const [ri, rb] = [relaySide(p), bridgeSide(p)];
      await ip(sw, ['link', 'add', ri, 'type', 'veth', 'peer', 'name', rb], step(p));
      made.push(p);
      for (const dev of [ri, rb]) {
        // No link-local address: the relay's own devices must add no traffic of their own.
        await ip(sw, ['link', 'set', 'dev', dev, 'addrgenmode', 'none'], step(p));
        // The lab's rule for every veth end (lab.md): complete checksums, as on a real wire.
        await inNamespace(sw, ['ethtool', '-K', dev, 'tx', 'off'], step(p));
        await ip(sw, ['link', 'set', 'dev', dev, 'up'], step(p));
      }
    }

    fs.rmSync(statsFile, { force: true });
    const started = await startProcess(
      {
        name: RELAY_PROCESS,
        ns: sw,
        argv: [
          'python3', path.join(repoRoot(), RELAY_SCRIPT),
          ...ports.flatMap((p) => ['--link', `${p},${relaySide(p)}`]),
          '--loss-percent', String(opts.lossPercent), '--delay-ms', String(opts.delayMs), '--seed', String(seed), '--stats', statsFile,
        ],
      },
      { runDir: lab.runDir, lab: lab.prefix },
    );
    relayStarted = true;
    for (const deadline = Date.now() + READY_TIMEOUT_MS; readStats(statsFile)?.pid !== started.pid; await sleep(25)) {
      if (started.exit || !isAlive(started.pid)) {
        throw new BatonError('E_LAB', `impair-relay exited at once; log ${started.logFile}:\n${fs.readFileSync(started.logFile, 'utf8').slice(-2000)}`, { step: 'impair-relay' });
      }
      if (Date.now() > deadline) throw new BatonError('E_LAB', `impair-relay not ready after ${READY_TIMEOUT_MS} ms; log ${started.logFile}`, { step: 'impair-relay' });
    }

    // Off the bridge first, then its replacement on: never both, which would deliver twice.
    for (const p of ports) {
      rewired.push(p);
      await ip(sw, ['link', 'set', 'dev', p, 'nomaster'], step(p));
      await ip(sw, ['link', 'set', 'dev', bridgeSide(p), 'master', lab.bridge.name], step(p));
    }
    log.info({ lab: lab.prefix, ports, lossPercent: opts.lossPercent, delayMs: opts.delayMs, seed, pid: started.pid }, 'lab segment impaired');
  } catch (err) {
    try {
      await undo();
    } catch (undoErr) {
      log.error({ lab: lab.prefix, err: undoErr }, 'undoing a failed impairment failed too');
    }
    throw err;
  }

  return {
    seed,
    ports,
    stats() {
      if (removed) return removed;
      const s = readStats(statsFile);
      if (!s) throw new BatonError('E_LAB', `impairment counters unreadable: ${statsFile}`, { step: 'impair-stats' });
      const pid = readPidFile(pidFileOf(lab.runDir, RELAY_PROCESS));
      if (pid === undefined || !isAlive(pid, lab.prefix)) {
        throw new BatonError('E_LAB', `impair-relay is not running any more: its losses are no longer the planned ones (log ${lab.runDir}/${RELAY_PROCESS}.log)`, { step: 'impair-stats' });
      }
      return s;
    },
    async remove() {
      if (removed) return removed;
      const last = await undo();
      if (!last) throw new BatonError('E_LAB', `impairment removed, but its final counters are unreadable: ${statsFile}`, { step: 'impair-remove' });
      removed = last;
      log.info({ lab: lab.prefix, impaired: last.impaired, holdMs: last.holdMs, anomalies: last.anomalies }, 'lab segment impairment removed');
      return last;
    },
  };
}
