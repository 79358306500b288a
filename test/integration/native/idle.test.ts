// The idle bounds batond sets on every connection it reinstates (limits.idle): keepalive probes
// and TCP_USER_TIMEOUT, read back from the kernel with getsockopt on a real TCP socket.
import net from 'node:net';
import koffi from 'koffi';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setIdleBounds, socketFd } from '../../../native/repair.js';
import { idleBounds } from '../../../controller/transfer/sockets.js';

const libc = koffi.load('libc.so.6');
const getsockopt = libc.func('int getsockopt(int fd, int level, int name, _Out_ int *value, _Inout_ uint32_t *len)');
const SOL_SOCKET = 1;
const SO_KEEPALIVE = 9;
const IPPROTO_TCP = 6;
const TCP_KEEPIDLE = 4;
const TCP_KEEPINTVL = 5;
const TCP_KEEPCNT = 6;
const TCP_USER_TIMEOUT = 18;

function opt(fd: number, level: number, name: number): number {
  const value = [0];
  const len = [4];
  expect(getsockopt(fd, level, name, value, len)).toBe(0);
  return value[0]!;
}

let server: net.Server;
let client: net.Socket;
let accepted: net.Socket;

beforeAll(async () => {
  const got = new Promise<net.Socket>((r) => (server = net.createServer(r)));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  accepted = await got;
});
afterAll(() => {
  client.destroy();
  accepted.destroy();
  server.close();
});

describe('idle bounds on a reinstated connection', () => {
  it('the defaults: keepalive after 300 s of silence, every 30 s, 4 probes; unacknowledged data given up after 300 s', () => {
    const fd = socketFd(accepted);
    setIdleBounds(fd, idleBounds());
    expect([opt(fd, SOL_SOCKET, SO_KEEPALIVE), opt(fd, IPPROTO_TCP, TCP_KEEPIDLE), opt(fd, IPPROTO_TCP, TCP_KEEPINTVL), opt(fd, IPPROTO_TCP, TCP_KEEPCNT)]).toEqual([1, 300, 30, 4]);
    expect(opt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT)).toBe(300_000);
  });

  it("the cluster file's values; keepaliveIdleS 0 turns keepalive off, userTimeoutS 0 leaves the kernel's", () => {
    const fd = socketFd(accepted);
    setIdleBounds(fd, idleBounds({ keepaliveIdleS: 60, keepaliveIntervalS: 5, keepaliveProbes: 2, userTimeoutS: 20 }));
    expect([opt(fd, SOL_SOCKET, SO_KEEPALIVE), opt(fd, IPPROTO_TCP, TCP_KEEPIDLE), opt(fd, IPPROTO_TCP, TCP_KEEPINTVL), opt(fd, IPPROTO_TCP, TCP_KEEPCNT), opt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT)]).toEqual([1, 60, 5, 2, 20_000]);
    setIdleBounds(fd, idleBounds({ keepaliveIdleS: 0, userTimeoutS: 0 }));
    expect([opt(fd, SOL_SOCKET, SO_KEEPALIVE), opt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT)]).toEqual([0, 0]);
  });
});
