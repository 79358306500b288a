// The descriptor link between batond and an application, with real sockets in this process: the
// link reaches the application only from batond's pid and only through batond's descriptor socket
// (strangers' datagrams are discarded before the hello and refused after it), descriptors are
// claimed by connection id, and neither a repeated tag nor a flood of unclaimed descriptors leaks one.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../../controller/log.js';
import { descriptorSocketPath, LinkInbox, LinkMaker } from '../../../controller/transfer/fd-exchange.js';
import { closeFd, FdSocket } from '../../../native/fdpass.js';

const log = createLogger({}, 'silent');
const cleanups: Array<() => void> = [];
afterEach(() => {
  while (cleanups.length) cleanups.pop()!();
});
const openFds = () => fs.readdirSync('/proc/self/fd').length;
const inode = (fd: number) => fs.fstatSync(fd).ino;

/** Where a batond's agent socket would be: its descriptor socket goes beside it. */
function agentSocket(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fd-exchange-'));
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, 'agent.sock');
}

function linked() {
  const socketPath = agentSocket();
  const maker = new LinkMaker(log, socketPath);
  const inbox = new LinkInbox(log);
  inbox.connectTo(socketPath);
  const agentEnd = maker.make(inbox.address);
  const appEnd = inbox.accept(process.pid)!;
  cleanups.push(() => agentEnd.close(), () => appEnd.close(), () => inbox.close(), () => maker.close());
  return { agentEnd, appEnd };
}

describe('descriptor link', () => {
  it('carries a descriptor each way, claimed by its connection id', () => {
    const { agentEnd, appEnd } = linked();
    const file = fs.openSync('/proc/self/status', 'r');
    cleanups.push(() => fs.closeSync(file));
    appEnd.send(file, 'n1.a');
    expect(agentEnd.take('n1.other')).toBeUndefined();
    const got = agentEnd.take('n1.a')!;
    expect(inode(got)).toBe(inode(file));
    expect(agentEnd.take('n1.a')).toBeUndefined();
    agentEnd.send(got, 'n1.b');
    closeFd(got);
    const back = appEnd.take('n1.b')!;
    expect(inode(back)).toBe(inode(file));
    closeFd(back);
  });

  it('an inbox takes the link only from the pid it expects', () => {
    const socketPath = agentSocket();
    const maker = new LinkMaker(log, socketPath);
    const inbox = new LinkInbox(log);
    cleanups.push(() => inbox.close(), () => maker.close());
    inbox.connectTo(socketPath);
    const before = openFds();
    const agentEnd = maker.make(inbox.address);
    cleanups.push(() => agentEnd.close());
    // Sent by this process, expected from another: refused, and its descriptor closed.
    expect(inbox.accept(process.pid + 1)).toBeUndefined();
    expect(openFds()).toBe(before + 1); // agentEnd's own socket only
  });

  it('before each hello the inbox is connected to batond\'s descriptor socket: what strangers queued is closed, their later sends refused', () => {
    const socketPath = agentSocket();
    const maker = new LinkMaker(log, socketPath);
    const inbox = new LinkInbox(log);
    const stranger = FdSocket.open();
    cleanups.push(() => stranger.close(), () => inbox.close(), () => maker.close());
    // Owner-only, like the agent socket: whoever may not use batond may not connect to it either.
    expect(fs.statSync(descriptorSocketPath(socketPath)).mode & 0o777).toBe(0o600);
    const file = fs.openSync('/proc/self/status', 'r');
    cleanups.push(() => fs.closeSync(file));
    const before = openFds();
    // Until the inbox is connected anyone fills it (net.unix.max_dgram_qlen): batond's link would not get in.
    let queued = 0;
    for (;;) {
      try {
        stranger.send(inbox.address, file, 'baton-link');
        queued++;
      } catch (err) {
        expect((err as Error).message).toContain('EAGAIN');
        break;
      }
    }
    expect(queued).toBeGreaterThan(0);
    inbox.connectTo(socketPath);
    // Every descriptor the stranger queued was received and closed (none in our table); its next send is refused by the kernel.
    expect(openFds()).toBe(before);
    expect(() => stranger.send(inbox.address, file, 'baton-link')).toThrow(/EPERM/);
    const agentEnd = maker.make(inbox.address);
    cleanups.push(() => agentEnd.close());
    const appEnd = inbox.accept(process.pid);
    expect(appEnd).toBeDefined();
    appEnd!.close();
    // A restarted batond binds a new socket at the same path: the inbox follows it at the next hello.
    maker.close();
    expect(fs.existsSync(descriptorSocketPath(socketPath))).toBe(false);
    const restarted = new LinkMaker(log, socketPath);
    cleanups.push(() => restarted.close());
    expect(() => restarted.make(inbox.address)).toThrow(/EPERM/);
    inbox.connectTo(socketPath);
    const again = restarted.make(inbox.address);
    cleanups.push(() => again.close());
    expect(inbox.accept(process.pid)).toBeDefined();
  });

  it('a batond whose agent socket path leaves no room for its descriptor socket says so at start', () => {
    expect(() => new LinkMaker(log, `/tmp/${'x'.repeat(102)}`)).toThrow(/agent socket path .* is too long/);
  });

  it('a repeated tag replaces the earlier descriptor, closing it; a flood beyond the cap is closed, not kept', () => {
    const { agentEnd, appEnd } = linked();
    const file = fs.openSync('/proc/self/status', 'r');
    cleanups.push(() => fs.closeSync(file));
    const before = openFds();
    appEnd.send(file, 'same');
    appEnd.send(file, 'same');
    const got = agentEnd.take('same')!;
    expect(openFds()).toBe(before + 1);
    closeFd(got);
    for (let i = 0; i < 4100; i++) appEnd.send(file, `t${i}`);
    const first = agentEnd.take('t0')!;
    expect(first).toBeDefined();
    expect(agentEnd.take('t4099')).toBeUndefined();
    // 4096 kept (t0 now ours, 4095 still waiting), the last 4 closed on arrival.
    expect(openFds()).toBe(before + 4096);
    closeFd(first);
    // Closing the link closes every descriptor still waiting, and its own socket.
    agentEnd.close();
    expect(openFds()).toBe(before - 1);
  });
});
