// Routing-phase limits on real sockets over loopback: each bound closes what it must and nothing
// else, refused connections never reach the application, a handoff (a real RouterClient against a
// scripted batond) takes the socket out of the guard's reach, and nothing stays behind.
import net from 'node:net';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../../controller/log.js';
import { RouterClient } from '../../../controller/sdk/router.js';
import { type RoutingGuardOptions, type RoutingPhase, RoutingGuard } from '../../../controller/sdk/routing-guard.js';
import { sourceOf } from '../../../controller/flow.js';
import { Accepts } from '../../../controller/transfer/messages.js';
import { nativeSockets } from '../../../controller/transfer/sockets.js';
import { scriptedAgent } from '../../helpers/scripted-agent.js';
import { until } from '../../helpers/wait.js';

const cleanups: Array<() => void | Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

interface Served {
  guard: RoutingGuard;
  port: number;
  /** What the application was given, in accept order. */
  accepted: Array<{ socket: net.Socket; phase: RoutingPhase }>;
}

/**
 * A guarded echo server: the application answers every chunk with `ok <bytes so far>` and calls
 * decided() when a chunk contains DECIDE.
 */
async function serve(opts: RoutingGuardOptions): Promise<Served> {
  const guard = new RoutingGuard(opts);
  const accepted: Served['accepted'] = [];
  const server = net.createServer(
    guard.wrap((socket, phase) => {
      accepted.push({ socket, phase });
      socket.on('error', () => {});
      socket.on('data', (chunk: Buffer) => {
        if (chunk.includes('DECIDE')) phase.decided();
        socket.write(`ok ${phase.bytesReceived}\n`);
      });
    }),
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(async () => {
    guard.close();
    for (const a of accepted) a.socket.destroy();
    await new Promise((resolve) => server.close(resolve));
  });
  return { guard, port: (server.address() as net.AddressInfo).port, accepted };
}

interface Client {
  socket: net.Socket;
  received: () => string;
  /** How and when (ms after connect) the server ended the connection. */
  ended: Promise<{ how: 'reset' | 'eof'; ms: number }>;
}

async function connect(port: number, localAddress = '127.0.0.1', opts: { allowHalfOpen?: boolean } = {}): Promise<Client> {
  const socket = net.connect({ port, host: '127.0.0.1', localAddress, allowHalfOpen: opts.allowHalfOpen ?? false });
  cleanups.push(() => void socket.destroy());
  const t0 = performance.now();
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  // A refused connection can be reset before Node reports it connected: listen from the start.
  const ended = new Promise<{ how: 'reset' | 'eof'; ms: number }>((resolve) => {
    socket.once('error', (err: NodeJS.ErrnoException) => resolve({ how: err.code === 'ECONNRESET' ? 'reset' : 'eof', ms: performance.now() - t0 }));
    socket.once('end', () => resolve({ how: 'eof', ms: performance.now() - t0 }));
  });
  await Promise.race([new Promise((resolve) => socket.once('connect', resolve)), ended]);
  return { socket, received: () => Buffer.concat(chunks).toString(), ended };
}

/** Resolves to 'open' if nothing ended the connection within ms. */
const stillOpenAfter = (c: Client, ms: number) => Promise.race([c.ended.then((e) => e.how), sleep(ms).then(() => 'open' as const)]);

const noClosures = { idle: 0, deadline: 0, 'too-many-bytes': 0, 'per-source': 0, total: 0 };

describe('time bounds', () => {
  it('a client that sends nothing is reset after idleMs, and counted as idle', async () => {
    const s = await serve({ idleMs: 150, deadlineMs: 10_000 });
    const c = await connect(s.port);
    const end = await c.ended;
    expect(end.how).toBe('reset');
    expect(end.ms).toBeGreaterThanOrEqual(140);
    expect(end.ms).toBeLessThan(700);
    expect(s.guard.stats().closed).toEqual({ ...noClosures, idle: 1 });
    await until('the guard to let go', () => s.guard.size === 0);
  });

  it('bytes keep a client from idling out, but a trickle is still closed at the deadline', async () => {
    const s = await serve({ idleMs: 150, deadlineMs: 600 });
    const c = await connect(s.port);
    const trickle = setInterval(() => c.socket.writable && c.socket.write('x'), 50);
    cleanups.push(() => clearInterval(trickle));
    const end = await c.ended;
    expect(end.how).toBe('reset');
    expect(end.ms).toBeGreaterThanOrEqual(580);
    expect(end.ms).toBeLessThan(1200);
    // It was talking all along: the application saw the trickle.
    expect(s.accepted[0]!.phase.bytesReceived).toBeGreaterThanOrEqual(8);
    expect(s.guard.stats().closed).toEqual({ ...noClosures, deadline: 1 });
  });
});

describe('byte bound', () => {
  it('maxBytes is allowed; one byte more closes the connection', async () => {
    const s = await serve({ idleMs: 5000, deadlineMs: 10_000, maxBytes: 1000 });
    const c = await connect(s.port);
    c.socket.write('a'.repeat(1000));
    await until('the echo of 1000 bytes', () => c.received().includes('ok 1000'));
    expect(await stillOpenAfter(c, 100)).toBe('open');
    c.socket.write('b');
    // The application's echo of that byte and the reset arrive together, and libuv reports a
    // hang-up right after a partial read as an end: either way, the connection is gone.
    await c.ended;
    expect(c.socket.destroyed || c.socket.readableEnded).toBe(true);
    expect(s.guard.stats().closed).toEqual({ ...noClosures, 'too-many-bytes': 1 });
  });

  it('the chunk that carries the decision may run past the bound', async () => {
    const s = await serve({ idleMs: 5000, deadlineMs: 10_000, maxBytes: 100 });
    const c = await connect(s.port);
    // A client that sends its decisive line and the next 2000 bytes without waiting.
    c.socket.write(`${'a'.repeat(50)}DECIDE${'b'.repeat(2000)}`);
    await until('the echo', () => c.received().includes('ok'));
    expect(await stillOpenAfter(c, 150)).toBe('open');
    expect(s.guard.stats().closed).toEqual(noClosures);
    expect(s.guard.size).toBe(0);
    // Decided: from here the guard counts nothing, whatever the client sends.
    c.socket.write('c'.repeat(5000));
    expect(await stillOpenAfter(c, 150)).toBe('open');
  });
});

describe('admission', () => {
  it('beyond maxPerSource, connections from that address are reset before the application sees them; others are not affected', async () => {
    const s = await serve({ maxPerSource: 2 });
    const [a1, a2] = [await connect(s.port), await connect(s.port)];
    await until('two accepted', () => s.accepted.length === 2);
    const a3 = await connect(s.port);
    expect((await a3.ended).how).toBe('reset');
    expect(s.accepted).toHaveLength(2);
    // The first two still work.
    a1.socket.write('hi');
    a2.socket.write('hi');
    await until('both echoes', () => a1.received().includes('ok 2') && a2.received().includes('ok 2'));
    // Another address has its own bound.
    await connect(s.port, '127.0.0.2');
    await until('the other address accepted', () => s.accepted.length === 3);
    // A closed connection frees its slot.
    a1.socket.destroy();
    await until('the slot freed', () => s.guard.stats().active === 2);
    const a4 = await connect(s.port);
    expect(await stillOpenAfter(a4, 100)).toBe('open');
    expect(s.accepted).toHaveLength(4);
    expect(s.guard.stats().closed).toEqual({ ...noClosures, 'per-source': 1 });
  });

  it('beyond maxTotal, connections are reset at accept; a decision frees a slot', async () => {
    const s = await serve({ maxTotal: 2 });
    await connect(s.port, '127.0.0.1');
    await connect(s.port, '127.0.0.2');
    await until('two accepted', () => s.accepted.length === 2);
    const c3 = await connect(s.port, '127.0.0.3');
    expect((await c3.ended).how).toBe('reset');
    expect(s.accepted).toHaveLength(2);
    s.accepted[0]!.phase.decided();
    const c4 = await connect(s.port, '127.0.0.3');
    expect(await stillOpenAfter(c4, 100)).toBe('open');
    expect(s.accepted).toHaveLength(3);
    expect(s.guard.stats().closed).toEqual({ ...noClosures, total: 1 });
  });

  it('IPv6 sources count per /64 unless told another prefix; IPv4-mapped addresses as the IPv4 address', () => {
    expect(sourceOf('10.1.2.3')).toBe('10.1.2.3');
    expect(sourceOf('::ffff:10.1.2.3')).toBe('10.1.2.3');
    expect(sourceOf('2001:db8:1:2:3:4:5:6')).toBe('2001:db8:1:2::/64');
    expect(sourceOf('2001:db8:1:2:ffff::1')).toBe(sourceOf('2001:DB8:1:2::99'));
    expect(sourceOf('2001:db8::1')).toBe('2001:db8::/64');
    expect(sourceOf('fe80::1%eth0')).toBe('fe80::/64');
    expect(sourceOf('64:ff9b::10.0.0.1')).toBe('64:ff9b::/64');
    expect(sourceOf('::1')).toBe('::/64');
    // Another prefix length: a /56 per site, or every address on its own.
    expect(sourceOf('2001:db8:1:2ff:3:4:5:6', 56)).toBe('2001:db8:1:200::/56');
    expect(sourceOf('2001:db8:1:2ff:3:4:5:6', 56)).toBe(sourceOf('2001:db8:1:201::1', 56));
    expect(sourceOf('2001:db8:1:2:3:4:5:6', 128)).toBe('2001:db8:1:2:3:4:5:6/128');
    expect(sourceOf('2001:db8:1:2:3:4:5:6', 61)).toBe('2001:db8:1::/61');
    expect(sourceOf('10.1.2.3', 56)).toBe('10.1.2.3');
  });

  it('refuses an IPv6 source prefix outside 1-128', () => {
    expect(() => new RoutingGuard({ ipv6SourcePrefix: 129 })).toThrow(/ipv6SourcePrefix must be 1-128/);
    expect(() => new RoutingGuard({ ipv6SourcePrefix: 0 })).toThrow(/ipv6SourcePrefix/);
    expect(new RoutingGuard({ ipv6SourcePrefix: 56 }).limits.ipv6SourcePrefix).toBe(56);
  });
});

describe('closing with a reply', () => {
  it('the reply arrives whole, followed by a clean end, even with unread bytes behind it', async () => {
    const s = await serve({ maxBytes: 1000, reply: (reason) => `ERR ${reason}\n`, lingerMs: 1000 });
    const c = await connect(s.port);
    // 64 KiB in one go: most of it is still unread on the server when it gives up.
    c.socket.write(Buffer.alloc(65536, 'z'));
    const end = await c.ended;
    expect(end.how).toBe('eof');
    expect(c.received()).toMatch(/ERR too-many-bytes\n$/);
    // The application's reader was taken off the socket: nothing after its first echoes.
    expect(c.received().split('\n').filter((l) => l.startsWith('ok')).length).toBeLessThanOrEqual(1);
    await until('the drained socket to close', () => s.guard.size === 0);
  });

  it('a refused connection gets the reply too, and a client that never closes is reset after lingerMs', async () => {
    const s = await serve({ maxPerSource: 1, reply: (reason) => `ERR ${reason}\n`, lingerMs: 200 });
    await connect(s.port);
    await until('one accepted', () => s.accepted.length === 1);
    const refused = await connect(s.port, '127.0.0.1', { allowHalfOpen: true });
    const end = await refused.ended;
    expect(end.how).toBe('eof');
    expect(refused.received()).toBe('ERR per-source\n');
    expect(s.guard.stats().lingering).toBe(1);
    const t0 = Date.now();
    await until('the linger to end', () => s.guard.stats().lingering === 0);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(100);
    expect(s.accepted).toHaveLength(1);
  });

  it('no reply beyond maxLingering: a reset instead', async () => {
    const s = await serve({ maxPerSource: 1, reply: () => 'ERR\n', lingerMs: 2000, maxLingering: 1 });
    await connect(s.port);
    await until('one accepted', () => s.accepted.length === 1);
    const first = await connect(s.port, '127.0.0.1', { allowHalfOpen: true });
    expect((await first.ended).how).toBe('eof');
    const second = await connect(s.port, '127.0.0.1', { allowHalfOpen: true });
    expect((await second.ended).how).toBe('reset');
    expect(second.received()).toBe('');
  });
});

describe('counts, logs, leftovers', () => {
  it('counts every closure by reason, and logs one line per interval however many there are', async () => {
    const lines: Array<Record<string, unknown>> = [];
    const sink = new Writable({ write: (chunk: Buffer, _enc, cb) => (lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>), cb()) });
    const logger = pino({ level: 'info' }, sink);
    const s = await serve({ idleMs: 100, maxPerSource: 1, logger, logIntervalMs: 400 });
    await connect(s.port);
    await until('one accepted', () => s.accepted.length === 1);
    const refused = await Promise.all(Array.from({ length: 30 }, () => connect(s.port)));
    await Promise.all(refused.map((c) => c.ended));
    await until('the idle one to close', () => s.guard.stats().closed.idle === 1);
    expect(s.guard.stats().closed).toEqual({ ...noClosures, 'per-source': 30, idle: 1 });
    expect(lines.filter((l) => l.event === 'routing-limits')).toHaveLength(1);
    await until('the summary', () => lines.filter((l) => l.event === 'routing-limits').length === 2, 1000);
    const [first, summary] = lines.filter((l) => l.event === 'routing-limits');
    expect(first).toMatchObject({ level: 40, closed: { 'per-source': 1 } });
    expect(summary).toMatchObject({ closed: { 'per-source': 29, idle: 1 }, sources: { '127.0.0.1': 30 }, totals: { 'per-source': 30, idle: 1 } });
  });

  it('leaves no timer, listener or slot behind, whichever way the routing phase ended', async () => {
    const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const before = timers();
    const s = await serve({ idleMs: 1000, deadlineMs: 5000, maxBytes: 10 });
    const clients = await Promise.all(Array.from({ length: 8 }, () => connect(s.port)));
    await until('eight accepted', () => s.accepted.length === 8);
    expect(timers()).toBeGreaterThanOrEqual(before + 8);
    clients[0]!.socket.write('DECIDE');
    clients[1]!.socket.destroy();
    clients[2]!.socket.write('x'.repeat(20));
    // Long before any bound: a release takes its timer along at once.
    await until('three released', () => s.guard.size === 5);
    expect(timers()).toBeLessThanOrEqual(before + 5);
    // The other five idle out.
    await until('everything released', () => s.guard.size === 0, 3000);
    const decided = s.accepted.find((a) => !a.socket.destroyed)!;
    expect(decided.socket.listenerCount('data')).toBe(1);
    expect(decided.socket.listenerCount('close')).toBe(0);
    expect(s.guard.stats()).toEqual({ active: 0, lingering: 0, closed: { ...noClosures, idle: 5, 'too-many-bytes': 1 } });
    await sleep(20);
    expect(timers()).toBeLessThanOrEqual(before);
  });

  it('refuses nonsensical limits with the option named', () => {
    expect(() => new RoutingGuard({ idleMs: 0 })).toThrow(/idleMs must be a positive integer, got 0/);
    expect(() => new RoutingGuard({ maxBytes: 1.5 })).toThrow(/maxBytes/);
  });
});

describe('handoff takes the socket out of the guard (RouterClient against a scripted batond; needs CAP_NET_ADMIN)', () => {
  /**
   * Answers each handoff after `delayMs` with the given outcome, doing to the socket
   * what batond does (repair mode on; on failure off again) through the descriptor it was sent.
   */
  async function answeringAgent(outcome: 'done' | 'failed', delayMs: number): Promise<string> {
    const agent = await scriptedAgent(Accepts.agentFromRouter, { node: 'n1' }, ({ msg }, ch, descriptors) => {
      if (msg.type !== 'handoff') return;
      const fd = descriptors.take(msg.connId);
      expect(fd).toBeDefined();
      nativeSockets.snapshot(fd!);
      const t = setTimeout(() => {
        if (outcome === 'failed') {
          nativeSockets.resume(fd!);
          ch.send('failed', { connId: msg.connId, step: 'offer', code: 'E_REJECTED', reason: 'scripted refusal' });
        } else {
          ch.send('done', { connId: msg.connId, timings: { exportUs: 1, offerRttUs: 1, importUs: 1, freezeUs: 1, deltaUs: 1, commitRttUs: 1, routeUs: 1 } });
        }
        nativeSockets.release(fd!);
      }, delayMs);
      cleanups.push(() => clearTimeout(t));
    });
    cleanups.push(() => agent.close());
    return agent.socketPath;
  }

  async function routerWith(socketPath: string): Promise<RouterClient> {
    const router = await RouterClient.connect({ socketPath, name: 'guard-test', logger: createLogger({}, 'silent') });
    cleanups.push(() => router.close());
    return router;
  }

  it('a handoff slower than both bounds is not cut, and the moved socket leaves the guard', async () => {
    const router = await routerWith(await answeringAgent('done', 500));
    const s = await serve({ idleMs: 100, deadlineMs: 250, maxBytes: 10 });
    const c = await connect(s.port);
    await until('accepted', () => s.accepted.length === 1);
    const result = await router.handoff(s.accepted[0]!.socket, { node: 'n2', port: 7000 });
    expect(result.target.node).toBe('n2');
    // The routing node's socket closed silently (repair mode): the client saw nothing at all.
    expect(await stillOpenAfter(c, 300)).toBe('open');
    expect(s.guard.stats()).toEqual({ active: 0, lingering: 0, closed: noClosures });
  });

  it('a failed handoff gives the socket back to the routing phase, its time not counted against the client', async () => {
    const router = await routerWith(await answeringAgent('failed', 500));
    const s = await serve({ idleMs: 150, deadlineMs: 300 });
    const c = await connect(s.port);
    await until('accepted', () => s.accepted.length === 1);
    await expect(router.handoff(s.accepted[0]!.socket, { node: 'n2', port: 7000 })).rejects.toMatchObject({ code: 'E_REJECTED' });
    const returnedAt = performance.now();
    // Back with the application, reading, still guarded: echoes work, and then idle closes it,
    // not the deadline that would have passed during the handoff if its time counted.
    c.socket.write('hi');
    await until('the echo', () => c.received().includes('ok 2'));
    expect(s.guard.stats().active).toBe(1);
    expect((await c.ended).how).toBe('reset');
    expect(performance.now() - returnedAt).toBeGreaterThanOrEqual(140);
    expect(s.guard.stats().closed).toEqual({ ...noClosures, idle: 1 });
  });
});
