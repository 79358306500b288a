// The handoff through every layer in the namespace lab: data queued in both directions when the
// connection moves, a client that keeps sending during the export, the old socket silent (no FIN,
// no RST from the routing node), the routing-table entry installed and XDP steering the flow, and
// a malformed transfer message that changes nothing, and an application hello batond cannot give
// a descriptor link to.
import { type ChildProcess, spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { inClient, lineClient, readLog } from '../../../controller/lab/demo.js';
import net from 'node:net';
import { agentSocket, certsDir } from '../../../controller/lab/cluster.js';
import { metricsOf } from '../../helpers/api.js';
import { createLogger } from '../../../controller/log.js';
import { Channel } from '../../../controller/transfer/channel.js';
import { Accepts } from '../../../controller/transfer/messages.js';
import { useLab } from '../../helpers/lab.js';

const running = useLab();

const results = (stdout: string) => stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
const n1 = () => running.lab.nodes.find((n) => n.name === 'n1')!;
const steered = () => running.routes.stats().steered.packets;

/**
 * FIN and RST segments from the DVIPA seen on the client's wire, by source MAC: the routing node's
 * must stay at zero; the target's FIN at the end proves the capture sees what it should.
 */
function captureFinRst(): { proc: ChildProcess; bySource: () => Promise<Map<string, number>> } {
  const filter = `tcp and src host ${running.lab.dvipa.address} and (tcp[tcpflags] & (tcp-fin|tcp-rst) != 0)`;
  const proc = spawn('ip', ['netns', 'exec', running.lab.client.ns, 'tcpdump', '-i', running.lab.client.interface, '-nn', '-e', '-l', '-U', filter], { stdio: ['ignore', 'pipe', 'pipe'] });
  const counts = new Map<string, number>();
  let partial = '';
  proc.stdout!.on('data', (b: Buffer) => {
    const lines = (partial + b.toString()).split('\n');
    partial = lines.pop()!;
    for (const l of lines) {
      const mac = l.split(' ')[1] ?? '';
      counts.set(mac, (counts.get(mac) ?? 0) + 1);
    }
  });
  return {
    proc,
    bySource: async () => {
      await sleep(300);
      proc.kill('SIGINT');
      await new Promise((r) => proc.once('exit', r));
      return counts;
    },
  };
}

async function waitForCapture(proc: ChildProcess): Promise<void> {
  await new Promise<void>((resolve) => {
    const onData = (b: Buffer) => {
      if (b.toString().includes('listening on')) resolve();
    };
    proc.stderr!.on('data', onData);
    setTimeout(resolve, 3000);
  });
}

describe('handoff in the namespace lab', () => {
  it('moves a connection with data queued in both directions; the client keeps sending throughout', async () => {
    const cap = captureFinRst();
    await waitForCapture(cap.proc);
    const steeredBefore = steered();
    // MOTD: 200 kB the router writes and the client reads only after the move (the routing node's
    // send queue). USER and a 4 MB PUT are sent at once: bytes arrive before, during and after the export.
    const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'bob', '--expect-node', 'n3', '--motd', '200000', '--put', '4000000', '--stream-during-handoff']), 60_000);
    const [res] = results(r.stdout);
    expect(res, r.stderr).toMatchObject({ ok: true, motd_ok: true, put_ok: true, served_by: 'n3', clean_close: true });
    const finRst = await cap.bySource();
    expect(finRst.get(n1().mac) ?? 0).toBe(0);
    expect(finRst.get(running.lab.nodes.find((n) => n.name === 'n3')!.mac) ?? 0).toBeGreaterThan(0);
    expect(steered()).toBeGreaterThan(steeredBefore);
    const handed = readLog(running.lab, 'n1-line-router').filter((l) => l.event === 'handed-off').pop()!;
    expect(handed).toBeDefined();
  });

  it('loses nothing the client sends while the router waits for Node to flush its last reply', async () => {
    // A 1 MB MOTD is still in Node's write buffer when USER arrives; the client reads it while
    // uploading 4 MB, so its bytes keep coming during the wait. They must stay in the kernel queue.
    const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'alice', '--expect-node', 'n2', '--motd', '1000000', '--put', '4000000', '--stream-during-handoff', '--read-while-sending']), 60_000);
    const [res] = results(r.stdout);
    expect(res, r.stderr).toMatchObject({ ok: true, motd_ok: true, put_ok: true, served_by: 'n2' });
  });

  it('installs a forward entry for the client 4-tuple and counts steered packets on it', async () => {
    const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'alice', '--expect-node', 'n2', '--get', '100000']), 30_000);
    const [res] = results(r.stdout);
    expect(res).toMatchObject({ ok: true });
    const [addr, port] = String(res!.local).split(':');
    const flow = { family: 4 as const, clientAddress: addr!, clientPort: Number(port), vipAddress: running.lab.dvipa.address, vipPort: 7000 };
    // The client has closed: TCP is done with the connection on n2 by the close watcher's first
    // look, so n2 reports it finished (no release first), and the entry becomes FINISHED (still
    // forwarding for the grace period, the counters kept) rather than FORWARD.
    await expect.poll(() => running.routes.get(flow)?.state, { timeout: 5000, interval: 50 }).toBe('finished');
    const entry = running.routes.get(flow);
    expect(entry).toMatchObject({ state: 'finished', targetMac: running.lab.nodes.find((n) => n.name === 'n2')!.mac });
    expect(entry!.packets).toBeGreaterThan(0n);
  });

  it('an application hello batond cannot give a descriptor link to is refused, saying why', async () => {
    const refusals = () => readLog(running.lab, 'n2-batond').filter((l) => String(l.msg).startsWith('application hello refused'));
    const before = refusals().length;
    /** Says hello on n2's application socket; resolves when batond closes the link (it must). */
    const helloThenClosed = (hello: Record<string, unknown>) =>
      new Promise<void>((resolve, reject) => {
        const ch = new Channel(net.connect({ path: agentSocket(running.lab, 'n2') }), Accepts.target, createLogger({}, 'silent'));
        const timer = setTimeout(() => reject(new Error('batond kept the link open')), 5000);
        ch.socket.once('connect', () => ch.send('hello', { role: 'target', name: 'old-sdk', ports: [7000], ...hello }));
        ch.on('message', (d) => reject(new Error(`batond answered ${d.msg.type}`)));
        ch.once('close', () => (clearTimeout(timer), resolve()));
      });
    // An SDK from before the descriptor link names no inbox.
    await helloThenClosed({});
    // An inbox nobody listens on (an application in another network namespace looks the same).
    await helloThenClosed({ fdAddress: 'nobody-listens-here' });
    const refused = refusals().slice(before);
    expect(refused).toHaveLength(2);
    expect(refused[0]).toMatchObject({ why: expect.stringContaining('no descriptor inbox') });
    expect(refused[1]).toMatchObject({ msg: 'application hello refused: cannot send it the descriptor link', err: expect.stringContaining('ECONNREFUSED') });
    // The node's real targets are untouched: a handoff to n2 still works.
    const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'alice', '--expect-node', 'n2', '--get', '1000']), 30_000);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, served_by: 'n2' });
  });

  it('a malformed transfer message on the peer port is logged and changes nothing', async () => {
    const n2 = running.lab.nodes.find((n) => n.name === 'n2')!;
    const frozenBefore = [...running.routes.entries()].filter(([, e]) => e.state === 'frozen').length;
    // A well-framed frame whose header fails the schema, on an authenticated link: n1's
    // certificate, from n1's address (peer-auth.test.ts covers links that are not).
    const certs = certsDir(running.lab);
    const script = [
      'import socket, ssl, struct, json, time',
      `ctx = ssl.create_default_context(cafile="${certs}/ca.crt")`,
      'ctx.check_hostname = False',
      `ctx.load_cert_chain("${certs}/n1.crt", "${certs}/n1.key")`,
      `s = ctx.wrap_socket(socket.create_connection(("${n2.address}", 4700), source_address=("${n1().address}", 0)))`,
      'def frame(h, blob=b""):',
      '    j = json.dumps(h).encode()',
      '    return struct.pack(">II", 4 + len(j) + len(blob), len(j)) + j + blob',
      's.sendall(frame({"v": 1, "type": "hello", "role": "peer", "name": "n1"}))',
      's.sendall(frame({"v": 1, "type": "offer", "connId": "forged", "from": "n1", "conn": {"family": 4}}))',
      's.sendall(frame({"v": 1, "type": "launch-missiles"}))',
      'time.sleep(0.3)',
      's.close()',
    ].join('\n');
    execFileSync('ip', ['netns', 'exec', n1().ns, 'python3', '-c', script]);
    await sleep(200);
    const n2log = readLog(running.lab, 'n2-batond');
    expect(n2log.some((l) => l.msg === 'message rejected' && String(l.err).includes('invalid offer'))).toBe(true);
    expect(n2log.some((l) => l.msg === 'message rejected' && String(l.err).includes('unexpected message type'))).toBe(true);
    // Counted by reason where operators look.
    const metrics = metricsOf(running.lab, 'n2');
    expect(metrics).toMatch(/^baton_transfer_rejected_total\{reason="schema",node="n2"\} [1-9]/m);
    expect(metrics).toMatch(/^baton_transfer_rejected_total\{reason="unexpected-type",node="n2"\} [1-9]/m);
    expect([...running.routes.entries()].filter(([, e]) => e.state === 'frozen').length).toBe(frozenBefore);
    // The cluster still hands off.
    const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'alice', '--expect-node', 'n2', '--get', '1000']), 30_000);
    expect(results(r.stdout)[0]).toMatchObject({ ok: true });
  });
});
