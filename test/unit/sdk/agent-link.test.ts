// What batond says right after its welcome reaches the application even though the SDK is still
// starting (registering on the control socket, building its client): an offer or a live
// connection dropped there would be lost. A scripted batond sends its welcome and an offer in one
// write; the TargetClient must answer the offer. Loopback and Unix sockets only.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../../controller/log.js';
import { TargetClient, type TransferOffer } from '../../../controller/sdk/target.js';
import { Channel } from '../../../controller/transfer/channel.js';
import { LinkMaker } from '../../../controller/transfer/fd-exchange.js';
import { Accepts, type Decoded, type MessageType } from '../../../controller/transfer/messages.js';

const log = createLogger({}, 'silent');
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

describe('the application link', () => {
  it('keeps what batond sends right after its welcome until the client listens', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'early-agent-'));
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const socketPath = path.join(dir, 'agent.sock');
    const links = new LinkMaker(log);
    cleanups.push(() => links.close());
    const answers: Array<Decoded<MessageType>['msg']> = [];
    const agent = net.createServer((s) => {
      const ch = new Channel(s, Accepts.agentFromTarget, log);
      ch.on('message', (d) => {
        if (d.msg.type === 'hello') {
          const link = links.make(d.msg.fdAddress!);
          cleanups.push(() => link.close());
          // One write: the offer arrives in the same chunk as the welcome.
          ch.send('welcome', { node: 'n2' });
          ch.send('decide', { connId: 'n1.early', from: 'n1', client: { address: '10.0.0.1', port: 40000 }, appState: { user: 'alice' } }, [Buffer.from('GET')]);
          return;
        }
        answers.push(d.msg);
      });
    });
    await new Promise<void>((resolve) => agent.listen(socketPath, resolve));
    cleanups.push(() => new Promise((resolve) => agent.close(resolve)));

    const asked: TransferOffer[] = [];
    const target = await TargetClient.connect({ socketPath, name: 'early', ports: [7000], logger: log, onOffer: (o) => (asked.push(o), { accept: true }) }, () => undefined);
    cleanups.push(() => target.close());
    for (let waited = 0; answers.length === 0 && waited < 2000; waited += 10) await new Promise((r) => setTimeout(r, 10));
    expect(asked.map((o) => ({ connId: o.connId, peeked: o.peeked.toString(), appState: o.appState }))).toEqual([{ connId: 'n1.early', peeked: 'GET', appState: { user: 'alice' } }]);
    expect(answers).toMatchObject([{ type: 'decided', connId: 'n1.early', accept: true }]);
  });
});
