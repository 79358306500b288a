// Finding who holds an address batond needs, from /proc as the kernel writes it: the tables are
// taken verbatim from a Linux 6.x /proc/net, the process tree is a directory laid out like /proc
// (a descriptor is a symlink to "socket:[inode]", as the kernel shows it).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { holdingInode, inUseError, parseInetTable, parseUnixTable, socketHolder } from '../../../controller/agent/ports.js';
import { isBatonError } from '../../../controller/errors.js';

const TCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0B00CB0A:125C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41001 1 0000000000000000 100 0 0 10 0
   1: 0B00CB0A:125C 6400CB0A:B2A4 01 00000000:00000000 00:00000000 00000000     0        0 41002 1 0000000000000000 20 4 30 10 -1
   2: 00000000:125E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41003 1 0000000000000000 100 0 0 10 0
   3: not a line at all
`;
const TCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 42001 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000C00CB0A:125C 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 42002 1 0000000000000000 100 0 0 10 0
   2: 746162FD00006E6F0000000011000000:125C 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 42003 1 0000000000000000 100 0 0 10 0
`;
const UDP = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  120: 0100007F:125D 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 43001 2 0000000000000000 0
`;
const UNIX = `Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 44001 /run/baton/n1.sock
0000000000000000: 00000003 00000000 00000000 0001 03 44002 /run/baton/n1.sock
0000000000000000: 00000002 00000000 00000000 0002 01 44003 @baton-inbox-1
0000000000000000: 00000002 00000000 00010000 0001 01 44004 /tmp/a path with spaces
`;

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-proc-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
fs.mkdirSync(path.join(root, 'net'));
for (const [name, text] of Object.entries({ tcp: TCP, tcp6: TCP6, udp: UDP, unix: UNIX })) fs.writeFileSync(path.join(root, 'net', name), text);

function fakeProcess(pid: number, cmdline: string[], sockets: number[]): void {
  fs.mkdirSync(path.join(root, String(pid), 'fd'), { recursive: true });
  fs.writeFileSync(path.join(root, String(pid), 'cmdline'), cmdline.map((a) => `${a}\0`).join(''));
  fs.writeFileSync(path.join(root, String(pid), 'comm'), `${path.basename(cmdline[0] ?? 'x')}\n`);
  fs.symlinkSync('/dev/null', path.join(root, String(pid), 'fd', '0'));
  sockets.forEach((inode, i) => fs.symlinkSync(`socket:[${inode}]`, path.join(root, String(pid), 'fd', String(i + 3))));
}
fakeProcess(100, ['/usr/bin/python3', '-m', 'http.server', '4700'], [41001, 41002]);
fakeProcess(200, ['nc', '-lu', '127.0.0.1', '4701'], [43001]);
fakeProcess(300, ['socat', `UNIX-LISTEN:/run/baton/n1.sock\u001b[31m${'x'.repeat(300)}`], [44001]);

describe('the /proc/net tables', () => {
  it('reads addresses in host byte order, ports, states and inodes; skips what it cannot read', () => {
    const tcp = parseInetTable(TCP, 'LE');
    expect(tcp.map((e) => ({ address: [...e.address].join('.'), port: e.port, state: e.state, inode: e.inode }))).toEqual([
      { address: '10.203.0.11', port: 4700, state: 0x0a, inode: 41001 },
      { address: '10.203.0.11', port: 4700, state: 0x01, inode: 41002 },
      { address: '0.0.0.0', port: 4702, state: 0x0a, inode: 41003 },
    ]);
    expect([...parseInetTable(TCP6, 'LE')[1]!.address].slice(10)).toEqual([0xff, 0xff, 10, 203, 0, 12]);
    // On a big-endian host the kernel's words read in order.
    expect([...parseInetTable(`h\n 0: 0ACB000B:125C 00000000:0000 0A 0 0 0 0 0 9 1\n`, 'BE')[0]!.address]).toEqual([10, 203, 0, 11]);
  });

  it('reads Unix sockets: path (spaces kept, abstract with @), inode, listening', () => {
    expect(parseUnixTable(UNIX)).toEqual([
      { path: '/run/baton/n1.sock', inode: 44001, listening: true },
      { path: '/run/baton/n1.sock', inode: 44002, listening: false },
      { path: '@baton-inbox-1', inode: 44003, listening: false },
      { path: '/tmp/a path with spaces', inode: 44004, listening: true },
    ]);
  });
});

describe('the holder of an address batond needs', () => {
  it('is the listening socket on that address or on a wildcard, IPv4 or dual-stack IPv6', () => {
    expect(holdingInode({ proto: 'tcp', host: '10.203.0.11', port: 4700, what: 'peer' }, root)).toBe(41001);
    expect(holdingInode({ proto: 'tcp', host: '10.203.0.11', port: 4702, what: 'api' }, root)).toBe(41003);
    expect(holdingInode({ proto: 'tcp', host: '10.203.0.11', port: 8080, what: 'x' }, root)).toBe(42001);
    expect(holdingInode({ proto: 'tcp', host: '10.203.0.12', port: 4700, what: 'x' }, root)).toBe(42002);
    expect(holdingInode({ proto: 'tcp', host: '10.203.0.13', port: 4700, what: 'x' }, root)).toBeUndefined();
    expect(holdingInode({ proto: 'udp', host: '127.0.0.1', port: 4701, what: 'control' }, root)).toBe(43001);
    // An IPv6 management address: held by a socket on it or on ::, never by an IPv4 one (0.0.0.0 included).
    expect(holdingInode({ proto: 'tcp', host: 'fd62:6174:6f6e::11', port: 4700, what: 'peer' }, root)).toBe(42003);
    expect(holdingInode({ proto: 'tcp', host: 'fd62:6174:6f6e::12', port: 4700, what: 'peer' }, root)).toBeUndefined();
    expect(holdingInode({ proto: 'tcp', host: 'fd62:6174:6f6e::12', port: 8080, what: 'x' }, root)).toBe(42001);
    expect(holdingInode({ proto: 'tcp', host: 'fd62:6174:6f6e::11', port: 4702, what: 'api' }, root)).toBeUndefined();
    expect(holdingInode({ proto: 'unix', path: '/run/baton/n1.sock', what: 'agent' }, root)).toBe(44001);
  });

  it('is named by pid and command line, bounded and without control characters', () => {
    expect(socketHolder(41001, root)).toEqual({ pid: 100, command: '/usr/bin/python3 -m http.server 4700' });
    const long = socketHolder(44001, root);
    expect(long && 'command' in long && long.command).toMatch(/^socat UNIX-LISTEN:\/run\/baton\/n1\.sock\\u001b\[31mx+…\(\d+ chars\)$/);
    expect(socketHolder(99999, root)).toBeUndefined();
  });

  it('makes an E_IN_USE error naming the address, what it is for and the holder', () => {
    const err = inUseError({ proto: 'udp', host: '127.0.0.1', port: 4701, what: 'control socket (controlPort)' }, root);
    expect(isBatonError(err, 'E_IN_USE')).toBe(true);
    expect(err.message).toBe('control socket (controlPort), udp 127.0.0.1:4701 is in use by pid 200 (nc -lu 127.0.0.1 4701) (step=listen)');
    expect(err.context).toMatchObject({ port: 4701, holderPid: 200 });
    expect(inUseError({ proto: 'tcp', host: '10.203.0.11', port: 4702, what: 'REST API' }, root).message).toBe(
      'REST API, tcp 10.203.0.11:4702 is in use by socket inode 41003, which no process batond can see holds (step=listen)',
    );
    expect(inUseError({ proto: 'tcp', host: '10.203.0.13', port: 4700, what: 'peer links' }, root).message).toMatch(
      /^peer links, tcp 10\.203\.0\.13:4700 is in use \(no socket holds it in \/proc\/net now/,
    );
  });
});
