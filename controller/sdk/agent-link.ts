// The application's link to its node's batond: a Unix stream socket carrying the same framed,
// schema-checked messages as the node↔node links.
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { BatonError } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import type { ControlOptions } from './control-link.js';
import { Channel } from '../transfer/channel.js';
import type { MessageType } from '../transfer/messages.js';

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

export async function openAgentLink<In extends MessageType>(
  opts: AgentLinkOptions,
  accepts: readonly In[],
  hello: { role: 'router' | 'target'; ports?: number[]; instance?: string },
): Promise<{ channel: Channel<In>; node: string; log: Logger }> {
  const log = opts.logger ?? createLogger({ app: opts.name });
  const timeoutMs = opts.connectTimeoutMs ?? 5000;
  return new Promise((resolve, reject) => {
    const socket = net.connect({ path: opts.socketPath });
    const channel = new Channel<In>(socket, accepts, log);
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
      const node = (d.msg as { node: string }).node;
      // A caller's logger already says where it runs; ours learns it from the welcome.
      resolve({ channel, node, log: opts.logger ? log : log.child({ node }) });
    });
    socket.once('connect', () =>
      channel.send('hello', { role: hello.role, name: opts.name, ...(hello.ports ? { ports: hello.ports } : {}), ...(hello.instance ? { instance: hello.instance } : {}) }),
    );
  });
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
    private readonly hello: { role: 'router' | 'target'; ports?: number[]; instance?: string },
    private readonly log: Logger,
    private readonly attach: (channel: Channel<In>) => void,
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
        const { channel } = await openAgentLink({ ...this.opts, logger: this.log }, this.accepts, this.hello);
        if (this.stopped) {
          channel.close();
          return;
        }
        this.attach(channel);
        this.watch(channel);
        this.log.info('link to batond re-established');
        return;
      } catch (err) {
        this.log.debug({ err: (err as Error).message }, 'batond not reachable yet');
      }
    }
  }
}
