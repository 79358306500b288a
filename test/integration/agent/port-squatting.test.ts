// Another process holds one of batond's addresses when it starts (a second batond, one still
// exiting, anything configured on the same port): batond must exit with a status systemd acts on
// (75, restarted later; 78 for a config error, not restarted), an error naming the address and
// the holder's pid and command, and nothing half-started: no DVIPA on lo, no XDP program, no pins,
// no listener, and the holder's socket untouched. A stale agent socket file (its batond died) is
// removed; a live one is never taken over. The distributor's batond is the one started: it is the
// one that attaches XDP and pins maps.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { agentSocket, labProcesses } from '../../../controller/lab/cluster.js';
import type { LabDescription } from '../../../controller/lab/description.js';
import { labDown, labUp, type ProcessSpec } from '../../../controller/lab/lab.js';
import { inNamespace, ip } from '../../../controller/lab/netns.js';
import { type StartedProcess, startProcess, stopProcesses } from '../../../controller/lab/processes.js';

const prefix = `bt${randomBytes(3).toString('hex')}`;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${prefix}-`));
let lab: LabDescription;
let batond: ProcessSpec;
let confined: ProcessSpec;
const started: StartedProcess[] = [];
let runs = 0;

const n1 = () => lab.nodes.find((n) => n.name === lab.distributor)!;
const pinDir = () => `/sys/fs/bpf/baton/${prefix}-${n1().name}`;

beforeAll(async () => {
  lab = await labUp({
    prefix,
    dir,
    processes: (l) => {
      batond = labProcesses(l, { examples: false }).find((s) => s.name === `${l.distributor}-batond`)!;
      confined = labProcesses(l, { examples: false, unitCapabilities: [`${l.distributor}-batond`] }).find((s) => s.name === `${l.distributor}-batond`)!;
      return [];
    },
  });
});

afterEach(async () => {
  await stopProcesses(started.splice(0).map((p) => p.pid));
  fs.rmSync(agentSocket(lab, n1().name), { force: true });
  // What a batond that started anyway left (the original code did): the next case starts clean.
  await ip(n1().ns, ['address', 'del', `${lab.dvipa.address}/32`, 'dev', 'lo'], { step: 'test' }).catch(() => undefined);
  for (const mode of ['xdpdrv', 'xdpgeneric']) await ip(n1().ns, ['link', 'set', 'dev', n1().interface, mode, 'off'], { step: 'test' }).catch(() => undefined);
  fs.rmSync(pinDir(), { recursive: true, force: true });
});

afterAll(async () => {
  await labDown({ prefix, dir });
  fs.rmSync(dir, { recursive: true, force: true });
});

/** A python3 process in n1's namespace holding one socket until it is stopped. */
async function squat(kind: 'tcp' | 'udp' | 'unix', address: string, port = 0): Promise<StartedProcess> {
  const script = [
    'import socket, sys, time',
    `kind, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])`,
    `family = socket.AF_UNIX if kind == 'unix' else socket.AF_INET6 if ':' in address else socket.AF_INET`,
    `s = socket.socket(family, socket.SOCK_DGRAM if kind == 'udp' else socket.SOCK_STREAM)`,
    `s.bind(address if kind == 'unix' else (address, port))`,
    `kind == 'udp' or s.listen()`,
    `print('holding', flush=True)`,
    'time.sleep(600)',
  ].join('\n');
  const p = await startProcess({ name: `squatter-${++runs}`, ns: n1().ns, argv: ['python3', '-c', script, kind, address, String(port)] }, { runDir: lab.runDir, lab: prefix });
  started.push(p);
  for (let i = 0; !fs.readFileSync(p.logFile, 'utf8').includes('holding'); i++) {
    if (p.exit || i > 100) throw new Error(`squatter did not start: ${fs.readFileSync(p.logFile, 'utf8')}`);
    await sleep(50);
  }
  return p;
}

interface Outcome {
  /** The exit status, or 'ready' if batond started serving instead. */
  status: number | 'ready';
  lines: Array<Record<string, unknown>>;
  pid: number;
}

/** Starts n1's batond (argv changed by edit) and waits until it exits or says it is ready. */
async function runBatond(spec = batond, edit: (argv: string[]) => string[] = (a) => a): Promise<Outcome> {
  const p = await startProcess({ ...spec, name: `batond-${++runs}`, argv: edit([...spec.argv]) }, { runDir: lab.runDir, lab: prefix });
  started.push(p);
  const lines = () =>
    fs.readFileSync(p.logFile, 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
  for (let i = 0; i < 300; i++) {
    if (p.exit) return { status: p.exit.code ?? -1, lines: lines(), pid: p.pid };
    if (lines().some((l) => l.msg === 'batond ready')) return { status: 'ready', lines: lines(), pid: p.pid };
    await sleep(50);
  }
  throw new Error(`batond neither exited nor became ready: ${fs.readFileSync(p.logFile, 'utf8').slice(-2000)}`);
}

const fatal = (o: Outcome) => String(o.lines.find((l) => l.level === 60)?.err ?? '');

/** Listening sockets in n1's namespace, as "tcp 10.203.0.11:4700". */
async function listeners(): Promise<string[]> {
  const { stdout } = await inNamespace(n1().ns, ['ss', '-Hltun'], { step: 'test' });
  return stdout.trim().split('\n').filter(Boolean).map((l) => { const f = l.split(/\s+/); return `${f[0]} ${f[4]}`; }).sort();
}

/** What batond changes on the node when it starts: the DVIPA on lo, XDP, its pins, listeners. */
async function nodeState(): Promise<{ dvipaOnLo: boolean; xdp: boolean; pins: boolean; listeners: string[] }> {
  const lo = JSON.parse((await ip(n1().ns, ['-j', 'address', 'show', 'dev', 'lo'], { step: 'test' })).stdout) as Array<{ addr_info: Array<{ local: string }> }>;
  const eth = JSON.parse((await ip(n1().ns, ['-j', 'link', 'show', 'dev', n1().interface], { step: 'test' })).stdout) as Array<Record<string, unknown>>;
  return {
    dvipaOnLo: lo[0]!.addr_info.some((a) => a.local === lab.dvipa.address),
    xdp: eth[0]!.xdp !== undefined,
    pins: fs.existsSync(pinDir()),
    listeners: await listeners(),
  };
}

/** The start was refused with this status and error, and nothing of batond's is on the node but the holder's listener. */
async function expectRefused(o: Outcome, status: number, error: string | RegExp, holderListens: string[]): Promise<void> {
  expect({ status: o.status, error: fatal(o), node: await nodeState() }).toEqual({
    status,
    error: typeof error === 'string' ? expect.stringContaining(error) : expect.stringMatching(error),
    node: { dvipaOnLo: false, xdp: false, pins: false, listeners: holderListens.sort() },
  });
}

function connects(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ path: socketPath }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

describe('batond refuses to start on an address another process holds', () => {
  it('the peer port, held on the wildcard address: exit 75, the holder named, nothing started', async () => {
    const holder = await squat('tcp', '0.0.0.0', 4700);
    const o = await runBatond();
    await expectRefused(o, 75, `peer links (nodes[].peerPort), tcp ${n1().address}:4700 is in use by pid ${holder.pid} (`, ['tcp 0.0.0.0:4700']);
    // The command line, bounded, control characters escaped.
    expect(fatal(o)).toMatch(/ \(\S*python3 -c import socket, sys, time\\u000a.*…\(\d+ chars\)\)/);
  });

  it('the REST API port, held by a dual-stack IPv6 listener: exit 75, the holder named, nothing started', async () => {
    const holder = await squat('tcp', '::', 4702);
    const o = await runBatond();
    await expectRefused(o, 75, `REST API (api.port), tcp ${n1().address}:4702 is in use by pid ${holder.pid} (`, ['tcp *:4702']);
  });

  it('the control port (UDP): exit 75, the holder named, nothing started', async () => {
    const holder = await squat('udp', '127.0.0.1', 4701);
    const o = await runBatond();
    await expectRefused(o, 75, `control socket (controlPort), udp 127.0.0.1:4701 is in use by pid ${holder.pid} (`, ['udp 127.0.0.1:4701']);
  });

  it('the agent socket, live: exit 75, the holder named, its socket neither removed nor replaced', async () => {
    const file = agentSocket(lab, n1().name);
    const holder = await squat('unix', file);
    const inode = fs.statSync(file).ino;
    const o = await runBatond();
    await expectRefused(o, 75, `agent socket (nodes[].agentSocket) ${file} is in use by pid ${holder.pid} (`, []);
    expect(fs.statSync(file).ino).toBe(inode);
    expect(await connects(file)).toBe(true);
  });

  it('under the unit\'s capabilities, a holder it may not look into is still refused, and said so', async () => {
    await squat('tcp', n1().address, 4700);
    const o = await runBatond(confined);
    await expectRefused(o, 75, /peer links \(nodes\[\]\.peerPort\), tcp [\d.]+:4700 is in use by a process batond may not look into \(socket inode \d+; ss -lp as root names it\)/, [`tcp ${n1().address}:4700`]);
  });
});

describe('batond and what lies at its agent socket path', () => {
  it('removes a stale socket file (its batond died) and serves there', async () => {
    const file = agentSocket(lab, n1().name);
    const stale = await squat('unix', file);
    await stopProcesses([stale.pid]); // python does not unlink its socket file: stale now
    expect(fs.statSync(file).isSocket()).toBe(true);
    expect(await connects(file)).toBe(false);
    const o = await runBatond();
    expect(o.status).toBe('ready');
    expect(await connects(file)).toBe(true);
    await stopProcesses([o.pid]);
    expect(fs.existsSync(file)).toBe(false);
  });

  it('refuses a file that is not a socket, leaving it as it was: exit 78 (config)', async () => {
    const file = agentSocket(lab, n1().name);
    fs.writeFileSync(file, 'not a socket\n');
    const o = await runBatond();
    await expectRefused(o, 78, `agent socket (nodes[].agentSocket) ${file} exists and is not a socket: not removing it`, []);
    expect(fs.readFileSync(file, 'utf8')).toBe('not a socket\n');
  });
});

describe('batond exit statuses for systemd', () => {
  it('78 for a config error (a node the cluster file does not have): not restarted', async () => {
    const o = await runBatond(batond, (argv) => argv.map((a, i) => (argv[i - 1] === '--node' ? 'n9' : a)));
    await expectRefused(o, 78, 'node n9 is not in the cluster config', []);
  });

  it('64 for a wrong command line: not restarted', async () => {
    const o = await runBatond(batond, (argv) => argv.slice(0, argv.indexOf('--node')));
    expect({ status: o.status, node: await nodeState() }).toEqual({ status: 64, node: { dvipaOnLo: false, xdp: false, pins: false, listeners: [] } });
  });
});
