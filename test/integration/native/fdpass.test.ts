// native/fdpass against the real kernel: socket descriptors passed over abstract Unix datagram
// sockets (SCM_RIGHTS) with the sender's pid attached by the kernel (SCM_CREDENTIALS). Loopback
// and Unix sockets only, in this process's own network namespace; a python3 child plays a
// misbehaving sender for what our own send() never produces.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BatonError } from '../../../controller/errors.js';
import { closeFd, FdSocket, peerPid } from '../../../native/fdpass.js';
import { dupFd as dupOf, socketFd } from '../../../native/repair.js';

type Received = ReturnType<FdSocket['receiveAll']>[number];
type Delivered = Extract<Received, { fd: number }>;

const cleanups: Array<() => unknown> = [];

afterEach(async () => {
  while (cleanups.length > 0) {
    try {
      await cleanups.pop()!();
    } catch {
      // already gone: cleanup must not hide the test's own failure
    }
  }
});

const unique = () => `baton-test-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;

function fdSocket(name?: string): FdSocket {
  const s = FdSocket.open(name);
  cleanups.push(() => s.close());
  return s;
}

// Received descriptors not yet handed to a net.Socket or closed by the test itself.
const received = new Set<number>();

/** A datagram that delivered a descriptor; the descriptor is closed after the test unless take()n. */
function delivered(entry: Received | undefined): Delivered {
  if (!entry || 'error' in entry) throw new Error(`expected a descriptor, got ${JSON.stringify(entry)}`);
  received.add(entry.fd);
  cleanups.push(() => received.delete(entry.fd) && closeFd(entry.fd));
  return entry;
}

/** The test owns the descriptor from here on (closes it, or gives it to a net.Socket). */
function take(entry: Delivered): number {
  received.delete(entry.fd);
  return entry.fd;
}

function nativeError(fn: () => unknown): BatonError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(BatonError);
    expect((err as BatonError).code).toBe('E_NATIVE');
    return err as BatonError;
  }
  throw new Error('expected a BatonError');
}

async function tcpListener(): Promise<net.Server> {
  const server = net.createServer();
  cleanups.push(() => new Promise((r) => server.close(r)));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return server;
}

/** A connected client and the server's accepted socket, both destroyed after the test. */
async function tcpPair(server: net.Server): Promise<{ client: net.Socket; accepted: net.Socket }> {
  const { port } = server.address() as net.AddressInfo;
  const acceptedP = new Promise<net.Socket>((r) => server.once('connection', r));
  const client = net.connect(port, '127.0.0.1');
  cleanups.push(() => client.destroy());
  await new Promise<void>((resolve, reject) => {
    client.once('connect', resolve);
    client.once('error', reject);
  });
  const accepted = await acceptedP;
  cleanups.push(() => accepted.destroy());
  return { client, accepted };
}

function read(sock: net.Socket, length: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const timer = setTimeout(() => reject(new Error(`read: ${got.length} of ${length} bytes after 5 s`)), 5_000);
    const onData = (chunk: Buffer) => {
      got = Buffer.concat([got, chunk]);
      if (got.length < length) return;
      clearTimeout(timer);
      sock.off('data', onData);
      resolve(got.toString('latin1'));
    };
    sock.on('data', onData);
  });
}

const openFds = () => fs.readdirSync('/proc/self/fd').length;
const inode = (fd: number) => fs.fstatSync(fd).ino;

describe('native/fdpass: socket descriptors over abstract Unix datagram sockets', () => {
  it('hands a connected TCP socket to another descriptor with its tag and the sender pid; the socket carries on', async () => {
    const server = await tcpListener();
    const { client, accepted } = await tcpPair(server);
    const fd = socketFd(accepted);
    const receiver = fdSocket();
    const sender = fdSocket();
    expect(receiver.address).toMatch(/^[0-9a-f]{5}$/); // autobind
    expect(sender.address).not.toBe(receiver.address);

    sender.send(receiver.address, fd, 'n1.abc');
    const got = receiver.receiveAll();
    expect(got).toHaveLength(1);
    const entry = delivered(got[0]);
    expect(entry.tag).toBe('n1.abc');
    expect(entry.pid).toBe(process.pid);
    expect(entry.fd).not.toBe(fd);
    expect(inode(entry.fd)).toBe(inode(fd));

    // The sender drops its copy, as an application does after the handoff: no FIN goes out,
    // the received descriptor keeps the connection.
    accepted.destroy();
    const wrapped = new net.Socket({ fd: take(entry), readable: true, writable: true });
    cleanups.push(() => wrapped.destroy());
    let clientEnded = false;
    client.on('end', () => (clientEnded = true));

    const toClient = read(client, 11);
    wrapped.write('from-batond');
    expect(await toClient).toBe('from-batond');
    const toWrapped = read(wrapped, 11);
    client.write('from-client');
    expect(await toWrapped).toBe('from-client');
    expect(clientEnded).toBe(false);
  });

  it('receiveAll on an empty socket returns [] without blocking', () => {
    // A blocking receive would never return here (nothing will ever be sent): the test's timeout.
    const receiver = fdSocket();
    expect(receiver.receiveAll()).toEqual([]);
    expect(receiver.receiveAll()).toEqual([]);
  });

  it('returns every queued datagram, in order, from one receiveAll', async () => {
    const server = await tcpListener();
    const pairs = [await tcpPair(server), await tcpPair(server), await tcpPair(server)];
    const receiver = fdSocket();
    const sender = fdSocket();
    pairs.forEach(({ accepted }, i) => sender.send(receiver.address, socketFd(accepted), `t${i + 1}`));

    const got = receiver.receiveAll().map(delivered);
    expect(got.map((e) => e.tag)).toEqual(['t1', 't2', 't3']);
    got.forEach((e, i) => expect(inode(e.fd)).toBe(inode(socketFd(pairs[i]!.accepted))));
    expect(new Set(got.map((e) => e.fd)).size).toBe(3);
    expect(receiver.receiveAll()).toEqual([]);
  });

  it('send to an address nobody is bound to throws E_NATIVE ECONNREFUSED', () => {
    const sender = fdSocket();
    const err = nativeError(() => sender.send(unique(), sender.fd, 'n1.x'));
    expect(err.message).toContain('ECONNREFUSED');
    expect(err.context.errnoName).toBe('ECONNREFUSED');
  });

  it("send throws EAGAIN once the receiver's queue is full (net.unix.max_dgram_qlen), and the queued ones still arrive", () => {
    const qlen = Number(fs.readFileSync('/proc/sys/net/unix/max_dgram_qlen', 'utf8'));
    const receiver = fdSocket();
    const sender = fdSocket();
    let sent = 0;
    let err: BatonError | undefined;
    while (!err && sent <= qlen + 10) {
      err = (() => {
        try {
          sender.send(receiver.address, sender.fd, `q${sent}`);
          sent++;
          return undefined;
        } catch (e) {
          return e as BatonError;
        }
      })();
    }
    expect(err).toBeInstanceOf(BatonError);
    expect(err!.code).toBe('E_NATIVE');
    expect(err!.message).toContain('EAGAIN');
    // The kernel refuses once the queue holds MORE than the limit (qlen 10: the 12th send); the
    // sender's SO_SNDBUF can stop it earlier when the sysctl is set high.
    expect(sent).toBeGreaterThan(0);
    expect(sent).toBeLessThanOrEqual(qlen + 1);
    const got = receiver.receiveAll().map(delivered);
    expect(got.map((e) => e.tag)).toEqual(Array.from({ length: sent }, (_, i) => `q${i}`));
  });

  it('a connected inbox takes datagrams from its peer only: a stranger of any uid gets EPERM; the queue-length limit does not hold back the peer', () => {
    // An application's inbox, connected to batond's socket at a path beside the agent socket.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fdpass-'));
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const agentPath = path.join(dir, 'agent.sock.fd');
    const agent = FdSocket.bindPath(agentPath);
    cleanups.push(() => agent.close());
    expect(fs.statSync(agentPath).mode & 0o777).toBe(0o600);
    expect(nativeError(() => FdSocket.bindPath(agentPath)).message).toContain('EADDRINUSE');
    const inbox = fdSocket();
    const stranger = fdSocket();
    const qlen = Number(fs.readFileSync('/proc/sys/net/unix/max_dgram_qlen', 'utf8'));

    // Before the inbox is connected a stranger can fill it: nothing else gets in (batond's link, before the fix).
    let filled = 0;
    for (;;) {
      try {
        stranger.send(inbox.address, stranger.fd, `s${filled}`);
        filled++;
      } catch (err) {
        expect((err as BatonError).context.errnoName).toBe('EAGAIN');
        break;
      }
    }
    expect(nativeError(() => agent.send(inbox.address, agent.fd, 'refused')).context.errnoName).toBe('EAGAIN');

    inbox.connectTo(agentPath);
    expect(nativeError(() => stranger.send(inbox.address, stranger.fd, 'late')).context.errnoName).toBe('EPERM');
    // The system's interpreter: a per-user one (pyenv under /root) is out of nobody's reach.
    const fromNobody = execFileSync(
      'setpriv',
      [
        '--reuid=65534', '--regid=65534', '--clear-groups', '/usr/bin/python3', '-c',
        String.raw`
import errno, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    s.sendto(b"x", b"\0" + sys.argv[1].encode())
    print("sent")
except OSError as e:
    print(errno.errorcode[e.errno])
`,
        inbox.address,
      ],
      { encoding: 'utf8', timeout: 10_000 },
    ).trim();
    expect(fromNobody).toBe('EPERM');
    // The peer is not held to max_dgram_qlen, though the stranger's datagrams still wait there.
    const count = qlen * 3;
    for (let i = 0; i < count; i++) agent.send(inbox.address, agent.fd, `p${i}`);
    const got = inbox.receiveAll().map(delivered);
    expect(got.map((e) => e.tag)).toEqual([...Array.from({ length: filled }, (_, i) => `s${i}`), ...Array.from({ length: count }, (_, i) => `p${i}`)]);

    // A new batond (a new socket at a new bind): the inbox connects to it and the old one is refused.
    fs.rmSync(agentPath);
    const restarted = FdSocket.bindPath(agentPath);
    cleanups.push(() => restarted.close());
    inbox.connectTo(agentPath);
    expect(nativeError(() => agent.send(inbox.address, agent.fd, 'old')).context.errnoName).toBe('EPERM');
    restarted.send(inbox.address, restarted.fd, 'new');
    expect(inbox.receiveAll().map(delivered).map((e) => e.tag)).toEqual(['new']);
    // Nothing bound at the path: refused, named.
    expect(nativeError(() => inbox.connectTo(path.join(dir, 'nobody'))).context.errnoName).toMatch(/^(ENOENT|ECONNREFUSED)$/);
  });

  it('a pair has no queue-length limit: thousands wait unread in a forced send buffer, in order, each with its descriptor', () => {
    // batond's private link with each application: max_dgram_qlen (10 here) would fail the 12th
    // handoff in flight on an abstract address.
    const [a, b] = FdSocket.pair(4 << 20);
    cleanups.push(() => a.close(), () => b.close());
    const qlen = Number(fs.readFileSync('/proc/sys/net/unix/max_dgram_qlen', 'utf8'));
    const count = Math.max(2_000, qlen * 10);
    for (let i = 0; i < count; i++) a.send(null, a.fd, `p${i}`);
    const got = b.receiveAll().map(delivered);
    expect(got.map((e) => e.tag)).toEqual(Array.from({ length: count }, (_, i) => `p${i}`));
    for (const e of got) {
      expect(inode(e.fd)).toBe(inode(a.fd));
      closeFd(e.fd);
    }
    // Both ways: the other end sends back the same way, and an adopted end works like the original.
    const adopted = FdSocket.adopt(dupOf(b.fd));
    cleanups.push(() => adopted.close());
    adopted.send(null, b.fd, 'back');
    const back = a.receiveAll().map(delivered);
    expect(back.map((e) => e.tag)).toEqual(['back']);
    expect(back[0]!.pid).toBe(process.pid);
    closeFd(back[0]!.fd);
  });

  it('peerPid reads SO_PEERCRED of a Unix stream connection', async () => {
    const sockPath = path.join(os.tmpdir(), `${unique()}.sock`);
    cleanups.push(() => fs.rmSync(sockPath, { force: true }));
    const server = net.createServer();
    cleanups.push(() => new Promise((r) => server.close(r)));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(sockPath, resolve);
    });
    const acceptedP = new Promise<net.Socket>((r) => server.once('connection', r));
    const client = net.connect(sockPath);
    cleanups.push(() => client.destroy());
    const accepted = await acceptedP;
    cleanups.push(() => accepted.destroy());

    const fdOf = (s: net.Socket) => (s as unknown as { _handle: { fd: number } })._handle.fd;
    expect(peerPid(fdOf(accepted))).toBe(process.pid);
    // An unconnected socket has no peer: refused, not pid 0.
    const lonely = fdSocket();
    expect(nativeError(() => peerPid(lonely.fd)).message).toContain('ENOTCONN');
  });

  it('open(name) binds that abstract name; the same name twice is EADDRINUSE', () => {
    const name = unique();
    const a = fdSocket(name);
    expect(a.address).toBe(name);
    const err = nativeError(() => fdSocket(name));
    expect(err.message).toContain('EADDRINUSE');

    // and it is reachable by that name
    const sender = fdSocket();
    sender.send(name, sender.fd, 'n2.by-name');
    const [entry] = a.receiveAll().map(delivered);
    expect(entry!.tag).toBe('n2.by-name');
  });

  it('refuses an empty tag or one over 255 bytes with EINVAL; 255 bytes round-trip', () => {
    const receiver = fdSocket();
    const sender = fdSocket();
    expect(nativeError(() => sender.send(receiver.address, sender.fd, 'x'.repeat(256))).message).toContain('EINVAL');
    expect(nativeError(() => sender.send(receiver.address, sender.fd, '')).message).toContain('EINVAL');
    expect(receiver.receiveAll()).toEqual([]);

    const longest = 'n1.' + 'y'.repeat(252);
    sender.send(receiver.address, sender.fd, longest);
    const [entry] = receiver.receiveAll().map(delivered);
    expect(entry!.tag).toBe(longest);
  });

  it('a foreign sender: its pid is reported; truncated, descriptor-less and extra descriptors are dropped and closed', () => {
    const receiver = fdSocket();
    const before = openFds();
    // 1. a payload too long for a tag; 2. two descriptors (the first is kept); 3. no descriptor;
    // 4. more descriptors than the control buffer holds; 5. a plain one.
    const out = execFileSync(
      'python3',
      [
        '-c',
        String.raw`
import os, socket, sys
to = b"\0" + sys.argv[1].encode()
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(to)
a, b = socket.socketpair()
socket.send_fds(s, [b"x" * 300], [a.fileno()])
socket.send_fds(s, [b"two"], [a.fileno(), b.fileno()])
s.send(b"none")
socket.send_fds(s, [b"many"], [a.fileno()] * 20)
socket.send_fds(s, [b"ok"], [b.fileno()])
print(os.getpid())
`,
        receiver.address,
      ],
      { encoding: 'utf8', timeout: 10_000 },
    );
    const childPid = Number(out.trim());

    const got = receiver.receiveAll();
    expect(got).toHaveLength(5);
    expect(got[0]).toEqual({ error: expect.stringContaining(`truncated datagram`) });
    expect((got[0] as { error: string }).error).toContain(`pid ${childPid}`);
    const two = delivered(got[1]);
    expect(two).toMatchObject({ tag: 'two', pid: childPid });
    expect(fs.fstatSync(two.fd).isSocket()).toBe(true);
    expect(got[2]).toEqual({ error: expect.stringContaining('carried no descriptor') });
    expect(got[3]).toEqual({ error: expect.stringContaining('truncated datagram') });
    const ok = delivered(got[4]);
    expect(ok).toMatchObject({ tag: 'ok', pid: childPid });
    expect(ok.pid).not.toBe(process.pid);

    closeFd(take(two));
    closeFd(take(ok));
    expect(openFds()).toBe(before);
  });

  it('leaks no descriptor over 2,000 send + receive + closeFd rounds', async () => {
    const server = await tcpListener();
    const { accepted } = await tcpPair(server);
    const fd = socketFd(accepted);
    const receiver = fdSocket();
    const sender = fdSocket();
    const before = openFds();
    for (let i = 0; i < 2_000; i++) {
      sender.send(receiver.address, fd, `n1.${i}`);
      const got = receiver.receiveAll();
      const entry = got[0];
      if (got.length !== 1 || !entry || 'error' in entry || entry.tag !== `n1.${i}`) throw new Error(`round ${i}: ${JSON.stringify(got)}`);
      closeFd(entry.fd);
    }
    expect(Math.abs(openFds() - before)).toBeLessThanOrEqual(3);
  });

  it('close is idempotent and a closed FdSocket refuses to work', () => {
    const s = FdSocket.open();
    s.close();
    s.close();
    expect(s.fd).toBe(-1);
    nativeError(() => s.receiveAll());
    nativeError(() => s.send('x', 0, 'n1.x'));
    expect(nativeError(() => closeFd(1_000_000)).message).toContain('EBADF');
  });
});
