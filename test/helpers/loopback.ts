// Both ends of real TCP connections on loopback, for tests of the stream links (Channel): one
// server for the calling test file, torn down after its tests.
import net from 'node:net';
import { afterAll, beforeAll } from 'vitest';

export interface TcpPair {
  /** The connecting end, writing whatever a test sends; its errors (a peer that closed) are ignored. */
  client: net.Socket;
  /** The accepted end, for the code under test. */
  server: net.Socket;
}

/** A function that opens a fresh connected pair; the server lives from beforeAll to afterAll. */
export function useTcpPairs(): () => Promise<TcpPair> {
  let server: net.Server;
  const accepted: net.Socket[] = [];
  const waiting: Array<(s: net.Socket) => void> = [];
  beforeAll(async () => {
    server = net.createServer((s) => {
      const w = waiting.shift();
      if (w) w(s);
      else accepted.push(s);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));
  return async () => {
    const serverSide = new Promise<net.Socket>((resolve) => {
      const s = accepted.shift();
      if (s) resolve(s);
      else waiting.push(resolve);
    });
    const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    client.on('error', () => {});
    await new Promise<void>((r) => client.once('connect', () => r()));
    return { client, server: await serverSide };
  };
}
