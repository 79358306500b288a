// A message as the receiving side of a link gets it: encoded and framed by the real encoder, then
// decoded by the real frame decoder and decodeMessage with that side's Accepts. A test that builds
// its messages this way cannot hand the code under test one no peer could make it accept.
import { encodeFrame, FrameDecoder } from '../../controller/transfer/framing.js';
import { type Body, type Decoded, decodeMessage, header, type MessageType } from '../../controller/transfer/messages.js';

export function fromWire<K extends MessageType>(type: K, body: Body<K>, side: readonly MessageType[], blobs: Buffer[] = []): Decoded<K> {
  const frames = new FrameDecoder().push(Buffer.concat(encodeFrame(header(type, body), blobs)));
  const d = decodeMessage(frames[0]!, side);
  if (d.msg.type !== type) throw new Error(`sent ${type}, decoded ${d.msg.type}`);
  return d as Decoded<K>;
}
