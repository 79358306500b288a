// The application socket's front door: a local application's link (a Unix stream socket), its hello
// (which makes it a routing or a target application and gives it its descriptor link), and then one
// table (APP_HANDLERS) saying which part of this node handles each message an application may send
// and for which role — exhaustive over the messages the link accepts, so a message type added to
// the protocol does not compile until someone handles it. docs/architecture.md shows the table
// (checked against this one by test/unit/agent/handlers.test.ts).
import type net from 'node:net';
import { BatonError } from '../errors.js';
import { errorText, logSparsely } from '../input.js';
import type { Logger } from '../log.js';
import type { ClusterConfig, NodeConfig } from '../config/cluster.js';
import type { FlowKey } from '../flow.js';
import { Channel, PendingReplies } from '../transfer/channel.js';
import type { DescriptorLink, LinkMaker } from '../transfer/fd-exchange.js';
import type { HandoffCoordinator, RouterConnection } from '../transfer/handoff.js';
import { REQUEST_STEP } from '../transfer/handoff-phases.js';
import { Accepts, type Decoded, type Message } from '../transfer/messages.js';
import type { TargetApp, TargetRelay } from '../transfer/target-relay.js';
import { HELLO_TIMEOUT_MS } from './bounds.js';

type FromRouter = (typeof Accepts.agentFromRouter)[number];
type FromTarget = (typeof Accepts.agentFromTarget)[number];
export type FromApp = FromRouter | FromTarget;
const FROM_APPS = [...new Set<FromApp>([...Accepts.agentFromRouter, ...Accepts.agentFromTarget])];

/** Which part of the node handles each message from an application, and from which role (after the hello, which this file handles). */
export const APP_HANDLERS = {
  hello: { role: 'any', by: 'app-front' },
  handoff: { role: 'router', by: 'handoff-coordinator' },
  closed: { role: 'router', by: 'handoff-coordinator' },
  decided: { role: 'target', by: 'target-relay' },
  moved: { role: 'target', by: 'target-relay' },
  release: { role: 'target', by: 'target-relay' },
} as const satisfies Record<FromApp, { role: 'any' | 'router' | 'target'; by: string }>;

/** One application link, once its hello was taken. */
type AppSession =
  | { role: 'router'; channel: Channel<FromApp>; log: Logger; descriptors: DescriptorLink; router: RouterConnection }
  | { role: 'target'; channel: Channel<FromApp>; log: Logger; descriptors: DescriptorLink; target: TargetApp };

export interface AppFrontParts {
  config: ClusterConfig;
  self: NodeConfig;
  log: Logger;
  relay: TargetRelay;
  /** Ports some DVIPA serves now: the only ones a target application may register for. */
  dvipaPorts(): number[];
  /** Made at start: an application saying hello before has nothing to receive its descriptor link. */
  links(): LinkMaker | undefined;
  coordinator(): HandoffCoordinator | undefined;
  /** A connection served here was closed by its application: its routing-table entry is released. */
  release(flow: FlowKey, connId: string): void;
  /** Keeps the channel to be closed at stop. */
  track(channel: Channel<FromApp>): void;
}

type Handler<K extends FromApp> = (s: AppSession, d: Decoded<K>) => void;

export class AppFront {
  private readonly handlers: { [K in Exclude<FromApp, 'hello'>]: Handler<K> };

  constructor(private readonly p: AppFrontParts) {
    this.handlers = {
      handoff: (s, d) => {
        if (s.role !== 'router') return;
        const fd = s.descriptors.take(d.msg.connId);
        if (fd === undefined) {
          s.log.warn({ connId: d.msg.connId }, 'handoff without the socket descriptor');
          s.router.channel.send('failed', { connId: d.msg.connId, step: REQUEST_STEP, code: 'E_HANDOFF_STATE', reason: 'the socket descriptor did not arrive with the handoff request' });
          return;
        }
        void p.coordinator()!.run(s.router, d, fd);
      },
      closed: (s, d) => {
        if (s.role === 'router') s.router.replies.deliver(d);
      },
      release: (s, d) => {
        if (s.role !== 'target') return;
        const flow = p.relay.released(s.target, d.msg.connId);
        if (flow) p.release(flow, d.msg.connId);
        else s.log.warn({ connId: d.msg.connId }, 'release of a connection this application does not serve');
      },
      decided: (s, d) => {
        if (s.role === 'target') p.relay.fromApp(s.target, d);
      },
      moved: (s, d) => {
        if (s.role === 'target') p.relay.fromApp(s.target, d);
      },
    };
  }

  /** A connection to the application socket: a hello makes it an application, then its messages are served. */
  accept(socket: net.Socket): void {
    const log = this.p.log.child({ app: 'unregistered' });
    const channel = new Channel<FromApp>(socket, FROM_APPS, log, 'app');
    this.p.track(channel);
    let session: AppSession | undefined;
    const helloTimer = setTimeout(() => channel.close(new BatonError('E_PROTOCOL', 'application sent no hello', { step: 'hello' })), HELLO_TIMEOUT_MS);
    channel.on('close', () => {
      clearTimeout(helloTimer);
      if (!session) return;
      session.descriptors.close();
      if (session.role === 'router') session.router.replies.failAll(new BatonError('E_PEER', 'routing application disconnected'));
      else {
        for (const { connId, flow } of this.p.relay.releasedAll(session.target)) this.p.release(flow, connId);
        this.p.relay.unregister(session.target);
      }
    });
    channel.on('message', (d) => {
      const { msg } = d;
      if (msg.type === 'hello') {
        clearTimeout(helloTimer);
        if (session) {
          // The link keeps its session: the close below unregisters what the first hello registered.
          log.error({ role: msg.role, name: msg.name, why: 'a second hello' }, 'application hello refused');
          channel.close();
          return;
        }
        session = this.hello(channel, log, msg);
        if (!session) channel.close();
        return;
      }
      const role = APP_HANDLERS[msg.type].role;
      if (!session || session.role !== role) {
        log.error({ type: msg.type, role: session?.role ?? 'none' }, 'message not allowed for this application role');
        return;
      }
      (this.handlers[msg.type] as Handler<FromApp>)(session, d);
    });
  }

  /** Why a hello cannot be taken, or undefined when it can. */
  private refusal(msg: Message<'hello'>): string | undefined {
    if (msg.role === 'peer') return 'a peer on the application socket';
    if (msg.role === 'target' && !msg.ports) return 'a target without ports';
    if (!msg.fdAddress) return 'no descriptor inbox (fdAddress): an SDK older than the descriptor link';
    if (!this.p.links()) return 'batond is still starting';
    if (msg.role === 'target') {
      const served = this.p.dvipaPorts();
      const foreign = msg.ports!.filter((port) => !served.includes(port));
      if (foreign.length > 0) return `ports ${foreign.join(',')} are not served by any DVIPA (${served.join(',')})`;
    }
    return undefined;
  }

  /** Takes a hello: the session it opens, or undefined (logged) when it is refused. A second hello is refused by the caller. */
  private hello(channel: Channel<FromApp>, log: Logger, msg: Message<'hello'>): AppSession | undefined {
    const why = this.refusal(msg);
    if (why || msg.role === 'peer' || !msg.fdAddress) {
      log.error({ role: msg.role, name: msg.name, why }, 'application hello refused');
      return undefined;
    }
    let descriptors: DescriptorLink;
    try {
      descriptors = this.p.links()!.make(msg.fdAddress);
    } catch (err) {
      log.error({ name: msg.name, inbox: msg.fdAddress, err: errorText(err) }, 'application hello refused: cannot send it the descriptor link');
      return undefined;
    }
    let session: AppSession;
    if (msg.role === 'router') {
      const replies = new PendingReplies<FromRouter>((d, n) => {
        if (logSparsely(n)) log.warn({ connId: (d.msg as { connId?: string }).connId, type: d.msg.type, unsolicited: n }, 'message for no handoff in progress');
      });
      session = { role: 'router', channel, log, descriptors, router: { channel: channel as unknown as RouterConnection['channel'], replies, name: msg.name } };
    } else {
      const target: TargetApp = {
        name: msg.name,
        instance: msg.instance,
        ports: msg.ports!,
        channel: channel as unknown as TargetApp['channel'],
        descriptors,
        decides: msg.decides ?? false,
        // Absent: the last capacity the instance declared on the control socket, else the
        // cluster's limits.targetCapacity (target/admission.ts); 0 says no limit.
        capacity: msg.capacity,
      };
      this.p.relay.register(target);
      session = { role: 'target', channel, log, descriptors, target };
    }
    channel.send('welcome', { node: this.p.self.name, handoffStepTimeoutMs: this.p.config.handoffStepTimeoutMs });
    return session;
  }
}
