// The application's link to its node's batond: a Unix stream socket carrying the same framed,
// schema-checked messages as the node↔node links.
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { BatonError } from '../errors.js';
import { errorText } from '../input.js';
import { createLogger, type Logger } from '../log.js';
import { ControlLink, type ControlOptions, type Registration } from './control-link.js';
import { Channel } from '../transfer/channel.js';
import type { Body, Decoded, Message, MessageType } from '../transfer/messages.js';
import { channelPeerPid, type DescriptorLink, LinkInbox } from '../transfer/fd-exchange.js';

export interface AgentLinkOptions {
  /** batond's application socket on this node (cluster config: nodes[].agentSocket). */
  socketPath: string;
  /** This application's name, shown in the agent's logs and records. */
  name: string;
  logger?: Logger;
  connectTimeoutMs?: number;
  /** The node's control socket: registers the application and (routers) keeps the target list current. */
  control?: ControlOptions;
}

/** What an application says of itself in its hello. */
export type AppHello = Omit<Body<'hello'>, 'name' | 'fdAddress'> & { role: 'router' | 'target' };

export interface AgentLink<In extends MessageType> {
  channel: Channel<In>;
  /** The node batond runs on. */
  node: string;
  /** Socket descriptors to and from batond (fd-exchange.ts); closed with the channel. */
  descriptors: DescriptorLink;
  /** batond's handoff step timeout (welcome), if it said. */
  handoffStepTimeoutMs?: number;
  /**
   * Delivers batond's messages to handler: first those that came since the welcome (batond may
   * offer a connection before the application has finished starting), then the rest as they come.
   */
  listen(handler: (d: Decoded<In>) => void): void;
  log: Logger;
}

/**
 * Connects to batond, connects the inbox to batond's descriptor socket (fd-exchange.ts) and says
 * hello with the inbox's address; batond sends the descriptor link there before its welcome.
 */
export async function openAgentLink<In extends MessageType>(opts: AgentLinkOptions, accepts: readonly In[], hello: AppHello, inbox: LinkInbox): Promise<AgentLink<In>> {
  const log = opts.logger ?? createLogger({ app: opts.name });
  const timeoutMs = opts.connectTimeoutMs ?? 5000;
  return new Promise((resolve, reject) => {
    const socket = net.connect({ path: opts.socketPath });
    const channel = new Channel<In>(socket, accepts, log, 'sdk');
    const timer = setTimeout(() => {
      channel.close();
      reject(new BatonError('E_PEER', `batond at ${opts.socketPath} did not welcome us within ${timeoutMs} ms`, { step: 'hello' }));
    }, timeoutMs);
    const onClose = (err?: Error) => {
      clearTimeout(timer);
      reject(new BatonError('E_PEER', `cannot reach batond at ${opts.socketPath}${err ? `: ${err.message}` : ''}`, { step: 'hello' }));
    };
    channel.once('close', onClose);
    channel.on('message', function onWelcome(d) {
      if (d.msg.type !== 'welcome') return;
      clearTimeout(timer);
      channel.off('message', onWelcome);
      channel.off('close', onClose);
      const { node, handoffStepTimeoutMs } = d.msg as Message<'welcome'>;
      let descriptors: DescriptorLink | undefined;
      try {
        descriptors = inbox.accept(channelPeerPid(socket));
      } catch (err) {
        log.error({ err: (err as Error).message }, 'cannot take the descriptor link');
      }
      if (!descriptors) {
        channel.close();
        reject(new BatonError('E_PROTOCOL', `batond at ${opts.socketPath} sent no descriptor link with its welcome`, { step: 'hello', node }));
        return;
      }
      const link = descriptors;
      channel.once('close', () => link.close());
      // Kept until the application listens: a transferred connection dropped here would be lost.
      const early: Array<Decoded<In>> = [];
      const keep = (m: Decoded<In>) => early.push(m);
      channel.on('message', keep);
      const listen = (handler: (m: Decoded<In>) => void) => {
        channel.off('message', keep);
        for (const m of early.splice(0)) handler(m);
        channel.on('message', handler);
      };
      // A caller's logger already says where it runs; ours learns it from the welcome.
      resolve({ channel, node, descriptors, handoffStepTimeoutMs, listen, log: opts.logger ? log : log.child({ node }) });
    });
    socket.once('connect', () => {
      // Before every hello (a restarted batond has a new descriptor socket): only this batond may
      // queue anything on the inbox from now on, and what strangers queued before is gone.
      try {
        inbox.connectTo(opts.socketPath);
      } catch (err) {
        channel.off('close', onClose);
        clearTimeout(timer);
        channel.close();
        reject(new BatonError('E_PEER', `cannot reach batond's descriptor socket beside ${opts.socketPath}: ${errorText(err)}`, { step: 'hello' }));
        return;
      }
      channel.send('hello', { ...hello, name: opts.name, fdAddress: inbox.address });
    });
  });
}

/**
 * Everything an application opens when it starts: its descriptor inbox, the link to batond, and
 * (with opts.control) its registration on the control socket. What was opened is closed again when
 * a later step fails.
 */
export async function openApplication<In extends MessageType>(
  opts: AgentLinkOptions,
  accepts: readonly In[],
  hello: AppHello,
  registration: Registration,
): Promise<{ link: AgentLink<In>; inbox: LinkInbox; control?: ControlLink }> {
  const inbox = new LinkInbox(opts.logger ?? createLogger({ app: opts.name }));
  let link: AgentLink<In> | undefined;
  try {
    link = await openAgentLink(opts, accepts, hello, inbox);
    const control = opts.control ? await ControlLink.open(opts.control, registration, link.log) : undefined;
    return { link, inbox, control };
  } catch (err) {
    link?.channel.close();
    inbox.close();
    throw err;
  }
}

/**
 * Re-opens an application's link whenever it drops (batond restarted or was upgraded), with a
 * backoff from 100 ms to 1 s, until stopped. attach() gets every new channel: the client re-wires
 * its listeners there, and the fresh hello registers the application again.
 */
export class AgentLinkKeeper<In extends MessageType> {
  private stopped = false;

  constructor(
    private readonly opts: AgentLinkOptions,
    private readonly accepts: readonly In[],
    private readonly hello: AppHello,
    private readonly inbox: LinkInbox,
    private readonly log: Logger,
    private readonly attach: (link: AgentLink<In>) => void,
  ) {}

  watch(channel: Channel<In>): void {
    channel.once('close', () => {
      if (this.stopped) return;
      this.log.warn('link to batond lost: reconnecting');
      void this.reopen();
    });
  }

  stop(): void {
    this.stopped = true;
  }

  private async reopen(): Promise<void> {
    for (let delay = 100; !this.stopped; delay = Math.min(delay * 2, 1000)) {
      await sleep(delay);
      try {
        const link = await openAgentLink({ ...this.opts, logger: this.log }, this.accepts, this.hello, this.inbox);
        if (this.stopped) {
          link.channel.close();
          return;
        }
        this.attach(link);
        this.watch(link.channel);
        this.log.info('link to batond re-established');
        return;
      } catch (err) {
        this.log.debug({ err: (err as Error).message }, 'batond not reachable yet');
      }
    }
  }
}
