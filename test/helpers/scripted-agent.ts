// A batond stand-in for SDK tests: an application socket in a temporary directory that welcomes
// each application the way batond does (its descriptor socket bound beside the application socket,
// the descriptor link sent from there to the inbox the hello names, then the welcome) and hands every later message to the test's script. close() removes it all.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createLogger } from '../../controller/log.js';
import { Channel } from '../../controller/transfer/channel.js';
import { type DescriptorLink, LinkMaker } from '../../controller/transfer/fd-exchange.js';
import type { Body, Decoded, MessageType } from '../../controller/transfer/messages.js';

export interface ScriptedAgent {
  socketPath: string;
  close(): Promise<void>;
}

export async function scriptedAgent<In extends MessageType>(
  accepts: readonly In[],
  welcome: Body<'welcome'>,
  script: (d: Decoded<In>, channel: Channel<In>, descriptors: DescriptorLink) => void,
  /** Sent right after the welcome, in the same write (what batond may do while the application starts). */
  afterWelcome?: (channel: Channel<In>) => void,
): Promise<ScriptedAgent> {
  const log = createLogger({}, 'silent');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'scripted-agent-'));
  const socketPath = path.join(dir, 'agent.sock');
  const links = new LinkMaker(log, socketPath);
  const made: DescriptorLink[] = [];
  const server = net.createServer((s) => {
    const channel = new Channel<In>(s, accepts, log);
    let descriptors: DescriptorLink | undefined;
    channel.on('message', (d) => {
      const msg = d.msg as { type: string; fdAddress?: string };
      if (msg.type === 'hello') {
        descriptors = links.make(msg.fdAddress!);
        made.push(descriptors);
        channel.send('welcome', welcome);
        afterWelcome?.(channel);
        return;
      }
      script(d, channel, descriptors!);
    });
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return {
    socketPath,
    async close() {
      await new Promise((resolve) => server.close(resolve));
      for (const link of made) link.close();
      links.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
