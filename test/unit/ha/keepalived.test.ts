// The keepalived side of the backup distributor, without a segment: the keepalived.conf Baton
// generates (priorities by preference, nopreempt, timers, the FIFO, the DVIPA line, hostile values
// refused) and that keepalived itself accepts it; the argv; and the notify FIFO reader on a real
// FIFO: each state, other instances and groups ignored, lines buffered before it opened, writers
// coming and going, and hostile writers (a 1 MiB line without newline, NUL, invalid UTF-8, a
// flood of lines) counted while it keeps working and logs little. The real keepalived on a
// segment: test/integration/ha/vrrp.test.ts.
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { isBatonError } from '../../../controller/errors.js';
import { repoRoot } from '../../../controller/paths.js';
import {
  DEFAULT_ADVERT_MS,
  DEFAULT_ROUTER_ID,
  distributorPriority,
  keepalivedArgv,
  keepalivedConfig,
  keepalivedPaths,
  type VrrpClusterView,
  type VrrpNodeSpec,
  vrrpInstanceName,
  vrrpNodeSpec,
  writeKeepalivedConfig,
  writeTrackFile,
} from '../../../controller/ha/keepalived.js';
import { ensureFifo, holdsAddress, parseFifoLine, type VrrpEvent, VrrpState, type VrrpTransition } from '../../../controller/ha/vrrp-state.js';
import { until } from '../../helpers/wait.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-keepalived-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const CLUSTER: VrrpClusterView = {
  instance: 'prod',
  dvipa: { addresses: ['192.0.2.10'] },
  distributors: ['n1', 'n2'],
  nodes: [
    { name: 'n1', interface: 'baton0' },
    { name: 'n2', interface: 'ens6' },
    { name: 'n3', interface: 'baton0' },
  ],
};
const FIFO = '/run/baton/keepalived-prod.fifo';
const FILES = { notifyFifo: FIFO, trackFile: '/run/baton/baton.handover' };

function expectConfigError(fn: () => unknown, message: RegExp): void {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(isBatonError(thrown, 'E_CONFIG'), String(thrown)).toBe(true);
  expect((thrown as Error).message).toMatch(message);
}

/** The non-comment lines of a keepalived.conf, trimmed. */
const directives = (text: string) => text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));

describe('keepalived.conf for a distributor', () => {
  it('gives priorities by preference, the first highest, distinct for eight, never below 1', () => {
    const eight = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'];
    const prios = eight.map((n) => distributorPriority(eight, n));
    expect(prios).toEqual([200, 175, 150, 125, 100, 75, 50, 25]);
    const twelve = [...eight, 'i', 'j', 'k', 'l'];
    expect(twelve.map((n) => distributorPriority(twelve, n)).slice(8)).toEqual([1, 1, 1, 1]);
    expect(vrrpNodeSpec(CLUSTER, 'n1', FILES).priority).toBe(200);
    expect(vrrpNodeSpec(CLUSTER, 'n2', FILES).priority).toBe(175);
  });

  it('writes one BACKUP, nopreempt instance per node, same router id and timers, its own priority, interface and FIFO', () => {
    const n1 = keepalivedConfig(vrrpNodeSpec(CLUSTER, 'n1', FILES));
    const n2 = keepalivedConfig(vrrpNodeSpec(CLUSTER, 'n2', { notifyFifo: '/run/baton/other.fifo', trackFile: '/run/baton/other.handover' }));
    const d1 = directives(n1);
    const d2 = directives(n2);
    for (const d of [d1, d2]) {
      expect(d).toContain('vrrp_version 3');
      expect(d).toContain(`vrrp_instance ${vrrpInstanceName('prod')} {`);
      expect(d).toContain('state BACKUP');
      expect(d).toContain('nopreempt');
      expect(d).toContain(`virtual_router_id ${DEFAULT_ROUTER_ID}`);
      expect(d).toContain(`advert_int ${DEFAULT_ADVERT_MS / 1000}`);
      expect(d).toContain('advert_int 0.1');
      expect(d).not.toContain('vrrp_strict');
      expect(d.filter((l) => l.startsWith('vrrp_instance '))).toHaveLength(1);
      expect(d.filter((l) => /^(notify|notify_master|notify_backup|notify_fault|notify_stop|vrrp_script|track_script)\b/.test(l))).toEqual([]);
    }
    expect(vrrpInstanceName('prod')).toBe('baton-prod');
    expect(d1).toContain('priority 200');
    expect(d2).toContain('priority 175');
    expect(d1).toContain('router_id baton-prod-n1');
    expect(d2).toContain('router_id baton-prod-n2');
    expect(d1).toContain('interface baton0');
    expect(d2).toContain('interface ens6');
    expect(d1).toContain('192.0.2.10/32 dev baton0');
    expect(d2).toContain('192.0.2.10/32 dev ens6');
    expect(d1).toContain(`notify_fifo ${FIFO}`);
    expect(d2).toContain('notify_fifo /run/baton/other.fifo');
    // Blocks balance: a brace inside a value would show here.
    for (const text of [n1, n2]) expect(text.split('{').length).toBe(text.split('}').length);
    // One family: no excluded block.
    expect(d1).not.toContain('virtual_ipaddress_excluded {');
  });

  it('a dual-stack DVIPA: the first address in the adverts\' block, the other family\'s excluded from them but held and announced alike', () => {
    const text = keepalivedConfig(vrrpNodeSpec({ ...CLUSTER, dvipa: { addresses: ['192.0.2.10', '2001:db8::10'] } }, 'n1', FILES));
    const d = directives(text);
    const block = (name: string) => d.slice(d.indexOf(`${name} {`) + 1, d.indexOf('}', d.indexOf(`${name} {`)));
    expect(block('virtual_ipaddress')).toEqual(['192.0.2.10/32 dev baton0']);
    expect(block('virtual_ipaddress_excluded')).toEqual(['2001:db8::10/128 dev baton0']);
    expect(text.split('{').length).toBe(text.split('}').length);
    // The DVIPAs added through the API follow the other family's address, either family.
    const withAdded = directives(keepalivedConfig(vrrpNodeSpec({ ...CLUSTER, dvipa: { addresses: ['192.0.2.10', '2001:db8::10'] } }, 'n1', FILES, ['192.0.2.20', '2001:db8::20'])));
    const excludedBlock = withAdded.slice(withAdded.indexOf('virtual_ipaddress_excluded {') + 1, withAdded.indexOf('}', withAdded.indexOf('virtual_ipaddress_excluded {')));
    expect(excludedBlock).toEqual(['2001:db8::10/128 dev baton0', '192.0.2.20/32 dev baton0', '2001:db8::20/128 dev baton0']);
    // IPv6 alone: adverts over IPv6, the address a /128.
    const v6 = directives(keepalivedConfig(vrrpNodeSpec({ ...CLUSTER, dvipa: { addresses: ['2001:db8::10'] } }, 'n1', FILES)));
    expect(v6).toContain('2001:db8::10/128 dev baton0');
    expect(v6).not.toContain('virtual_ipaddress_excluded {');
  });

  it('takes the router id and advert interval from the cluster file', () => {
    const spec = vrrpNodeSpec({ ...CLUSTER, vrrp: { routerId: 7, advertMs: 30 } }, 'n1', FILES);
    expect(spec).toMatchObject({ routerId: 7, advertMs: 30 });
    const d = directives(keepalivedConfig(spec));
    expect(d).toContain('virtual_router_id 7');
    expect(d).toContain('advert_int 0.03');
    expect(d).toContain('min_auto_priority_delay 30000');
    // Realtime's CPU limit: the 10 ms default killed the VRRP process of emulated VMs (a role change each).
    expect(d).toContain('vrrp_rlimit_rttime 1000000');
    expect(directives(keepalivedConfig({ ...spec, advertMs: 1000 }))).toContain('advert_int 1');
    expect(directives(keepalivedConfig({ ...spec, advertMs: 2550 }))).toContain('advert_int 2.55');
  });

  it('refuses a node that is not a distributor, and a distributor that is not a node', () => {
    expectConfigError(() => vrrpNodeSpec(CLUSTER, 'n3', FILES), /n3.*is not one of the distributors \(n1, n2\)/);
    expectConfigError(() => vrrpNodeSpec({ ...CLUSTER, distributors: ['n1', 'n9'] }, 'n9', FILES), /n9.*is not one of the nodes/);
  });

  it('refuses every value that would not stay one word of keepalived.conf', () => {
    const good = vrrpNodeSpec(CLUSTER, 'n1', FILES);
    const bad: Array<[Partial<VrrpNodeSpec>, RegExp]> = [
      [{ instance: 'prod }\nvrrp_script x {' }, /instance/],
      [{ instance: '' }, /instance/],
      [{ node: 'n1 #' }, /node/],
      [{ interface: 'eth0 }' }, /interface/],
      [{ interface: 'eth0#x' }, /interface/],
      [{ interface: 'a-very-long-interface' }, /interface/],
      [{ interface: '$IFACE' }, /interface/],
      [{ dvipas: ['192.0.2.10 dev lo'] }, /dvipas/],
      [{ dvipas: ['2001:db8::10%eth0'] }, /dvipas/],
      [{ dvipas: ['2001:db8::10', '2001:db8::11'] }, /dvipas/],
      [{ dvipas: ['192.0.2.10', '192.0.2.11'] }, /dvipas/],
      [{ dvipas: [] }, /dvipas/],
      [{ added: ['10.0.0.20 dev lo'] }, /added/],
      [{ added: ['192.0.2.10'] }, /added/],
      [{ added: Array.from({ length: 257 }, (_, i) => `10.0.${i >> 8}.${i & 255}`) }, /added/],
      [{ priority: 0 }, /priority/],
      [{ priority: 255 }, /priority/],
      [{ priority: 1.5 }, /priority/],
      [{ routerId: 256 }, /routerId/],
      [{ advertMs: 5 }, /advertMs/],
      [{ advertMs: 15 }, /advertMs/],
      [{ advertMs: 40_960 }, /advertMs/],
      [{ notifyFifo: 'relative.fifo' }, /notifyFifo/],
      [{ notifyFifo: '/run/baton/a b.fifo' }, /notifyFifo/],
      [{ notifyFifo: '/run/baton/../x.fifo' }, /notifyFifo/],
      [{ notifyFifo: '/run/baton/x.fifo\nnotify /bin/sh' }, /notifyFifo/],
    ];
    for (const [change, message] of bad) expectConfigError(() => keepalivedConfig({ ...good, ...change }), message);
    expectConfigError(() => vrrpNodeSpec({ ...CLUSTER, vrrp: { advertMs: 25 } }, 'n1', FILES), /advertMs/);
  });

  it('runs keepalived in the foreground, VRRP only, with its own files; the options exist in the installed keepalived', () => {
    const paths = keepalivedPaths('/run/baton', 'prod', 'n1');
    expect(paths).toEqual({
      config: '/run/baton/keepalived-prod-n1.conf',
      pidFile: '/run/baton/keepalived-prod-n1.main-pid',
      vrrpPidFile: '/run/baton/keepalived-prod-n1.vrrp-pid',
      checkersPidFile: '/run/baton/keepalived-prod-n1.checkers-pid',
      bfdPidFile: '/run/baton/keepalived-prod-n1.bfd-pid',
      notifyFifo: '/run/baton/keepalived-prod-n1.fifo',
      trackFile: '/run/baton/keepalived-prod-n1.handover',
    });
    // The lab supervisor takes every *.pid in its run directory for one of its own processes.
    expect(Object.values(paths).filter((p) => p.endsWith('.pid'))).toEqual([]);
    const argv = keepalivedArgv(paths);
    expect(argv).toEqual([
      'keepalived', '--dont-fork', '--log-console', '--no-syslog', '--vrrp',
      '--use-file', paths.config, '--pid', paths.pidFile, '--vrrp_pid', paths.vrrpPidFile,
      '--checkers_pid', paths.checkersPidFile, '--bfd_pid', paths.bfdPidFile,
    ]);
    // keepalived prints its help on stderr.
    const help = spawnSync('keepalived', ['--help'], { encoding: 'utf8', timeout: 5000 }).stderr;
    for (const option of argv.filter((a) => a.startsWith('--'))) expect(help).toContain(option);
    expectConfigError(() => keepalivedArgv({ ...paths, config: '/run/x y.conf' }), /config/);
  });

  it('is what docs/operations.md shows', () => {
    const doc = fs.readFileSync(path.join(repoRoot(), 'docs/operations.md'), 'utf8');
    const section = doc.slice(doc.indexOf('### The configuration Baton generates'));
    const block = /\n```\n([\s\S]*?)\n```\n/.exec(section)?.[1];
    const cluster: VrrpClusterView = { ...CLUSTER, nodes: [{ name: 'n1', interface: 'baton0' }, { name: 'n2', interface: 'baton0' }] };
    expect(`${block}\n`).toBe(keepalivedConfig(vrrpNodeSpec(cluster, 'n1', keepalivedPaths('/var/lib/baton', 'prod', 'n1'))));
  });

  describe('accepted by keepalived --config-test', () => {
    // keepalived checks that the interface exists: a namespace with one veth end named like a NIC.
    const ns = `bt-${randomBytes(3).toString('hex')}-kt`;
    afterAll(() => {
      try {
        execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      } catch {
        // Not created.
      }
    });

    it('with every setting Baton writes', () => {
      execFileSync('ip', ['netns', 'add', ns]);
      execFileSync('ip', ['-n', ns, 'link', 'add', 'baton0', 'type', 'veth', 'peer', 'name', 'peer0']);
      const paths = keepalivedPaths(tmp, 'prod', 'n2');
      writeKeepalivedConfig(paths.config, keepalivedConfig(vrrpNodeSpec({ ...CLUSTER, nodes: [{ name: 'n2', interface: 'baton0' }] }, 'n2', paths)));
      expect(fs.statSync(paths.config).mode & 0o777).toBe(0o644);
      const check = (file: string) => {
        try {
          execFileSync('nsenter', [`--net=/run/netns/${ns}`, '--', 'keepalived', '--config-test', '-f', file], { encoding: 'utf8', stdio: 'pipe', timeout: 10_000 });
          return { ok: true, stderr: '' };
        } catch (err) {
          return { ok: false, stderr: String((err as { stderr?: string }).stderr) };
        }
      };
      expect(check(paths.config)).toEqual({ ok: true, stderr: '' });
      // The check is a real one: a misspelt keyword fails it.
      const wrong = path.join(tmp, 'wrong.conf');
      fs.writeFileSync(wrong, fs.readFileSync(paths.config, 'utf8').replace('nopreempt', 'no_preempt_please'));
      expect(check(wrong)).toMatchObject({ ok: false, stderr: expect.stringMatching(/Unknown keyword 'no_preempt_please'/) });
      // A dual-stack DVIPA: the IPv6 address in the excluded block passes too.
      const dual = path.join(tmp, 'dual.conf');
      writeKeepalivedConfig(dual, keepalivedConfig(vrrpNodeSpec({ ...CLUSTER, dvipa: { addresses: ['192.0.2.10', '2001:db8::10'] }, nodes: [{ name: 'n2', interface: 'baton0' }] }, 'n2', paths, ['192.0.2.20', '2001:db8::20'])));
      expect(check(dual)).toEqual({ ok: true, stderr: '' });
      // The config test creates no FIFO: batond does, before keepalived starts.
      expect(fs.existsSync(paths.notifyFifo)).toBe(false);
    });
  });
});

describe('the track file (batonctl dvipa move)', () => {
  it('is written in place, 1 while handing over and 0 otherwise, its directory made on a fresh machine; never through a symbolic link', () => {
    const file = path.join(tmp, 'fresh', 'state', 'keepalived-prod-n1.handover');
    writeTrackFile(file, false);
    expect(fs.readFileSync(file, 'utf8')).toBe('0\n');
    const inode = fs.statSync(file).ino;
    writeTrackFile(file, true);
    // The same file: keepalived watches it, not its directory entry.
    expect(fs.statSync(file).ino).toBe(inode);
    expect(fs.readFileSync(file, 'utf8')).toBe('1\n');
    expect(fs.statSync(file).mode & 0o777).toBe(0o644);
    const link = path.join(tmp, 'fresh', 'state', 'link.handover');
    fs.symlinkSync(path.join(tmp, 'elsewhere'), link);
    expect(() => writeTrackFile(link, true)).toThrow(/cannot write keepalived's track file/);
    expect(fs.existsSync(path.join(tmp, 'elsewhere'))).toBe(false);
  });
});

describe('keepalived notify FIFO lines', () => {
  it('parses each state, the events and group lines', () => {
    for (const state of ['MASTER', 'BACKUP', 'FAULT', 'STOP'] as const) {
      expect(parseFifoLine(`INSTANCE "baton-prod" ${state} 200`)).toEqual({ kind: 'state', instance: 'baton-prod', state, priority: 200 });
    }
    expect(parseFifoLine('INSTANCE "baton-prod" DELETED 175')).toEqual({ kind: 'state', instance: 'baton-prod', state: 'STOP', priority: 175 });
    expect(parseFifoLine('INSTANCE "baton-prod" MASTER_RX_LOWER_PRI 200')).toEqual({ kind: 'event', instance: 'baton-prod', event: 'MASTER_RX_LOWER_PRI', priority: 200 });
    expect(parseFifoLine('INSTANCE "baton-prod" BACKUP_PRIORITY 150')).toMatchObject({ kind: 'event', event: 'BACKUP_PRIORITY' });
    expect(parseFifoLine('GROUP "VG_1" MASTER 0')).toEqual({ kind: 'group', group: 'VG_1' });
  });

  it('calls anything else unknown', () => {
    for (const line of [
      '',
      'INSTANCE baton-prod MASTER 200',
      'instance "baton-prod" MASTER 200',
      'INSTANCE "baton-prod" MASTER',
      'INSTANCE "baton-prod" MASTER 256',
      'INSTANCE "baton-prod" MASTER 2000',
      'INSTANCE "baton-prod" PRIMARY 200',
      'INSTANCE "baton-prod" MASTER 200 ',
      'INSTANCE "" MASTER 200',
      `INSTANCE "${'x'.repeat(129)}" MASTER 200`,
      'VS [192.168.201.15]:tcp:80 UP',
    ]) {
      expect(parseFifoLine(line).kind, JSON.stringify(line)).toBe('unknown');
    }
    expect(parseFifoLine(Buffer.from('INSTANCE "baton-prod" MASTER\0 200'))).toEqual({ kind: 'unknown', reason: 'not printable ASCII' });
    expect(parseFifoLine(Buffer.from([...Buffer.from('INSTANCE "baton-'), 0xc3, 0x28, ...Buffer.from('" MASTER 200')]))).toEqual({ kind: 'unknown', reason: 'not printable ASCII' });
    expect(parseFifoLine('INSTANCE "baton-prod" MASTER 200\r').kind).toBe('unknown');
  });
});

describe('VrrpState on a real FIFO', () => {
  const readers: VrrpState[] = [];
  const fds: number[] = [];
  afterEach(() => {
    readers.splice(0).forEach((r) => r.close());
    for (const fd of fds.splice(0)) fs.closeSync(fd);
  });

  let n = 0;
  const fifoPath = () => path.join(tmp, `vrrp-${++n}.fifo`);

  function logCapture() {
    const lines: string[] = [];
    return { log: pino({ level: 'info' }, { write: (s: string) => void lines.push(s) }), lines };
  }

  async function open(file = fifoPath(), maxLineBytes?: number) {
    const { log, lines } = logCapture();
    const reader = await VrrpState.open({ fifo: file, instance: 'baton-prod', log, ...(maxLineBytes ? { maxLineBytes } : {}) });
    readers.push(reader);
    const states: VrrpTransition[] = [];
    const events: VrrpEvent[] = [];
    const closed: string[] = [];
    reader.on('state', (t) => states.push(t));
    reader.on('event', (e) => events.push(e));
    reader.on('closed', (why) => closed.push(why));
    return { reader, file, states, events, closed, lines };
  }

  /** A writer as keepalived opens one (O_RDWR | O_NONBLOCK): small writes never block. */
  function writer(file: string): number {
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    fds.push(fd);
    return fd;
  }

  it('creates a missing FIFO 0600 and follows each state in order', async () => {
    const { reader, file, states, closed } = await open();
    const st = fs.lstatSync(file);
    expect(st.isFIFO()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    expect(reader.state()).toBeUndefined();
    const w = writer(file);
    fs.writeSync(w, 'INSTANCE "baton-prod" BACKUP 200\nINSTANCE "baton-prod" MASTER 200\n');
    fs.writeSync(w, 'INSTANCE "baton-prod" FAULT 200\nINSTANCE "baton-prod" STOP 200\nINSTANCE "baton-prod" BACKUP 200\n');
    await until('five transitions', () => states.length === 5, 2000);
    expect(states.map((s) => [s.previous, s.state, s.priority, s.source])).toEqual([
      [undefined, 'BACKUP', 200, 'fifo'],
      ['BACKUP', 'MASTER', 200, 'fifo'],
      ['MASTER', 'FAULT', 200, 'fifo'],
      ['FAULT', 'STOP', 200, 'fifo'],
      ['STOP', 'BACKUP', 200, 'fifo'],
    ]);
    expect(reader.state()).toBe('BACKUP');
    // The same state again (keepalived restarted and came back BACKUP) is no transition.
    fs.writeSync(w, 'INSTANCE "baton-prod" BACKUP 200\n');
    await until('a sixth line', () => reader.counts().lines === 6, 2000);
    expect(states).toHaveLength(5);
    expect(reader.counts()).toMatchObject({ lines: 6, states: 6, unknown: 0, tooLong: 0 });
    expect(closed).toEqual([]);
  });

  it('ignores other instances and GROUP lines, counts them, reports events', async () => {
    const { reader, file, states, events } = await open();
    const w = writer(file);
    fs.writeSync(w, ['INSTANCE "other" MASTER 100', 'GROUP "VG_1" MASTER 0', 'GROUP "baton-prod" FAULT 0', 'INSTANCE "baton-production" MASTER 100',
      'INSTANCE "baton-prod" MASTER 175', 'INSTANCE "baton-prod" MASTER_RX_LOWER_PRI 175', 'INSTANCE "other" FAULT 100', ''].join('\n'));
    await until('seven lines', () => reader.counts().lines === 7, 2000);
    expect(states.map((s) => s.state)).toEqual(['MASTER']);
    expect(events.map((e) => [e.event, e.priority])).toEqual([['MASTER_RX_LOWER_PRI', 175]]);
    expect(reader.counts()).toEqual({ lines: 7, states: 1, events: 1, otherInstances: 3, groups: 2, unknown: 0, tooLong: 0 });
    expect(reader.lastPriority()).toBe(175);
  });

  it('reads, in order, what keepalived wrote before batond opened the FIFO', async () => {
    const file = fifoPath();
    await ensureFifo(file);
    const w = writer(file);
    fs.writeSync(w, 'INSTANCE "baton-prod" BACKUP 200\nINSTANCE "baton-prod" MASTER 200\n');
    const { reader, states } = await open(file);
    await until('two transitions', () => states.length === 2, 2000);
    expect(reader.state()).toBe('MASTER');
  });

  it('never sees an end while writers come and go (keepalived restarting)', async () => {
    const { reader, file, closed } = await open();
    for (const state of ['BACKUP', 'MASTER', 'STOP', 'BACKUP']) {
      const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
      fs.writeSync(fd, `INSTANCE "baton-prod" ${state} 200\n`);
      fs.closeSync(fd);
      await until(`${state} read`, () => reader.state() === state, 2000);
    }
    await new Promise((r) => setTimeout(r, 50));
    expect(closed).toEqual([]);
  });

  it('why O_RDWR and a socket: an O_RDONLY reader ends when its writer closes; a read stream fails on the non-blocking FIFO', async () => {
    const file = fifoPath();
    await ensureFifo(file);
    const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    const sock = new net.Socket({ fd, readable: true, writable: false });
    const seen: string[] = [];
    sock.on('data', (d: Buffer) => seen.push(d.toString()));
    sock.on('end', () => seen.push('END'));
    const sockClosed = new Promise((resolve) => sock.once('close', resolve));
    const w = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    fs.writeSync(w, 'INSTANCE "baton-prod" MASTER 200\n');
    fs.closeSync(w);
    await until('the end', () => seen.includes('END'), 2000);
    // The socket closes its descriptor asynchronously: a number reused meanwhile would be closed too.
    sock.destroy();
    await sockClosed;

    const fd2 = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    const stream = fs.createReadStream('', { fd: fd2 }).resume();
    const err = await new Promise<NodeJS.ErrnoException>((resolve) => stream.once('error', resolve));
    expect(err.code).toBe('EAGAIN');
    stream.destroy();
  });

  it('refuses a path that is not a FIFO, or a FIFO others may write', async () => {
    const file = path.join(tmp, 'regular.fifo');
    fs.writeFileSync(file, 'INSTANCE "baton-prod" MASTER 200\n');
    await expect(ensureFifo(file)).rejects.toThrow(/exists and is a regular file/);
    const real = fifoPath();
    await ensureFifo(real);
    const link = path.join(tmp, 'link.fifo');
    fs.symlinkSync(real, link);
    await expect(ensureFifo(link)).rejects.toThrow(/exists and is a symbolic link/);
    const dir = path.join(tmp, 'dir.fifo');
    fs.mkdirSync(dir);
    await expect(ensureFifo(dir)).rejects.toThrow(/exists and is a directory/);
    for (const mode of [0o622, 0o620, 0o666]) {
      const loose = fifoPath();
      execFileSync('mkfifo', ['-m', mode.toString(8), loose]);
      await expect(ensureFifo(loose)).rejects.toThrow(/writable by group or others/);
      await expect(VrrpState.open({ fifo: loose, instance: 'baton-prod', log: pino({ level: 'silent' }) })).rejects.toMatchObject({ code: 'E_CONFIG' });
    }
    await expect(ensureFifo('relative.fifo')).rejects.toThrow(/must be absolute/);
    await expect(ensureFifo(path.join(tmp, 'no-such-dir', 'x.fifo'))).rejects.toThrow(/cannot create notify FIFO/);
    // keepalived's own mode for a FIFO it creates (0644) is accepted.
    const kept = fifoPath();
    execFileSync('mkfifo', ['-m', '644', kept]);
    await expect(ensureFifo(kept)).resolves.toBeDefined();
  });

  it('drops a 1 MiB line without newline without buffering it, and reads the next line', async () => {
    const { reader, file, lines } = await open();
    const handle = await fs.promises.open(file, 'w');
    try {
      // A blocking write from the thread pool: it completes as the reader drains the pipe.
      await handle.write(Buffer.alloc(1 << 20, 'A'.charCodeAt(0)));
      await until('counted too long', () => reader.counts().tooLong === 1, 2000);
      expect(reader.counts().lines).toBe(0);
      await handle.write('\nINSTANCE "baton-prod" MASTER 200\n');
    } finally {
      await handle.close();
    }
    await until('MASTER after the long line', () => reader.state() === 'MASTER', 2000);
    expect(reader.counts()).toMatchObject({ tooLong: 1, lines: 1, states: 1 });
    // One warning, a short escaped prefix.
    const warned = lines.filter((l) => l.includes('too long'));
    expect(warned).toHaveLength(1);
    expect(warned[0]!.length).toBeLessThan(400);
  });

  it('ignores NUL, invalid UTF-8 and garbage, and keeps working through 100,000 hostile lines, logging sparsely', async () => {
    const { reader, file, lines, closed } = await open(fifoPath(), 64);
    const handle = await fs.promises.open(file, 'w');
    try {
      await handle.write(Buffer.from('INSTANCE "baton-prod"\0MASTER 200\n'));
      await handle.write(Buffer.from([...Buffer.from('INSTANCE "baton-prod" MASTER 2'), 0xff, 0xfe, 0x0a]));
      await handle.write(Buffer.from('INSTANCE "\u00e9" MASTER 200\n', 'utf8'));
      const flood = Buffer.concat(Array.from({ length: 100_000 }, (_, i) => Buffer.from(i % 10 === 0 ? `${'B'.repeat(100)}\n` : `\x1b[31m junk ${i}\n`)));
      await handle.write(flood);
      await handle.write('INSTANCE "baton-prod" FAULT 200\n');
    } finally {
      await handle.close();
    }
    await until('FAULT after the flood', () => reader.state() === 'FAULT', 10_000);
    expect(reader.counts()).toEqual({ lines: 3 + 90_000 + 1, states: 1, events: 0, otherInstances: 0, groups: 0, unknown: 3 + 90_000, tooLong: 10_000 });
    expect(closed).toEqual([]);
    // Sparse: the first ten of each kind, then every thousandth.
    // Sparse: the first ten of each kind, then every thousandth (90 more unknown, 10 more too long).
    const warnings = lines.filter((l) => l.includes('"level":40')).map((l) => ({ raw: l, ...(JSON.parse(l) as { line?: string; prefix?: string }) }));
    expect(warnings).toHaveLength(10 + 90 + 10 + 10);
    for (const w of warnings) {
      expect(w.raw.length).toBeLessThan(400);
      // What the writer sent appears as a short prefix, every byte outside printable ASCII escaped.
      expect(w.line ?? w.prefix).toMatch(/^[\x20-\x7e…]{1,80}$/);
    }
    expect(warnings[0]!.line).toBe('INSTANCE "baton-prod"\\u0000MASTER 200');
    expect(warnings.some((w) => w.line?.startsWith('\\u001b[31m junk'))).toBe(true);
  });

  it('learns MASTER from the address when the FIFO has said nothing', async () => {
    expect(await holdsAddress('lo', '127.0.0.1')).toBe(true);
    expect(await holdsAddress('lo', '192.0.2.99')).toBe(false);
    const { reader, states } = await open();
    expect(await reader.learnFromAddress('lo', '192.0.2.99')).toBeUndefined();
    expect(await reader.learnFromAddress('lo', '127.0.0.1')).toBe('MASTER');
    expect(states.map((s) => [s.state, s.source])).toEqual([['MASTER', 'address']]);
    // What the FIFO says wins over the address.
    const second = await open();
    const w = writer(second.file);
    fs.writeSync(w, 'INSTANCE "baton-prod" BACKUP 200\n');
    await until('BACKUP', () => second.reader.state() === 'BACKUP', 2000);
    expect(await second.reader.learnFromAddress('lo', '127.0.0.1')).toBe('BACKUP');
    await expect(holdsAddress('lo; reboot', '127.0.0.1')).rejects.toMatchObject({ code: 'E_CONFIG' });
    await expect(holdsAddress('lo', '127.0.0.1/8')).rejects.toMatchObject({ code: 'E_CONFIG' });
    await expect(holdsAddress('nosuchif9', '127.0.0.1')).rejects.toThrow(/cannot read the addresses of nosuchif9/);
  });
});
