// A channel corks what one tick sends and writes it at the tick's end; flush() writes it at once,
// for a frame the client waits on (live, transferred). A batch sent after a flush in the same tick
// is corked again and leaves at the tick's end, not when the first batch's end-of-tick uncork runs.
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../../controller/log.js';
import { Channel } from '../../../controller/transfer/channel.js';
import { Accepts, type Decoded } from '../../../controller/transfer/messages.js';
import { useTcpPairs } from '../../helpers/loopback.js';
import { until } from '../../helpers/wait.js';

const log = createLogger({}, 'silent');
const pair = useTcpPairs();

describe('Channel.flush', () => {
  it('writes the frames of this tick at once; a later batch in the tick waits for its end; the peer gets all, in order', async () => {
    const { client, server } = await pair();
    const sender = new Channel(client, Accepts.router, log, 'peer');
    const receiver = new Channel(server, Accepts.router, log, 'peer');
    const got: string[] = [];
    receiver.on('message', (d: Decoded<(typeof Accepts.router)[number]>) => got.push((d.msg as { connId: string }).connId));

    const seen: Array<[string, number]> = [];
    sender.send('failed', { connId: 'n1.000000000001', step: 'offer', code: 'E_PEER', reason: 'a' });
    seen.push(['after the first send', client.writableCorked]);
    sender.flush();
    seen.push(['after flush', client.writableCorked]);
    // Runs between the first batch's end-of-tick uncork and the second's.
    process.nextTick(() => seen.push(['between the two end-of-tick uncorks', client.writableCorked]));
    sender.send('failed', { connId: 'n1.000000000002', step: 'offer', code: 'E_PEER', reason: 'b' });
    seen.push(['after the second send', client.writableCorked]);
    await new Promise((r) => setImmediate(r));
    seen.push(['next turn', client.writableCorked]);

    expect(seen).toEqual([
      ['after the first send', 1],
      ['after flush', 0],
      ['after the second send', 1],
      ['between the two end-of-tick uncorks', 1],
      ['next turn', 0],
    ]);
    await until('both frames received', () => got.length === 2, 2000);
    expect(got).toEqual(['n1.000000000001', 'n1.000000000002']);
    sender.close();
    receiver.close();
  });
});
