// batond's control socket (claims 18–24): a UDP socket on the node's loopback, so only processes
// on this node reach it. Every datagram but a challenge-request must carry a tag proving its sender
// holds the node's control secret (a root-only file; the secret itself never travels), be fresh
// (a register uses a nonce batond issued, once; later datagrams carry a counter that only grows),
// match its schema, and be one an application may send; anything else is dropped and counted by
// reason. Target applications register their instance, ports, capacity and load, into the node's
// one registry of target applications (transfer/target/applications.ts, which the agent socket's
// hellos write too); routing applications get the cluster's target list on registration and on
// every change. A registration not refreshed by a heartbeat within expiryMs is gone.
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import path from 'node:path';
import { BatonError } from '../errors.js';
import { guard, logSparsely } from '../input.js';
import type { Logger } from '../log.js';
import { Challenges } from './challenges.js';
import type { TargetDirectory } from './directory.js';
import { TargetApplications } from '../transfer/target/applications.js';
import { type ControlMessage, type ControlType, decodeDatagram, encodeDatagram, FromApplication, MAX_DATAGRAM_BYTES, readControlSecret, type TargetInfo } from './messages.js';

export const HEARTBEAT_MS = 1000;
export const EXPIRY_MS = 3000;
const MAX_REGISTRATIONS = 1024;

/** The control session of an application; a target's ports, capacity and load are in the registry. */
interface Registration {
  id: string;
  role: 'router' | 'target';
  app: string;
  instance: string;
  address: string;
  port: number;
  lastSeen: number;
  /** The largest counter the application has sent; a datagram must carry a larger one. */
  n: number;
  /** batond's own counter of targets datagrams sent to this registration. */
  pushed: number;
}

/** Reads the node's control secret (readControlSecret), creating it (root-only) on first start. */
export function ensureControlSecret(file: string): Buffer {
  if (!fs.existsSync(file)) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600, flag: 'wx' });
  }
  return readControlSecret(file);
}

export class ControlServer {
  private readonly socket = dgram.createSocket('udp4');
  private readonly registrations = new Map<string, Registration>();
  private readonly challenges = new Challenges();
  /** Datagrams not sent: larger than a datagram may be, or refused by the socket. */
  private oversized = 0;
  private unsent = 0;
  /**
   * Datagrams dropped, by reason (docs/protocol.md): too-large, bad-mac, encoding, too-deep,
   * not-json, unexpected-type, schema, bad-nonce, stale-nonce, replay, unknown-registration, full, port.
   */
  readonly dropped = new Map<string, number>();
  private sweeper?: NodeJS.Timeout;
  private closed = false;
  private readonly applications: TargetApplications;
  private readonly publish = () => this.publishLocal();

  constructor(
    private readonly opts: {
      node: string;
      port: number;
      /** The HMAC key: the control secret file's contents (ensureControlSecret). */
      secret: Buffer;
      /** Ports some DVIPA serves now: the only ones applications may register for. */
      dvipaPorts: () => number[];
      directory: TargetDirectory;
      log: Logger;
      /** Counts for /metrics: datagrams accepted by type, dropped by reason. */
      metrics?: { datagram(type: string): void; drop(reason: string): void };
      /** The node's registry of target applications (the target relay's); a registry of its own if not given. */
      applications?: TargetApplications;
    },
  ) {
    this.applications = opts.applications ?? new TargetApplications();
    // Whatever changes what this node's targets look like (a listing, a load, a capacity declared on
    // either socket, an operator's setting) is published to the cluster's directory.
    this.applications.on('change', this.publish);
    opts.directory.on('change', (all) => this.pushTargets(all));
  }

  start(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.socket.once('error', (err) => reject(new BatonError('E_CONFIG', `control socket 127.0.0.1:${this.opts.port}: ${err.message}`, { step: 'control' })));
      // Whatever a datagram makes the handler throw is logged bounded and counted in
      // baton_input_errors_total{source="control"}; there is no link to close, the socket goes on.
      this.socket.on('message', guard('control', this.opts.log, (buf: Buffer, rinfo: dgram.RemoteInfo) => this.onDatagram(buf, rinfo)));
      this.socket.bind(this.opts.port, '127.0.0.1', () => {
        this.sweeper = setInterval(() => this.sweep(), HEARTBEAT_MS / 2);
        this.sweeper.unref();
        resolve();
      });
    });
  }

  /** Stops answering; a second call does nothing (a test or a shutdown path may both call it). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.applications.off('change', this.publish);
    clearInterval(this.sweeper);
    this.socket.close();
  }

  /** Counts a drop; returns the count for that reason. */
  private count(reason: string): number {
    const count = (this.dropped.get(reason) ?? 0) + 1;
    this.dropped.set(reason, count);
    this.opts.metrics?.drop(reason);
    return count;
  }

  private drop(reason: string, detail: string, from: dgram.RemoteInfo): void {
    const count = this.count(reason);
    // Every drop is counted; a flood of them is logged sparsely (the first ten, then every 1000th).
    // detail is bounded by whoever made it: never the datagram itself.
    if (logSparsely(count)) {
      this.opts.log.warn({ reason, detail, from: `${from.address}:${from.port}`, dropped: count }, 'control datagram dropped');
    }
  }

  private encode<K extends Exclude<ControlType, 'challenge-request'>>(type: K, body: Omit<ControlMessage<K>, 'v' | 'type'>): Buffer {
    return encodeDatagram(this.opts.secret, 'to-application', type, body);
  }

  private onDatagram(buf: Buffer, from: dgram.RemoteInfo): void {
    const decoded = decodeDatagram(buf, this.opts.secret, 'to-batond', FromApplication);
    if (!decoded.ok) return this.drop(decoded.reason, decoded.detail, from);
    const msg = decoded.msg;
    this.opts.metrics?.datagram(msg.type);
    // Untagged and free to ask: the answer is tagged (a squatter on the port could not make it)
    // and costs batond no memory (challenges.ts).
    if (msg.type === 'challenge-request') return this.send(this.encode('challenge', { cnonce: msg.cnonce, nonce: this.challenges.issue(from) }), from);
    if (msg.type === 'register') return this.register(msg, from);
    const reg = this.registrations.get(msg.id);
    if (!reg || reg.address !== from.address || reg.port !== from.port) {
      // What every application's next heartbeat meets after batond restarted: counted, not logged.
      this.count('unknown-registration');
      this.send(this.encode('ack', { id: msg.id, n: msg.n, ok: false, error: 'unknown registration: register again' }), from);
      return;
    }
    // A datagram recorded earlier and sent again (from this very address: the application's port
    // once it let it go) carries a counter already seen.
    if (msg.n <= reg.n) return this.drop('replay', `${msg.type} n ${msg.n}, last ${reg.n}`, from);
    reg.n = msg.n;
    reg.lastSeen = Date.now();
    if (msg.type === 'unregister') {
      this.registrations.delete(reg.id);
      this.opts.log.info({ app: reg.app, instance: reg.instance, role: reg.role }, 'application unregistered');
      this.applications.unlist(reg.id);
      return;
    }
    if (msg.type === 'update' && reg.role === 'target') this.applications.update(reg.id, { capacity: msg.capacity, load: msg.load });
    this.send(this.encode('ack', { id: reg.id, n: msg.n, ok: true }), from);
    // A routing application's heartbeat also refreshes its copy of the list (a lost push heals).
    if (reg.role === 'router' && msg.type === 'heartbeat') this.send(this.targetsDatagram(reg, this.opts.directory.all()), from);
  }

  private register(msg: ControlMessage<'register'>, from: dgram.RemoteInfo): void {
    // The nonce is used up whatever follows: a register refused for its ports cannot be retried as is.
    const refused = this.challenges.redeem(msg.nonce, from);
    if (refused) return this.drop(refused, 'register', from);
    if (this.registrations.size >= MAX_REGISTRATIONS) return this.drop('full', `${MAX_REGISTRATIONS} registrations`, from);
    const served = this.opts.dvipaPorts();
    const foreign = msg.ports.filter((p) => !served.includes(p));
    if (foreign.length) return this.drop('port', `ports ${foreign.join(',')} are not DVIPA ports`, from);
    const reg: Registration = {
      id: randomBytes(8).toString('hex'),
      role: msg.role,
      app: msg.app,
      instance: msg.instance ?? msg.app,
      address: from.address,
      port: from.port,
      lastSeen: Date.now(),
      n: 0,
      pushed: 0,
    };
    this.registrations.set(reg.id, reg);
    this.opts.log.info({ app: reg.app, instance: reg.instance, role: reg.role, ports: msg.ports, capacity: msg.capacity ?? 0 }, 'application registered');
    this.send(this.encode('registered', { id: reg.id, nonce: msg.nonce, node: this.opts.node, heartbeatMs: HEARTBEAT_MS, expiryMs: EXPIRY_MS }), from);
    if (reg.role === 'target') this.applications.list(reg.id, reg.instance, { app: reg.app, ports: msg.ports, load: msg.load ?? 0 }, msg.capacity);
    else this.send(this.targetsDatagram(reg, this.opts.directory.all()), from);
  }

  private sweep(): void {
    this.challenges.sweep();
    const now = Date.now();
    for (const reg of this.registrations.values()) {
      if (now - reg.lastSeen <= EXPIRY_MS) continue;
      this.registrations.delete(reg.id);
      this.opts.log.warn({ app: reg.app, instance: reg.instance, role: reg.role }, 'registration expired (no heartbeat)');
      this.applications.unlist(reg.id);
    }
  }

  /**
   * Sets an instance's weight or drains it (REST API). The change reaches every routing
   * application in the cluster like any load change. Not persisted: a restarted batond starts
   * from weight 100, not draining.
   */
  setOperatorState(instance: string, change: { weight?: number; draining?: boolean }): TargetInfo[] {
    if (!this.applications.isListed(instance)) throw new BatonError('E_NOT_FOUND', `no target instance ${instance} is registered on ${this.opts.node}`, { node: this.opts.node, step: 'target' });
    const now = this.applications.setOperator(instance, change);
    this.opts.log.info({ instance, ...now }, 'target instance changed by the operator');
    return this.opts.directory.local().filter((t) => t.instance === instance);
  }

  /** Registrations by role, and control datagrams dropped by reason. */
  counts(): { routers: number; targets: number; dropped: Record<string, number> } {
    const regs = [...this.registrations.values()];
    return { routers: regs.filter((r) => r.role === 'router').length, targets: regs.filter((r) => r.role === 'target').length, dropped: Object.fromEntries(this.dropped) };
  }

  private publishLocal(): void {
    this.opts.directory.setLocal(this.applications.advertised(this.opts.node));
  }

  /** The list for one routing application: its id and the next of its counter make each one unique. */
  private targetsDatagram(reg: Registration, all: TargetInfo[]): Buffer {
    return this.encode('targets', { id: reg.id, n: ++reg.pushed, seq: this.opts.directory.seq, targets: all });
  }

  private pushTargets(all: TargetInfo[]): void {
    for (const reg of this.registrations.values()) if (reg.role === 'router') this.send(this.targetsDatagram(reg, all), reg);
  }

  private send(buf: Buffer, to: { address: string; port: number }): void {
    // The directory may still change after close (a peer's report): nothing goes out then.
    if (this.closed) return;
    // A targets list of more instances than one datagram holds (about 470: docs/protocol.md) is
    // not sent; the routing applications keep the list they had. Said plainly, not as EMSGSIZE,
    // and sparsely: every heartbeat of every router would repeat it.
    if (buf.length > MAX_DATAGRAM_BYTES) {
      if (logSparsely(++this.oversized)) this.opts.log.error({ bytes: buf.length, max: MAX_DATAGRAM_BYTES, instances: this.opts.directory.all().length, oversized: this.oversized }, 'targets list too large for one control datagram: not sent, routing applications keep the list they had');
      return;
    }
    this.socket.send(buf, to.port, to.address, (err) => {
      if (err && logSparsely(++this.unsent)) this.opts.log.warn({ to: `${to.address}:${to.port}`, err: err.message, unsent: this.unsent }, 'control datagram not sent');
    });
  }
}
