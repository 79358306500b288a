// The stream links' receive path under input that used to stop a node (issue: one frame whose
// type is an array nested 30,700 deep made decodeMessage stringify it and overflow the stack, and
// Channel rethrew that out of the socket's 'data' handler: the process died). Every such input
// must be refused and counted on its link, and an exception a listener throws on a message must
// close that link only, counted in baton_input_errors_total.
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { inputErrors } from '../../../controller/input.js';
import { createLogger } from '../../../controller/log.js';
import { Channel, channelRejections } from '../../../controller/transfer/channel.js';
import { Accepts, type MessageType } from '../../../controller/transfer/messages.js';
import { useTcpPairs } from '../../helpers/loopback.js';

const log = createLogger({}, 'silent');

function frame(headerJson: string | Buffer): Buffer {
  const json = Buffer.isBuffer(headerJson) ? headerJson : Buffer.from(headerJson);
  const prefix = Buffer.alloc(8);
  prefix.writeUInt32BE(4 + json.length, 0);
  prefix.writeUInt32BE(json.length, 4);
  return Buffer.concat([prefix, json]);
}

/** The datagram of the issue, as a frame header: {"type": 30,700 '[' then 30,700 ']'}. */
const ISSUE_HEADER = `{"type":${'['.repeat(30_700)}${']'.repeat(30_700)}}`;

const pair = useTcpPairs();

async function link<In extends MessageType>(accepts: readonly In[]): Promise<{ client: net.Socket; channel: Channel<In> }> {
  const { client, server } = await pair();
  return { client, channel: new Channel(server, accepts, log, 'peer') };
}

function uncaught(): { errors: unknown[]; stop(): void } {
  const errors: unknown[] = [];
  const on = (e: unknown) => errors.push(e);
  process.on('uncaughtException', on);
  return { errors, stop: () => process.off('uncaughtException', on) };
}

describe('Channel: input that stopped a node', () => {
  it("the issue's frame (type nested 30,700 deep) is refused at framing and counted; nothing escapes the handler", async () => {
    const watch = uncaught();
    const { client, channel } = await link(Accepts.agentFromPeer);
    const before = channelRejections();
    const got: string[] = [];
    channel.on('message', (d) => got.push(d.msg.type));
    const hello = JSON.stringify({ v: 1, type: 'hello', role: 'peer', name: 'n2' });
    client.write(Buffer.concat([frame(ISSUE_HEADER), frame(hello)]));
    await new Promise((r) => setTimeout(r, 100));
    watch.stop();
    expect(watch.errors).toEqual([]);
    // Nested past the header bound: refused by the decoder before anything stringifies it. The
    // byte stream is intact, but a frame refused at framing closes the link (it cannot be trusted).
    const after = channelRejections();
    expect(after.framing - before.framing).toBe(1);
    expect(channel.isClosed).toBe(true);
    expect(got).toEqual([]);
    client.destroy();
  });

  it('a type nested just within the header bound is refused as unexpected-type, described, not stringified', async () => {
    const watch = uncaught();
    const { client, channel } = await link(Accepts.agentFromPeer);
    const before = channelRejections();
    client.write(frame(`{"type":${'['.repeat(60)}${']'.repeat(60)}}`));
    client.write(frame(JSON.stringify({ v: 1, type: 'hello', role: 'peer', name: 'n2' })));
    const got = await new Promise<string>((r) => channel.once('message', (d) => r(d.msg.type)));
    watch.stop();
    expect(watch.errors).toEqual([]);
    expect(got).toBe('hello');
    expect(channelRejections()['unexpected-type'] - before['unexpected-type']).toBe(1);
    expect(channel.isClosed).toBe(false);
    channel.close();
    client.destroy();
  });

  it('a listener that throws on a message closes that link only, counted as an input error of its source', async () => {
    const watch = uncaught();
    const { client, channel } = await link(Accepts.agentFromPeer);
    const other = await link(Accepts.agentFromPeer);
    const before = inputErrors().peer;
    channel.on('message', () => {
      throw new RangeError('Maximum call stack size exceeded');
    });
    const closed = new Promise<Error | undefined>((r) => channel.once('close', r));
    client.write(frame(JSON.stringify({ v: 1, type: 'hello', role: 'peer', name: 'n2' })));
    const err = await closed;
    watch.stop();
    expect(watch.errors).toEqual([]);
    expect(err?.message).toMatch(/input handler failed: Maximum call stack size exceeded/);
    expect(inputErrors().peer - before).toBe(1);
    expect(other.channel.isClosed).toBe(false);
    other.channel.close();
    other.client.destroy();
    client.destroy();
  });
});
