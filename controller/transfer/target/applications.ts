// The node's one registry of its target applications, by instance name (the application's name
// when it gives none, as on the control socket). An application may register on two sockets, and
// each contributes its part for as long as that socket keeps it:
//
//   link      the agent socket's hello: where batond hands it connections (its ports, whether it
//             decides on offers, its channel and descriptor link), while that stream is open.
//             Offers pick among links (pick).
//   listings  the control socket's registrations: what routing applications are shown (ports,
//             load), while its heartbeats come (control/server.ts). An instance may be listed with
//             no link (a discovery-only client, such as examples/clients/control_client.py) and
//             linked with no listing (an SDK not given the control socket).
//   capacity  one number: the last the instance declared in either place (hello, register,
//             update). batond refuses offers beyond it (the cluster's limits.targetCapacity when it
//             declared none), and routing applications are shown it (0 when it declared none).
//   operator  an operator's weight and drain (REST API), which outlive the instance re-registering.
//
// Both sockets' servers write here and read from here: the target relay picks a link for an
// offer and bounds it by the capacity; the control server publishes the listings to the
// cluster's target directory on every change (the 'change' event).
import { EventEmitter } from 'node:events';
import type { Channel } from '../channel.js';
import type { TargetInfo } from '../../control/messages.js';
import type { Accepts } from '../messages.js';

type FromTarget = (typeof Accepts.agentFromTarget)[number];

/** A target application's link: what its hello on the agent socket registered. */
export interface TargetApp {
  name: string;
  /** The instance name offers may ask for (the one it lists on the control socket). */
  instance?: string;
  ports: number[];
  channel: Channel<FromTarget>;
  /** Where its transferred sockets' descriptors go (its descriptor link, fd-exchange.ts). */
  descriptors: { send(fd: number, connId: string): void };
  /** It answers each offer itself (decide → decided); otherwise batond accepts up to capacity. */
  decides: boolean;
  /** The capacity its hello declared: 0 no limit; absent, none declared (see the registry's capacity). */
  capacity?: number;
}

/** One control-socket registration of a target instance. */
export interface TargetListing {
  app: string;
  ports: number[];
  load: number;
}

export interface OperatorSetting {
  /** Relative share of new connections routing applications give it; 0 takes none. */
  weight: number;
  draining: boolean;
}

const OPERATOR_DEFAULT: OperatorSetting = { weight: 100, draining: false };

/** What the registry reads of a link: who it is, its ports, the capacity it declared. */
export type LinkIdentity = Pick<TargetApp, 'name' | 'instance' | 'ports' | 'capacity'>;

interface Entry<A> {
  link?: A;
  /** By control registration id. */
  listings: Map<string, TargetListing>;
  capacity?: number;
}

/** The registry key of a link: its instance, or its name when it gave none. */
export const instanceOf = (app: Pick<TargetApp, 'name' | 'instance'>): string => app.instance ?? app.name;

export class TargetApplications<A extends LinkIdentity = TargetApp> extends EventEmitter<{ change: [] }> {
  private readonly entries = new Map<string, Entry<A>>();
  /** Links by the ports they registered, oldest first: an offer naming no instance gets the first. */
  private readonly byPort = new Map<number, A[]>();
  /** The instance each control registration id lists. */
  private readonly listed = new Map<string, string>();
  private readonly operator = new Map<string, OperatorSetting>();

  private entry(instance: string): Entry<A> {
    let e = this.entries.get(instance);
    if (!e) {
      e = { listings: new Map() };
      this.entries.set(instance, e);
    }
    return e;
  }

  private forgetIfEmpty(instance: string, e: Entry<A>): void {
    if (!e.link && e.listings.size === 0) this.entries.delete(instance);
  }

  /** The application's link; one the same instance had before is replaced (its offers in flight are its own business). */
  link(app: A): void {
    const e = this.entry(instanceOf(app));
    if (e.link && e.link !== app) this.dropPorts(e.link);
    e.link = app;
    for (const port of app.ports) this.byPort.set(port, [...(this.byPort.get(port) ?? []), app]);
    if (app.capacity !== undefined) this.declare(e, app.capacity);
  }

  /** The link closed. A link another of its instance replaced is only taken off its ports (already done). */
  unlink(app: A): void {
    this.dropPorts(app);
    const instance = instanceOf(app);
    const e = this.entries.get(instance);
    if (!e || e.link !== app) return;
    e.link = undefined;
    this.forgetIfEmpty(instance, e);
  }

  private dropPorts(app: A): void {
    for (const port of app.ports) {
      const apps = (this.byPort.get(port) ?? []).filter((a) => a !== app);
      if (apps.length) this.byPort.set(port, apps);
      else this.byPort.delete(port);
    }
  }

  /** The link an offer is for: the instance it asks for, or the first on the port when it names none. */
  pick(port: number, instance?: string): A | undefined {
    if (instance === undefined) return this.byPort.get(port)?.[0];
    const link = this.entries.get(instance)?.link;
    return link?.ports.includes(port) ? link : undefined;
  }

  /** The capacity the application's instance declared last, on either socket; undefined when none. */
  capacity(app: A): number | undefined {
    return this.entries.get(instanceOf(app))?.capacity;
  }

  private declare(e: Entry<A>, capacity: number): void {
    if (e.capacity === capacity) return;
    e.capacity = capacity;
    if (e.listings.size > 0) this.emit('change');
  }

  /** A control registration (id) lists the instance. */
  list(id: string, instance: string, listing: TargetListing, capacity?: number): void {
    const e = this.entry(instance);
    e.listings.set(id, listing);
    this.listed.set(id, instance);
    if (capacity !== undefined) e.capacity = capacity;
    this.emit('change');
  }

  /** A listed instance's update: its load, or a capacity it declares anew. */
  update(id: string, change: { capacity?: number; load?: number }): void {
    const instance = this.listed.get(id);
    const e = instance === undefined ? undefined : this.entries.get(instance);
    const listing = e?.listings.get(id);
    if (!e || !listing) return;
    if (change.load !== undefined) listing.load = change.load;
    if (change.capacity !== undefined) e.capacity = change.capacity;
    this.emit('change');
  }

  /** The registration is gone (unregistered, or its heartbeats stopped). */
  unlist(id: string): void {
    const instance = this.listed.get(id);
    if (instance === undefined) return;
    this.listed.delete(id);
    const e = this.entries.get(instance);
    if (!e) return;
    e.listings.delete(id);
    this.forgetIfEmpty(instance, e);
    this.emit('change');
  }

  isListed(instance: string): boolean {
    return (this.entries.get(instance)?.listings.size ?? 0) > 0;
  }

  /** Sets an instance's weight or drain; what it is now. */
  setOperator(instance: string, change: Partial<OperatorSetting>): OperatorSetting {
    const current = this.operator.get(instance) ?? OPERATOR_DEFAULT;
    const next = { weight: change.weight ?? current.weight, draining: change.draining ?? current.draining };
    this.operator.set(instance, next);
    this.emit('change');
    return next;
  }

  /** What routing applications are shown of this node's listed instances: one row per listing and port. */
  advertised(node: string): TargetInfo[] {
    return [...this.entries].flatMap(([instance, e]) => {
      const { weight, draining } = this.operator.get(instance) ?? OPERATOR_DEFAULT;
      return [...e.listings.values()].flatMap((l) => l.ports.map((port) => ({ node, app: l.app, instance, port, capacity: e.capacity ?? 0, load: l.load, weight, draining })));
    });
  }
}
