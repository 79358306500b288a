// The question a distributor taking over asks every node (controller/ha/served.ts): `served`,
// answered by pages of one dump (`serving`), over two real Channels on a loopback TCP connection
// wired as batond wires them (the asker's replies claimed by connection id). A dump larger than a
// page arrives whole and in order; a node that cannot dump, a malformed page, too many pages or
// silence fail the question with the node named, and leave no claim behind.
import { afterEach, describe, expect, it } from 'vitest';
import { BatonError } from '../../../controller/errors.js';
import { connectionId, type FlowKey } from '../../../controller/flow.js';
import { answerServed, askServed, type Served, SERVING_MAX_FLOWS, SERVING_PAGE, servedAsker } from '../../../controller/ha/served.js';
import { createLogger } from '../../../controller/log.js';
import { Channel, PendingReplies } from '../../../controller/transfer/channel.js';
import { Accepts, type Message } from '../../../controller/transfer/messages.js';
import type { PeerLinks } from '../../../controller/transfer/peers.js';
import { useTcpPairs } from '../../helpers/loopback.js';

const log = createLogger({}, 'silent');
const tcpPair = useTcpPairs();
const open: Array<{ close(): void }> = [];
afterEach(() => {
  for (const o of open.splice(0)) o.close();
});

const flow = (i: number, vip = '10.0.0.10'): FlowKey => ({ family: 4, clientAddress: `10.1.${(i >> 8) & 255}.${i & 255}`, clientPort: 1024 + (i % 60000), vipAddress: vip, vipPort: 7000 });
const served = (n: number, vip?: string): Served[] => Array.from({ length: n }, (_, i) => ({ flow: flow(i, vip), state: i % 5 === 0 ? 'TIME_WAIT' : 'ESTABLISHED' }));

/**
 * The asker's link (as PeerLinks makes it) and the node's end, which answers `served` with
 * answer(msg, send): answerServed over dump by default.
 */
async function link(answer: (msg: Message<'served'>, send: (body: Omit<Message<'serving'>, 'v' | 'type' | 'blobs'>) => void) => void) {
  const { client, server } = await tcpPair();
  const asker = new Channel(client, Accepts.peerReplies, log);
  const node = new Channel(server, Accepts.agentFromPeer, log);
  open.push(asker, node);
  const replies = new PendingReplies<(typeof Accepts.peerReplies)[number]>();
  asker.on('message', (d) => replies.deliver(d));
  asker.on('close', () => replies.failAll(new BatonError('E_PEER', 'link closed', { node: 'n3' })));
  const questions: Array<Message<'served'>> = [];
  node.on('message', (d) => {
    if (d.msg.type !== 'served') return;
    questions.push(d.msg);
    answer(d.msg, (body) => node.send('serving', body));
  });
  return { peer: { channel: asker, replies }, node, questions, replies };
}

describe('served: which DVIPA connections a node serves', () => {
  it('a dump of several pages arrives whole, in order, with each flow\'s state; one dump per address asked', async () => {
    const dumps: string[] = [];
    const dump = (family: 4 | 6, address: string) => {
      dumps.push(`${family}/${address}`);
      return address === '10.0.0.10' ? served(2 * SERVING_PAGE + 7) : served(3, address);
    };
    const { peer, questions } = await link((msg, send) => answerServed(msg, dump, send, log));
    const got = await askServed(peer, 'n3', ['10.0.0.10', '10.0.0.11'], 2000);
    expect(questions).toHaveLength(1);
    expect(dumps).toEqual(['4/10.0.0.10', '4/10.0.0.11']);
    const want = [...served(2 * SERVING_PAGE + 7), ...served(3, '10.0.0.11')];
    expect(got.map((s) => `${connectionId(s.flow)} ${s.state}`)).toEqual(want.map((s) => `${connectionId(s.flow)} ${s.state}`));
  });

  it('a node serving nothing answers one empty last page', async () => {
    const pages: Array<Message<'serving'>> = [];
    const { peer } = await link((msg, send) => answerServed(msg, () => [], (b) => { pages.push(b as Message<'serving'>); send(b); }, log));
    expect(await askServed(peer, 'n3', ['10.0.0.10'], 2000)).toEqual([]);
    expect(pages).toEqual([{ connId: expect.any(String), flows: [], states: [], last: true }]);
  });

  it('a dump that fails, or lists more than a node may report, answers failed: the asker learns nothing from that node', async () => {
    const failing = await link((msg, send) => answerServed(msg, () => { throw new BatonError('E_NATIVE', 'sock_diag: EPERM', { step: 'sock_diag' }); }, send, log));
    await expect(askServed(failing.peer, 'n3', ['10.0.0.10'], 2000)).rejects.toMatchObject({ code: 'E_PEER', context: { node: 'n3', step: 'served' } });
    const huge = await link((msg, send) => answerServed(msg, () => served(SERVING_MAX_FLOWS + 1), send, log));
    await expect(askServed(huge.peer, 'n3', ['10.0.0.10'], 5000)).rejects.toMatchObject({ code: 'E_PEER' });
  });

  it('a malformed page (states not one per flow), too many pages, or silence fail the question; the claim is released each time', async () => {
    const mismatched = await link((msg, send) => send({ connId: msg.connId, flows: [flow(1), flow(2)], states: ['ESTABLISHED'], last: true }));
    await expect(askServed(mismatched.peer, 'n3', ['10.0.0.10'], 2000)).rejects.toMatchObject({ code: 'E_PROTOCOL' });
    // A node that never says last: pages beyond what SERVING_MAX_FLOWS needs are refused.
    const endless = await link((msg, send) => {
      for (let i = 0; i <= SERVING_MAX_FLOWS / SERVING_PAGE + 1; i++) send({ connId: msg.connId, flows: [flow(i)], states: ['ESTABLISHED'], last: false });
    });
    await expect(askServed(endless.peer, 'n3', ['10.0.0.10'], 10_000)).rejects.toMatchObject({ code: 'E_PROTOCOL' });
    const silent = await link(() => undefined);
    const t0 = Date.now();
    await expect(askServed(silent.peer, 'n3', ['10.0.0.10'], 150)).rejects.toMatchObject({ code: 'E_TIMEOUT', context: { node: 'n3' } });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(140);
    // Released: a late page is unsolicited, and the same id could be claimed again.
    const late: Array<Message<'serving'>> = [];
    silent.replies.claim(silent.questions[0]!.connId, { types: ['serving'], receive: (d) => late.push(d.msg as Message<'serving'>), fail: () => undefined });
    expect(late).toEqual([]);
  });

  it('a link that closes mid-answer fails the question', async () => {
    const { peer, node } = await link((msg, send) => {
      send({ connId: msg.connId, flows: [flow(1)], states: ['ESTABLISHED'], last: false });
      setTimeout(() => node.close(), 20);
    });
    await expect(askServed(peer, 'n3', ['10.0.0.10'], 2000)).rejects.toMatchObject({ code: 'E_PEER' });
  });

  it('servedAsker: this node\'s own kernel without a message, others over their link, DVIPAs asked 64 at a time', async () => {
    const dvipas = Array.from({ length: 70 }, (_, i) => `10.0.${i >> 8}.${i & 255}`);
    const local: string[] = [];
    const { peer, questions } = await link((msg, send) => answerServed(msg, (_f, a) => served(1, a), send, log));
    const ask = servedAsker({ get: async () => peer } as unknown as Pick<PeerLinks, 'get'>, 'n2', () => dvipas, (f, a) => {
      local.push(`${f}/${a}`);
      return [];
    }, 2000);
    expect(await ask('n2')).toEqual([]);
    expect(local).toHaveLength(70);
    expect(questions).toHaveLength(0);
    const remote = await ask('n3');
    expect(questions.map((q) => q.addresses.length)).toEqual([64, 6]);
    expect(remote.map((s) => s.flow.vipAddress)).toEqual(dvipas);
  });
});
