// batond's control socket (claims 18–24): a UDP socket on the node's loopback, so only processes
// on this node reach it. Every datagram must carry the node's control secret (a root-only file),
// match its schema, and be one an application may send; anything else is dropped and counted by
// reason. Target applications register their instance, ports, capacity and load; routing
// applications get the cluster's target list on registration and on every change. A registration
// not refreshed by a heartbeat within expiryMs is gone.
import { randomBytes, timingSafeEqual } from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import path from 'node:path';
import { BatonError } from '../errors.js';
import type { Logger } from '../log.js';
import type { TargetDirectory } from './directory.js';
import { type ControlMessage, decodeDatagram, encodeDatagram, FromApplication, type TargetInfo } from './messages.js';

export const HEARTBEAT_MS = 1000;
export const EXPIRY_MS = 3000;
const MAX_REGISTRATIONS = 1024;

interface Registration {
  id: string;
  role: 'router' | 'target';
  app: string;
  instance: string;
  ports: number[];
  capacity: number;
  load: number;
  address: string;
  port: number;
  lastSeen: number;
}

/** Reads the node's control secret, creating it (root-only) on first start. */
export function ensureControlSecret(file: string): Buffer {
  if (!fs.existsSync(file)) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600, flag: 'wx' });
  }
  const text = fs.readFileSync(file, 'utf8').trim();
  if (!/^[0-9a-f]{64}$/.test(text)) throw new BatonError('E_CONFIG', `control secret ${file} must hold 64 hex digits`, { step: 'control' });
  return Buffer.from(text);
}

export class ControlServer {
  private readonly socket = dgram.createSocket('udp4');
  private readonly registrations = new Map<string, Registration>();
  /** Datagrams dropped, by reason: bad-token, not-json, schema, unexpected-type, too-large, unknown-registration, full, port. */
  readonly dropped = new Map<string, number>();
  private sweeper?: NodeJS.Timeout;
  /** Operator settings by instance name (REST API); they outlive the instance re-registering. */
  private readonly operator = new Map<string, { weight: number; draining: boolean }>();

  constructor(
    private readonly opts: {
      node: string;
      port: number;
      secret: Buffer;
      /** Ports some DVIPA serves now: the only ones applications may register for. */
      dvipaPorts: () => number[];
      directory: TargetDirectory;
      log: Logger;
      /** Counts for /metrics: datagrams accepted by type, dropped by reason. */
      metrics?: { datagram(type: string): void; drop(reason: string): void };
    },
  ) {
    opts.directory.on('change', (all) => this.pushTargets(all));
  }

  start(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.socket.once('error', (err) => reject(new BatonError('E_CONFIG', `control socket 127.0.0.1:${this.opts.port}: ${err.message}`, { step: 'control' })));
      this.socket.on('message', (buf, rinfo) => this.onDatagram(buf, rinfo));
      this.socket.bind(this.opts.port, '127.0.0.1', () => {
        this.sweeper = setInterval(() => this.sweep(), HEARTBEAT_MS / 2);
        this.sweeper.unref();
        resolve();
      });
    });
  }

  close(): void {
    clearInterval(this.sweeper);
    this.socket.close();
  }

  private drop(reason: string, detail: string, from: dgram.RemoteInfo): void {
    const count = (this.dropped.get(reason) ?? 0) + 1;
    this.dropped.set(reason, count);
    this.opts.metrics?.drop(reason);
    // Every drop is counted; a flood of them is logged sparsely (the first ten, then every 1000th).
    if (count <= 10 || count % 1000 === 0) {
      this.opts.log.warn({ reason, detail, from: `${from.address}:${from.port}`, dropped: count }, 'control datagram dropped');
    }
  }

  private onDatagram(buf: Buffer, from: dgram.RemoteInfo): void {
    const decoded = decodeDatagram(buf, FromApplication);
    if (!decoded.ok) return this.drop(decoded.reason, decoded.detail, from);
    const msg = decoded.msg;
    const token = Buffer.from(msg.token);
    if (token.length !== this.opts.secret.length || !timingSafeEqual(token, this.opts.secret)) return this.drop('bad-token', msg.type, from);
    this.opts.metrics?.datagram(msg.type);
    if (msg.type === 'register') return this.register(msg, from);
    const reg = this.registrations.get(msg.id);
    if (!reg || reg.address !== from.address || reg.port !== from.port) {
      this.dropped.set('unknown-registration', (this.dropped.get('unknown-registration') ?? 0) + 1);
      this.opts.metrics?.drop('unknown-registration');
      this.send(encodeDatagram('ack', { id: msg.id, ok: false, error: 'unknown registration: register again' }), from);
      return;
    }
    reg.lastSeen = Date.now();
    if (msg.type === 'unregister') {
      this.registrations.delete(reg.id);
      this.opts.log.info({ app: reg.app, instance: reg.instance, role: reg.role }, 'application unregistered');
      if (reg.role === 'target') this.publishLocal();
      return;
    }
    if (msg.type === 'update' && reg.role === 'target') {
      if (msg.capacity !== undefined) reg.capacity = msg.capacity;
      if (msg.load !== undefined) reg.load = msg.load;
      this.publishLocal();
    }
    this.send(encodeDatagram('ack', { id: reg.id, ok: true }), from);
    // A routing application's heartbeat also refreshes its copy of the list (a lost push heals).
    if (reg.role === 'router' && msg.type === 'heartbeat') this.send(this.targetsDatagram(this.opts.directory.all()), from);
  }

  private register(msg: ControlMessage<'register'>, from: dgram.RemoteInfo): void {
    if (this.registrations.size >= MAX_REGISTRATIONS) return this.drop('full', `${MAX_REGISTRATIONS} registrations`, from);
    const served = this.opts.dvipaPorts();
    const foreign = msg.ports.filter((p) => !served.includes(p));
    if (foreign.length) return this.drop('port', `ports ${foreign.join(',')} are not DVIPA ports`, from);
    const reg: Registration = {
      id: randomBytes(8).toString('hex'),
      role: msg.role,
      app: msg.app,
      instance: msg.instance ?? msg.app,
      ports: msg.ports,
      capacity: msg.capacity ?? 0,
      load: msg.load ?? 0,
      address: from.address,
      port: from.port,
      lastSeen: Date.now(),
    };
    this.registrations.set(reg.id, reg);
    this.opts.log.info({ app: reg.app, instance: reg.instance, role: reg.role, ports: reg.ports, capacity: reg.capacity }, 'application registered');
    this.send(encodeDatagram('registered', { id: reg.id, node: this.opts.node, heartbeatMs: HEARTBEAT_MS, expiryMs: EXPIRY_MS }), from);
    if (reg.role === 'target') this.publishLocal();
    else this.send(this.targetsDatagram(this.opts.directory.all()), from);
  }

  private sweep(): void {
    const now = Date.now();
    let targetsGone = false;
    for (const reg of this.registrations.values()) {
      if (now - reg.lastSeen <= EXPIRY_MS) continue;
      this.registrations.delete(reg.id);
      this.opts.log.warn({ app: reg.app, instance: reg.instance, role: reg.role }, 'registration expired (no heartbeat)');
      targetsGone ||= reg.role === 'target';
    }
    if (targetsGone) this.publishLocal();
  }

  /**
   * Sets an instance's weight or drains it (REST API). The change reaches every routing
   * application in the cluster like any load change. Not persisted: a restarted batond starts
   * from weight 100, not draining.
   */
  setOperatorState(instance: string, change: { weight?: number; draining?: boolean }): TargetInfo[] {
    const registered = [...this.registrations.values()].some((r) => r.role === 'target' && r.instance === instance);
    if (!registered) throw new BatonError('E_NOT_FOUND', `no target instance ${instance} is registered on ${this.opts.node}`, { node: this.opts.node, step: 'target' });
    const current = this.operator.get(instance) ?? { weight: 100, draining: false };
    this.operator.set(instance, { weight: change.weight ?? current.weight, draining: change.draining ?? current.draining });
    this.opts.log.info({ instance, ...this.operator.get(instance) }, 'target instance changed by the operator');
    this.publishLocal();
    return this.opts.directory.local().filter((t) => t.instance === instance);
  }

  /** Registrations by role, and control datagrams dropped by reason. */
  counts(): { routers: number; targets: number; dropped: Record<string, number> } {
    const regs = [...this.registrations.values()];
    return { routers: regs.filter((r) => r.role === 'router').length, targets: regs.filter((r) => r.role === 'target').length, dropped: Object.fromEntries(this.dropped) };
  }

  private publishLocal(): void {
    const targets: TargetInfo[] = [...this.registrations.values()]
      .filter((r) => r.role === 'target')
      .flatMap((r) => {
        const { weight, draining } = this.operator.get(r.instance) ?? { weight: 100, draining: false };
        return r.ports.map((port) => ({ node: this.opts.node, app: r.app, instance: r.instance, port, capacity: r.capacity, load: r.load, weight, draining }));
      });
    this.opts.directory.setLocal(targets);
  }

  private targetsDatagram(all: TargetInfo[]): Buffer {
    return encodeDatagram('targets', { seq: this.opts.directory.seq, targets: all });
  }

  private pushTargets(all: TargetInfo[]): void {
    const datagram = this.targetsDatagram(all);
    for (const reg of this.registrations.values()) if (reg.role === 'router') this.send(datagram, reg);
  }

  private send(buf: Buffer, to: { address: string; port: number }): void {
    this.socket.send(buf, to.port, to.address, (err) => {
      if (err) this.opts.log.warn({ to: `${to.address}:${to.port}`, err: err.message }, 'control datagram not sent');
    });
  }
}
