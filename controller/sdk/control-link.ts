// The application's side of its node's control socket (claims 18–24): register once, heartbeat
// while alive, re-register if batond forgot us (it restarted, or we were silent too long), and for
// routing applications keep the cluster's target list current from batond's pushes.
import dgram from 'node:dgram';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import { BatonError } from '../errors.js';
import type { Logger } from '../log.js';
import { type ControlMessage, decodeDatagram, encodeDatagram, FromAgent, type TargetInfo } from '../control/messages.js';

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
  private readonly token: string;
  private id?: string;
  private beat?: NodeJS.Timeout;
  private list: TargetInfo[] = [];
  private seq = -1;
  private registering?: Promise<void>;
  private closed = false;
  private lastUpdate = -Infinity;
  private updateTimer?: NodeJS.Timeout;

  private constructor(
    private readonly opts: ControlOptions,
    private registration: Registration,
    private readonly log: Logger,
  ) {
    super();
    try {
      this.token = fs.readFileSync(opts.secretFile, 'utf8').trim();
    } catch (err) {
      throw new BatonError('E_CONFIG', `cannot read the control secret ${opts.secretFile}: ${(err as Error).message}`, { step: 'control' });
    }
    this.socket.on('message', (buf) => this.onDatagram(buf));
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
    await link.register();
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
    if (this.id && !this.closed) this.send(encodeDatagram('update', { token: this.token, id: this.id, ...(load !== undefined ? { load } : {}), ...(capacity !== undefined ? { capacity } : {}) }));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.beat);
    clearTimeout(this.updateTimer);
    if (this.id) this.socket.send(encodeDatagram('unregister', { token: this.token, id: this.id }), () => this.socket.close());
    else this.socket.close();
  }

  private register(): Promise<void> {
    this.registering ??= new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('registered', onRegistered);
        reject(new BatonError('E_PEER', `no answer from the control socket 127.0.0.1:${this.opts.port} within ${REGISTER_TIMEOUT_MS} ms`, { step: 'register' }));
      }, REGISTER_TIMEOUT_MS);
      const onRegistered = (msg: ControlMessage<'registered'>) => {
        clearTimeout(timer);
        this.id = msg.id;
        clearInterval(this.beat);
        this.beat = setInterval(() => this.heartbeat(), msg.heartbeatMs);
        this.beat.unref();
        resolve();
      };
      this.once('registered', onRegistered);
      const r = this.registration;
      this.send(
        encodeDatagram('register', {
          token: this.token,
          role: r.role,
          app: r.app,
          ports: r.ports,
          ...(r.instance ? { instance: r.instance } : {}),
          ...(r.capacity !== undefined ? { capacity: r.capacity } : {}),
          ...(r.load !== undefined ? { load: r.load } : {}),
        }),
      );
    }).finally(() => {
      this.registering = undefined;
    });
    return this.registering;
  }

  private heartbeat(): void {
    if (this.id) this.send(encodeDatagram('heartbeat', { token: this.token, id: this.id }));
  }

  private onDatagram(buf: Buffer): void {
    const d = decodeDatagram(buf, FromAgent);
    if (!d.ok) {
      this.log.warn({ reason: d.reason, detail: d.detail }, 'control datagram from batond dropped');
      return;
    }
    const msg = d.msg;
    if (msg.type === 'registered') this.emit('registered', msg);
    else if (msg.type === 'ack' && !msg.ok) {
      this.log.warn({ error: msg.error }, 'batond no longer knows this registration: registering again');
      this.id = undefined;
      this.register().catch((err: Error) => this.log.error({ err: err.message }, 'registration failed'));
    } else if (msg.type === 'targets' && msg.seq !== this.seq) {
      this.seq = msg.seq;
      this.list = msg.targets;
      this.emit('targets', msg.targets);
    }
  }

  private send(buf: Buffer): void {
    if (this.closed) return;
    this.socket.send(buf, (err) => {
      if (err) this.log.warn({ err: err.message }, 'control datagram not sent');
    });
  }
}
