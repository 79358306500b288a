import { describe, expect, it } from 'vitest';
import { encodeFrame, FrameDecoder } from '../../../controller/transfer/framing.js';

const bytes = (parts: Buffer[]) => Buffer.concat(parts);

describe('frame codec', () => {
  it('round-trips a header and its blobs, whatever the chunking', () => {
    const blobs = [Buffer.from('send-queue'), Buffer.alloc(0), Buffer.from([0, 1, 2, 255])];
    const wire = bytes([...encodeFrame({ type: 'x', n: 1 }, blobs), ...encodeFrame({ type: 'y' })]);
    for (const step of [1, 3, 7, wire.length]) {
      const d = new FrameDecoder();
      const frames = [];
      for (let i = 0; i < wire.length; i += step) frames.push(...d.push(wire.subarray(i, i + step)));
      expect(frames).toHaveLength(2);
      expect(frames[0]!.header).toEqual({ type: 'x', n: 1, blobs: [10, 0, 4] });
      expect(frames[0]!.blobs).toEqual(blobs);
      expect(frames[1]!.header).toEqual({ type: 'y' });
      expect(frames[1]!.blobs).toEqual([]);
    }
  });

  it('rejects a frame longer than the limit before buffering it', () => {
    const d = new FrameDecoder(1024);
    const prefix = Buffer.alloc(4);
    prefix.writeUInt32BE(1025);
    expect(() => d.push(prefix)).toThrow(/frame length 1025 outside/);
  });

  it('rejects a header length that overruns the frame', () => {
    const b = Buffer.alloc(12);
    b.writeUInt32BE(8, 0);
    b.writeUInt32BE(100, 4);
    expect(() => new FrameDecoder().push(b)).toThrow(/does not fit/);
  });

  it('rejects invalid JSON, non-object headers and lying blob lengths', () => {
    const frame = (json: string, extra = Buffer.alloc(0)) => {
      const j = Buffer.from(json);
      const p = Buffer.alloc(8);
      p.writeUInt32BE(4 + j.length + extra.length, 0);
      p.writeUInt32BE(j.length, 4);
      return Buffer.concat([p, j, extra]);
    };
    expect(() => new FrameDecoder().push(frame('{nope'))).toThrow(/frame header refused \(not-json\)/);
    expect(() => new FrameDecoder().push(frame('[1,2]'))).toThrow(/must be a JSON object/);
    expect(() => new FrameDecoder().push(frame('{"blobs":[5]}', Buffer.from('abc')))).toThrow(/declares 5 bytes but the frame carries 3/);
    expect(() => new FrameDecoder().push(frame('{"blobs":[-1]}'))).toThrow(/non-negative integers/);
  });
});
