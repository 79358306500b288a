// The descriptor link between batond and an application, with real sockets in this process: the
// link reaches the application only from batond's pid, descriptors are claimed by connection id,
// and neither a repeated tag nor a flood of unclaimed descriptors leaks one.
import fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../../controller/log.js';
import { LinkInbox, LinkMaker } from '../../../controller/transfer/fd-exchange.js';
import { closeFd } from '../../../native/fdpass.js';

const log = createLogger({}, 'silent');
const cleanups: Array<() => void> = [];
afterEach(() => {
  while (cleanups.length) cleanups.pop()!();
});
const openFds = () => fs.readdirSync('/proc/self/fd').length;
const inode = (fd: number) => fs.fstatSync(fd).ino;

function linked() {
  const maker = new LinkMaker(log);
  const inbox = new LinkInbox(log);
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
    const maker = new LinkMaker(log);
    const inbox = new LinkInbox(log);
    cleanups.push(() => inbox.close(), () => maker.close());
    const before = openFds();
    const agentEnd = maker.make(inbox.address);
    cleanups.push(() => agentEnd.close());
    // Sent by this process, expected from another: refused, and its descriptor closed.
    expect(inbox.accept(process.pid + 1)).toBeUndefined();
    expect(openFds()).toBe(before + 1); // agentEnd's own socket only
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
