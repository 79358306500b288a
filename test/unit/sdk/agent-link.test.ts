// What batond says right after its welcome reaches the application even though the SDK is still
// starting (registering on the control socket, building its client): an offer or a live
// connection dropped there would be lost. A scripted batond sends its welcome and an offer in one
// write; the TargetClient must answer the offer. Loopback and Unix sockets only.
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../../controller/log.js';
import { TargetClient, type TransferOffer } from '../../../controller/sdk/target.js';
import { Accepts, type Decoded, type MessageType } from '../../../controller/transfer/messages.js';
import { scriptedAgent } from '../../helpers/scripted-agent.js';

const log = createLogger({}, 'silent');
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

describe('the application link', () => {
  it('keeps what batond sends right after its welcome until the client listens', async () => {
    const answers: Array<Decoded<MessageType>['msg']> = [];
    // The offer goes in the same write as the welcome: it arrives in the same chunk.
    const agent = await scriptedAgent(
      Accepts.agentFromTarget,
      { node: 'n2' },
      (d) => answers.push(d.msg),
      (ch) => ch.send('decide', { connId: 'n1.early', from: 'n1', client: { address: '10.0.0.1', port: 40000 }, appState: { user: 'alice' } }, [Buffer.from('GET')]),
    );
    cleanups.push(() => agent.close());
    const { socketPath } = agent;

    const asked: TransferOffer[] = [];
    const target = await TargetClient.connect({ socketPath, name: 'early', ports: [7000], logger: log, onOffer: (o) => (asked.push(o), { accept: true }) }, () => undefined);
    cleanups.push(() => target.close());
    for (let waited = 0; answers.length === 0 && waited < 2000; waited += 10) await new Promise((r) => setTimeout(r, 10));
    expect(asked.map((o) => ({ connId: o.connId, peeked: o.peeked.toString(), appState: o.appState }))).toEqual([{ connId: 'n1.early', peeked: 'GET', appState: { user: 'alice' } }]);
    expect(answers).toMatchObject([{ type: 'decided', connId: 'n1.early', accept: true }]);
  });
});
