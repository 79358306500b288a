// The application's side of its node's control socket (claims 18–24): register once, heartbeat
// while alive, re-register if batond forgot us (it restarted, or we were silent too long), and for
// routing applications keep the cluster's target list current from batond's pushes.
//
// The node's control secret never leaves this process: every datagram carries a tag proving we
// hold it (control/messages.ts), and every answer must carry batond's tag and be fresh — the
// challenge echoes our request's nonce, `registered` echoes the nonce we registered with, an ack
// echoes a counter we sent and have not seen acknowledged, a targets push carries a counter larger
// than the last one. Anything else is dropped and counted (`dropped`), so a process that takes
// batond's port while batond is down gets nothing but challenge-requests, and can answer nothing.
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { EventEmitter } from 'node:events';
import { BatonError } from '../errors.js';
import { errorText, guard, logSparsely } from '../input.js';
import type { Logger } from '../log.js';
import { challengeRequest, type ControlMessage, type ControlType, decodeDatagram, encodeDatagram, FromAgent, readControlSecret, type TargetInfo } from '../control/messages.js';

export interface ControlOptions {
  /** UDP port of batond's control socket on this node's loopback (cluster config: controlPort). */
  port: number;
  /** The node's control secret file (cluster config: nodes[].controlSecretFile); root-only. */
  secretFile: string;
}

export interface Registration {
  role: 'router' | 'target';
  app: string;
  instance?: string;
  ports: number[];
  capacity?: number;
  load?: number;
}

const REGISTER_TIMEOUT_MS = 2000;
/**
 * Load changes (every connection that goes live or ends) are sent at most this often, the latest
 * value at the end of the window: at a few hundred handoffs a second, one datagram each was a
 * measurable share of the target application's and its batond's CPU. Capacity goes at once.
 */
const LOAD_UPDATE_INTERVAL_MS = 50;

export class ControlLink extends EventEmitter<{ targets: [TargetInfo[]]; registered: [ControlMessage<'registered'>] }> {
  private readonly socket = dgram.createSocket('udp4');
  private socketErrors = 0;
  /** The HMAC key: the secret file's 64 hex digits, as batond reads them. */
  private readonly key: Buffer;
  private id?: string;
  private beat?: NodeJS.Timeout;
  private list: TargetInfo[] = [];
  private seq = -1;
  private registering?: Promise<void>;
  /** The nonce of the challenge-request we wait an answer to. */
  private awaitChallenge?: string;
  /** batond's nonce our register carried: `registered` must echo it. */
  private awaitRegistered?: string;
  /** Our counter for this registration: the last one sent, and the last one batond acknowledged. */
  private sent = 0;
  private acked = 0;
  /** batond's counter of targets pushes for this registration. */
  private pushed = 0;
  private closed = false;
  /** Registrations in a row that got no answer (batond down): logged sparsely. */
  private failedRegistrations = 0;
  private lastUpdate = -Infinity;
  private updateTimer?: NodeJS.Timeout;
  /** Datagrams from batond's port dropped, by reason: a bad tag, a stale or unsolicited answer, a decoding failure. */
  readonly dropped = new Map<string, number>();

  private constructor(
    private readonly opts: ControlOptions,
    private registration: Registration,
    private readonly log: Logger,
  ) {
    super();
    this.key = readControlSecret(opts.secretFile);
    // A datagram that makes the handler throw is logged bounded and counted as an input error
    // (source "sdk"); the socket stays: there is no link to close on UDP.
    this.socket.on('message', guard('sdk', this.log, (buf: Buffer) => this.onDatagram(buf)));
    // While batond is down (restart, upgrade) every heartbeat comes back as ICMP port-unreachable,
    // which a connected UDP socket reports as an 'error' event. Unhandled, that would kill the
    // application; it is expected and heals when batond is back (the next heartbeat re-registers).
    this.socket.on('error', (err) => {
      this.socketErrors++;
      if (this.socketErrors === 1 || this.socketErrors % 100 === 0) this.log.warn({ err: err.message, errors: this.socketErrors }, 'control socket error (batond down?); heartbeats continue');
    });
  }

  static async open(opts: ControlOptions, registration: Registration, log: Logger): Promise<ControlLink> {
    const link = new ControlLink(opts, registration, log);
    await new Promise<void>((resolve, reject) => {
      link.socket.once('error', reject);
      link.socket.connect(opts.port, '127.0.0.1', () => resolve());
    });
    try {
      await link.register();
    } catch (err) {
      link.close();
      throw err;
    }
    return link;
  }

  /** The latest list of target applications on the DVIPA, cluster-wide. */
  targets(): TargetInfo[] {
    return this.list;
  }

  /** A target's load or capacity changed: tell batond, which tells every routing application. */
  update(change: { load?: number; capacity?: number }): void {
    this.registration = { ...this.registration, ...change };
    if (change.capacity === undefined && this.updateTimer) return; // the pending send takes the latest load
    const wait = change.capacity === undefined ? this.lastUpdate + LOAD_UPDATE_INTERVAL_MS - Date.now() : 0;
    if (wait <= 0) {
      this.sendUpdate();
      return;
    }
    this.updateTimer = setTimeout(() => this.sendUpdate(), wait);
    this.updateTimer.unref();
  }

  private sendUpdate(): void {
    clearTimeout(this.updateTimer);
    this.updateTimer = undefined;
    this.lastUpdate = Date.now();
    const { load, capacity } = this.registration;
    if (this.id && !this.closed) this.send(this.encode('update', { id: this.id, n: ++this.sent, ...(load !== undefined ? { load } : {}), ...(capacity !== undefined ? { capacity } : {}) }));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.beat);
    clearTimeout(this.updateTimer);
    if (this.id) this.socket.send(this.encode('unregister', { id: this.id, n: ++this.sent }), () => this.socket.close());
    else this.socket.close();
  }

  private encode<K extends Exclude<ControlType, 'challenge-request'>>(type: K, body: Omit<ControlMessage<K>, 'v' | 'type'>): Buffer {
    return encodeDatagram(this.key, 'to-batond', type, body);
  }

  /** challenge-request → challenge (batond's tag: it is batond) → register with its nonce → registered. */
  private register(): Promise<void> {
    this.registering ??= new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('registered', onRegistered);
        this.awaitChallenge = undefined;
        this.awaitRegistered = undefined;
        reject(new BatonError('E_PEER', `no answer from batond's control socket 127.0.0.1:${this.opts.port} within ${REGISTER_TIMEOUT_MS} ms`, { step: 'register' }));
      }, REGISTER_TIMEOUT_MS);
      const onRegistered = (msg: ControlMessage<'registered'>) => {
        clearTimeout(timer);
        this.failedRegistrations = 0;
        this.id = msg.id;
        this.sent = 0;
        this.acked = 0;
        this.pushed = 0;
        // A restarted batond counts its list's changes from 0 again: its first list is taken whatever its seq.
        this.seq = -1;
        clearInterval(this.beat);
        this.beat = setInterval(() => this.heartbeat(), msg.heartbeatMs);
        this.beat.unref();
        resolve();
      };
      this.once('registered', onRegistered);
      this.awaitChallenge = randomBytes(16).toString('hex');
      this.send(challengeRequest(this.awaitChallenge));
    }).finally(() => {
      this.registering = undefined;
    });
    return this.registering;
  }

  private heartbeat(): void {
    if (this.id) this.send(this.encode('heartbeat', { id: this.id, n: ++this.sent }));
    // A registration that failed (batond was still down) is tried again at the next beat.
    else if (!this.registering) this.reregister();
  }

  private reregister(): void {
    this.register().catch((err: unknown) => {
      this.failedRegistrations++;
      if (this.failedRegistrations === 1 || this.failedRegistrations % 100 === 0) {
        this.log.warn({ err: errorText(err), failed: this.failedRegistrations }, 'registration failed; trying again at every heartbeat');
      }
    });
  }

  private drop(reason: string, type?: string): void {
    const count = (this.dropped.get(reason) ?? 0) + 1;
    this.dropped.set(reason, count);
    // Counted always, logged sparsely: a flood must not become a flood of log lines.
    if (logSparsely(count)) this.log.warn({ reason, type, dropped: count }, 'control datagram from batond dropped');
  }

  private onDatagram(buf: Buffer): void {
    const d = decodeDatagram(buf, this.key, 'to-application', FromAgent);
    if (!d.ok) return this.drop(d.reason);
    const msg = d.msg;
    switch (msg.type) {
      case 'challenge':
        if (msg.cnonce !== this.awaitChallenge) return this.drop('unsolicited', msg.type);
        this.awaitChallenge = undefined;
        this.awaitRegistered = msg.nonce;
        return this.send(this.registerDatagram(msg.nonce));
      case 'registered':
        if (msg.nonce !== this.awaitRegistered) return this.drop('unsolicited', msg.type);
        this.awaitRegistered = undefined;
        this.emit('registered', msg);
        return;
      case 'ack':
        // It must answer a datagram we sent, later than any answered before.
        if (msg.id !== this.id || msg.n > this.sent || msg.n <= this.acked) return this.drop('stale', msg.type);
        this.acked = msg.n;
        if (!msg.ok) {
          this.log.warn({ error: msg.error }, 'batond no longer knows this registration: registering again');
          this.id = undefined;
          this.reregister();
        }
        return;
      case 'targets':
        if (msg.id !== this.id || msg.n <= this.pushed) return this.drop('stale', msg.type);
        this.pushed = msg.n;
        if (msg.seq !== this.seq) {
          this.seq = msg.seq;
          this.list = msg.targets;
          this.emit('targets', msg.targets);
        }
        return;
    }
  }

  private registerDatagram(nonce: string): Buffer {
    const r = this.registration;
    return this.encode('register', {
      nonce,
      role: r.role,
      app: r.app,
      ports: r.ports,
      ...(r.instance ? { instance: r.instance } : {}),
      ...(r.capacity !== undefined ? { capacity: r.capacity } : {}),
      ...(r.load !== undefined ? { load: r.load } : {}),
    });
  }

  private send(buf: Buffer): void {
    if (this.closed) return;
    this.socket.send(buf, (err) => {
      if (err) this.log.warn({ err: err.message }, 'control datagram not sent');
    });
  }
}
