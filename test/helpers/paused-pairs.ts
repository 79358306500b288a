// Loopback TCP connections whose two ends Node never reads (paused from the start): libuv reading
// a kernel TLS socket would take its records, and fail on a record that is not data, before a
// test's recvRecord does. For native/ktls's tests, with and without kernel TLS.
import net from 'node:net';
import { afterAll, beforeAll } from 'vitest';
import { recvRecord } from '../../native/ktls.js';
import { socketFd } from '../../native/repair.js';
import { until } from './wait.js';

export interface Pair {
  client: net.Socket;
  server: net.Socket;
  clientFd: number;
  serverFd: number;
}

/** Pairs for the calling test file, closed after it. */
export function usePausedPairs(): () => Promise<Pair> {
  let listener: net.Server;
  const accepted: Array<(s: net.Socket) => void> = [];
  const open: net.Socket[] = [];
  beforeAll(async () => {
    listener = net.createServer({ pauseOnConnect: true }, (s) => accepted.shift()?.(s));
    await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r));
  });
  afterAll(async () => {
    for (const s of open) s.destroy();
    await new Promise<void>((r) => listener.close(() => r()));
  });
  return async () => {
    const server = new Promise<net.Socket>((r) => accepted.push(r));
    const client = net.connect({ port: (listener.address() as net.AddressInfo).port, host: '127.0.0.1' });
    client.pause();
    client.on('error', () => {});
    await new Promise<void>((r) => client.once('connect', () => r()));
    const s = await server;
    s.on('error', () => {});
    open.push(client, s);
    return { client, server: s, clientFd: socketFd(client), serverFd: socketFd(s) };
  };
}

/** The next record on fd, waiting for it (bounded). */
export async function record(fd: number): Promise<{ type: number; data: Buffer }> {
  let got: { type: number; data: Buffer } | undefined;
  await until(`a record on fd ${fd}`, () => (got = recvRecord(fd)) !== undefined);
  return got!;
}
