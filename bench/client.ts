// The client side of `make bench`, run inside the lab's client namespace (one process per
// measurement, started by the suite). Plain sockets only: the client is an ordinary TCP client and
// measures with its own clock. Each subcommand prints one JSON object on stdout and stops by itself:
// every wait has a time bound.
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { Command } from 'commander';
import { monotonicUs } from '../controller/clock.js';
import { patternChunk } from '../examples/line/pattern.js';

const PASSWORDS: Record<string, string> = { alice: 'wonderland', bob: 'builder' };
const now = () => performance.now();
const us = (ms: number) => Math.round(ms * 1000);

/** Reads a socket as lines and raw byte counts, with a bound on every wait. */
class Reader {
  private buf: Buffer = Buffer.alloc(0);
  private waiter: (() => void) | undefined;
  private ended: Error | undefined;
  /** Bytes counted by drain() instead of being buffered. */
  private draining: { left: number; done: () => void } | undefined;
  firstByteAt = 0;

  constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      if (this.firstByteAt === 0) this.firstByteAt = now();
      if (this.draining) {
        const used = Math.min(chunk.length, this.draining.left);
        this.draining.left -= used;
        chunk = chunk.subarray(used);
        if (this.draining.left === 0) {
          const d = this.draining;
          this.draining = undefined;
          d.done();
        }
        if (chunk.length === 0) return;
      }
      this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
      this.waiter?.();
    });
    const end = (err?: Error) => {
      this.ended ??= err ?? new Error('connection closed');
      this.waiter?.();
    };
    socket.on('error', end);
    socket.on('close', () => end());
  }

  private async until<T>(take: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
    const deadline = now() + timeoutMs;
    for (;;) {
      const v = take();
      if (v !== undefined) return v;
      if (this.ended) throw new Error(`${what}: ${this.ended.message}`);
      const left = deadline - now();
      if (left <= 0) throw new Error(`${what}: no answer within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          this.waiter = undefined;
          resolve();
        };
      });
    }
  }

  line(timeoutMs: number, what = 'line'): Promise<string> {
    return this.until(() => {
      const nl = this.buf.indexOf(0x0a);
      if (nl < 0) return undefined;
      const line = this.buf.subarray(0, nl).toString('utf8');
      this.buf = this.buf.subarray(nl + 1);
      return line;
    }, timeoutMs, what);
  }

  /** One HTTP/1.1 response with a Content-Length body. */
  response(timeoutMs: number): Promise<{ status: number; headers: Map<string, string>; body: string }> {
    return this.until(() => {
      const end = this.buf.indexOf('\r\n\r\n');
      if (end < 0) return undefined;
      const lines = this.buf.subarray(0, end).toString('latin1').split('\r\n');
      const headers = new Map<string, string>();
      for (const l of lines.slice(1)) {
        const i = l.indexOf(':');
        if (i > 0) headers.set(l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim());
      }
      // The servers measured here all send sized bodies; anything else would be misread as the next response.
      if (headers.has('transfer-encoding')) throw new Error(`unsupported Transfer-Encoding ${headers.get('transfer-encoding')}`);
      const length = Number(headers.get('content-length') ?? '0');
      if (this.buf.length < end + 4 + length) return undefined;
      const body = this.buf.subarray(end + 4, end + 4 + length).toString('utf8');
      this.buf = this.buf.subarray(end + 4 + length);
      return { status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '')?.[1] ?? 0), headers, body };
    }, timeoutMs, 'response');
  }

  /** Counts n bytes without keeping them (a bulk download). */
  drain(n: number, timeoutMs: number): Promise<void> {
    const have = Math.min(n, this.buf.length);
    this.buf = this.buf.subarray(have);
    if (have === n) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`download: ${n - (this.draining?.left ?? 0)} of ${n} bytes after ${timeoutMs} ms`)), timeoutMs);
      this.draining = {
        left: n - have,
        done: () => {
          clearTimeout(t);
          resolve();
        },
      };
      this.socket.once('close', () => {
        clearTimeout(t);
        if (this.draining) reject(new Error(`download: connection closed with ${this.draining.left} bytes missing`));
      });
    });
  }
}

function connect(host: string, port: number, timeoutMs: number, localAddress?: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port, noDelay: true, ...(localAddress ? { localAddress } : {}) });
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error(`connect to ${host}:${port}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(t);
      resolve(s);
    });
    s.once('error', (err) => {
      clearTimeout(t);
      reject(err);
    });
  });
}

/** HELLO / USER: the routing conversation; resolves once the target has greeted from its node. */
async function login(r: Reader, user: string, timeoutMs: number): Promise<{ node: string; handoffUs: number; userTx: number; okRx: number }> {
  r.socket.write('HELLO\n');
  const who = await r.line(timeoutMs, 'HELLO');
  if (who !== 'WHO?') throw new Error(`HELLO answered ${JSON.stringify(who)}`);
  const t = now();
  const userTx = monotonicUs();
  r.socket.write(`USER ${user}\n`);
  const ok = await r.line(timeoutMs, 'USER');
  const okRx = monotonicUs();
  const m = /^OK (\S+)$/.exec(ok);
  if (!m) throw new Error(`USER answered ${JSON.stringify(ok)}`);
  return { node: m[1]!, handoffUs: us(now() - t), userTx, okRx };
}

function closeAndWait(s: net.Socket, timeoutMs: number): Promise<void> {
  return new Promise((resolve) => {
    if (s.destroyed) return resolve();
    const t = setTimeout(() => {
      s.destroy();
      resolve();
    }, timeoutMs);
    s.once('close', () => {
      clearTimeout(t);
      resolve();
    });
    s.end();
  });
}

function print(o: unknown): void {
  process.stdout.write(`${JSON.stringify(o)}\n`);
}

const program = new Command().name('bench-client');

program
  .command('probe')
  .description('wait until every host:port accepts a connection')
  .requiredOption('--targets <list>', 'host:port,host:port')
  .option('--timeout-ms <ms>', 'overall bound', '20000')
  .action(async (o: { targets: string; timeoutMs: string }) => {
    const deadline = now() + Number(o.timeoutMs);
    const pending = o.targets.split(',').filter(Boolean);
    while (pending.length) {
      const [host, port] = pending[0]!.split(':');
      try {
        const s = await connect(host!, Number(port), 1000);
        s.destroy();
        pending.shift();
      } catch (err) {
        if (now() > deadline) {
          print({ ok: false, pending, err: (err as Error).message });
          process.exitCode = 1;
          return;
        }
        await sleep(100);
      }
    }
    print({ ok: true });
  });

program
  .command('handoffs')
  .description('connections that each log in (one handoff) and close; concurrency bounds those in flight')
  .requiredOption('--host <address>')
  .requiredOption('--port <port>')
  .requiredOption('--count <n>')
  .option('--concurrency <n>', 'connections in flight at once', '1')
  .option('--users <list>', 'users, taken in turn', 'alice,bob')
  .option('--timeout-ms <ms>', 'bound on each wait', '10000')
  .option('--trace', "per handoff, the connection's local port and the monotonic clock (µs) as USER left and as OK arrived")
  .action(async (o: { host: string; port: string; count: string; concurrency: string; users: string; timeoutMs: string; trace?: boolean }) => {
    const count = Number(o.count);
    const users = o.users.split(',');
    const timeout = Number(o.timeoutMs);
    const handoffUs: number[] = [];
    const trace: Array<[number, number, number]> = [];
    const errors = new Map<string, number>();
    const nodes: Record<string, number> = {};
    const closing: Array<Promise<void>> = [];
    let next = 0;
    const t0 = now();
    const worker = async () => {
      while (next < count) {
        const i = next++;
        try {
          const s = await connect(o.host, Number(o.port), timeout);
          const r = new Reader(s);
          const got = await login(r, users[i % users.length]!, timeout);
          handoffUs.push(got.handoffUs);
          if (o.trace) trace.push([s.localPort!, got.userTx, got.okRx]);
          nodes[got.node] = (nodes[got.node] ?? 0) + 1;
          closing.push(closeAndWait(s, timeout));
        } catch (err) {
          const why = (err as Error).message.replace(/\d+/g, 'N');
          errors.set(why, (errors.get(why) ?? 0) + 1);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(count, Number(o.concurrency)) }, worker));
    const elapsedMs = now() - t0;
    await Promise.all(closing);
    print({ ok: handoffUs.length, failed: count - handoffUs.length, errors: Object.fromEntries(errors), elapsedMs, nodes, handoffUs, ...(o.trace ? { trace } : {}) });
  });

program
  .command('transfer')
  .description('one bulk GET or PUT, after a login through the router (--user) or straight away')
  .requiredOption('--host <address>')
  .requiredOption('--port <port>')
  .requiredOption('--op <get|put>')
  .requiredOption('--bytes <n>')
  .option('--user <name>', 'log in first (HELLO/USER): the connection is handed off')
  .option('--expect-sha <hex>', 'the SHA-256 the server must report for a PUT')
  .option('--timeout-ms <ms>', 'bound on the transfer', '120000')
  .action(async (o: { host: string; port: string; op: string; bytes: string; user?: string; expectSha?: string; timeoutMs: string }) => {
    const n = Number(o.bytes);
    const timeout = Number(o.timeoutMs);
    const s = await connect(o.host, Number(o.port), 10_000);
    const r = new Reader(s);
    const node = o.user ? (await login(r, o.user, 10_000)).node : undefined;
    let ms: number;
    let sha: string | undefined;
    if (o.op === 'get') {
      const t = now();
      s.write(`GET ${n}\n`);
      await r.drain(n, timeout);
      ms = now() - t;
    } else {
      // The same 1 MiB block over and over: what it hashes to is known in advance (--expect-sha).
      const block = patternChunk(0, 1 << 20);
      const t = now();
      s.write(`PUT ${n}\n`);
      let left = n;
      while (left > 0) {
        const piece = left >= block.length ? block : block.subarray(0, left);
        left -= piece.length;
        if (!s.write(piece)) await new Promise<void>((resolve) => s.once('drain', resolve));
      }
      const answer = await r.line(timeout, 'PUT');
      ms = now() - t;
      sha = /^SHA256 ([0-9a-f]{64})$/.exec(answer)?.[1];
      if (!sha) throw new Error(`PUT answered ${JSON.stringify(answer)}`);
      if (o.expectSha && sha !== o.expectSha) throw new Error(`PUT: server hashed ${sha}, sent ${o.expectSha}`);
    }
    s.write('QUIT\n');
    const bye = await r.line(10_000, 'QUIT');
    s.destroy();
    print({ ok: bye === 'BYE', op: o.op, bytes: n, ms, gbps: (n * 8) / (ms / 1000) / 1e9, node, sha });
  });

/** The Digest answer curl would send (RFC 7616, MD5, qop=auth). */
function digestHeader(user: string, challenge: string, method: string, uri: string, nc: number): string {
  const param = (k: string) => new RegExp(`${k}="([^"]*)"`).exec(challenge)?.[1] ?? '';
  const realm = param('realm');
  const nonce = param('nonce');
  const md5 = (s: string) => createHash('md5').update(s).digest('hex');
  const cnonce = randomBytes(8).toString('hex');
  const ncs = nc.toString(16).padStart(8, '0');
  const response = md5(`${md5(`${user}:${realm}:${PASSWORDS[user] ?? ''}`)}:${nonce}:${ncs}:${cnonce}:auth:${md5(`${method}:${uri}`)}`);
  return `Digest username="${user}", realm="${realm}", nonce="${nonce}", uri="${uri}", algorithm=MD5, qop=auth, nc=${ncs}, cnonce="${cnonce}", response="${response}"`;
}

const request = (host: string, uri: string, auth?: string) =>
  `GET ${uri} HTTP/1.1\r\nHost: ${host}\r\nUser-Agent: baton-bench\r\nAccept: */*\r\n${auth ? `Authorization: ${auth}\r\n` : ''}\r\n`;

/** Connect, be challenged, authenticate: resolves with the authenticated response and its timing. */
async function authenticate(host: string, port: number, user: string, timeoutMs: number) {
  const t0 = now();
  const s = await connect(host, port, timeoutMs);
  const r = new Reader(s);
  s.write(request(host, '/'));
  const challenge = await r.response(timeoutMs);
  if (challenge.status !== 401) throw new Error(`first request answered ${challenge.status}`);
  const auth = digestHeader(user, challenge.headers.get('www-authenticate') ?? '', 'GET', '/', 1);
  r.firstByteAt = 0;
  s.write(request(host, '/', auth));
  const res = await r.response(timeoutMs);
  if (res.status !== 200) throw new Error(`authenticated request answered ${res.status}`);
  return { s, r, auth, firstByteUs: us(r.firstByteAt - t0), servedBy: res.headers.get('x-served-by') ?? '?' };
}

program
  .command('http-first')
  .description('new connections, one after another: time from connect to the first byte of the authenticated answer')
  .requiredOption('--host <address>')
  .requiredOption('--port <port>')
  .requiredOption('--count <n>')
  .option('--user <name>', 'user', 'alice')
  .option('--timeout-ms <ms>', 'bound on each wait', '10000')
  .action(async (o: { host: string; port: string; count: string; user: string; timeoutMs: string }) => {
    const samples: number[] = [];
    const servedBy: Record<string, number> = {};
    for (let i = 0; i < Number(o.count); i++) {
      const a = await authenticate(o.host, Number(o.port), o.user, Number(o.timeoutMs));
      samples.push(a.firstByteUs);
      servedBy[a.servedBy] = (servedBy[a.servedBy] ?? 0) + 1;
      a.s.destroy();
    }
    print({ samples, servedBy });
  });

program
  .command('http-later')
  .description('one connection: authenticate, then keep-alive requests one after another, each timed')
  .requiredOption('--host <address>')
  .requiredOption('--port <port>')
  .requiredOption('--requests <n>')
  .option('--user <name>', 'user', 'alice')
  .option('--timeout-ms <ms>', 'bound on each wait', '10000')
  .action(async (o: { host: string; port: string; requests: string; user: string; timeoutMs: string }) => {
    const timeout = Number(o.timeoutMs);
    const a = await authenticate(o.host, Number(o.port), o.user, timeout);
    const samples: number[] = [];
    // Every request carries the credentials: a plain server behind a proxy checks each one, as the
    // proxy may share its server connection; the transferred connection's target ignores them.
    const req = request(o.host, '/again', a.auth);
    for (let i = 0; i < Number(o.requests); i++) {
      const t = now();
      a.s.write(req);
      const res = await a.r.response(timeout);
      samples.push(us(now() - t));
      if (res.status !== 200) throw new Error(`request ${i} answered ${res.status}`);
    }
    a.s.destroy();
    print({ samples, servedBy: a.servedBy });
  });

program
  .command('stall')
  .description('log in and keep sending small PUTs during the handoff; time each answer')
  .requiredOption('--host <address>')
  .requiredOption('--port <port>')
  .requiredOption('--count <n>', 'connections, one after another')
  .option('--login', 'HELLO/USER first (through the router); without it, a direct connection')
  .option('--user <name>', 'user', 'alice')
  .option('--puts <n>', 'PUTs per connection, one per --interval-ms', '60')
  .option('--measured <n>', 'how many of the first PUTs are timed (the rest keep the client sending)', '40')
  .option('--put-bytes <n>', 'bytes per PUT', '1024')
  .option('--interval-ms <ms>', 'pause between PUTs', '1')
  .option('--timeout-ms <ms>', 'bound on each wait', '10000')
  .action(async (o: { host: string; port: string; count: string; login?: boolean; user: string; puts: string; measured: string; putBytes: string; intervalMs: string; timeoutMs: string }) => {
    const timeout = Number(o.timeoutMs);
    const puts = Number(o.puts);
    // The last answers are left out: once the client stops sending, its delayed ACK meets the
    // server's Nagle on the final SHA256 line (up to 40 ms on any TCP connection, moved or not).
    const measured = Math.min(puts, Number(o.measured));
    const body = patternChunk(0, Number(o.putBytes));
    const expected = createHash('sha256').update(body).digest('hex');
    const results: Array<{ firstByteUs: number; longestWaitUs: number; handoffUs: number; putsDuringHandoff: number; stallUs: number }> = [];
    for (let c = 0; c < Number(o.count); c++) {
      const s = await connect(o.host, Number(o.port), timeout);
      const r = new Reader(s);
      const sentAt: number[] = [];
      let handoffUs = 0;
      let putsDuringHandoff = 0;
      let okAt = 0;
      let t0: number;
      let greeting: Promise<string> | undefined;
      if (o.login) {
        s.write('HELLO\n');
        if ((await r.line(timeout, 'HELLO')) !== 'WHO?') throw new Error('HELLO not answered');
        t0 = now();
        s.write(`USER ${o.user}\n`);
        greeting = r.line(timeout, 'USER');
      } else {
        t0 = now();
      }
      // Sends on its own clock while the answers are read: PUTs keep leaving during the handoff.
      const sender = (async () => {
        for (let i = 0; i < puts; i++) {
          sentAt.push(now());
          s.write(`PUT ${body.length}\n`);
          s.write(body);
          await sleep(Number(o.intervalMs));
        }
      })();
      if (greeting) {
        const ok = await greeting;
        if (!/^OK \S+$/.test(ok)) throw new Error(`USER answered ${JSON.stringify(ok)}`);
        okAt = now();
        handoffUs = us(okAt - t0);
        putsDuringHandoff = sentAt.filter((t) => t < okAt).length;
      }
      let firstByteUs = 0;
      let longestWaitUs = 0;
      // After the greeting (the connection is live on the target), how long until every PUT sent
      // while it moved has its answer: ~0 unless some of them must be retransmitted.
      let stallUs = 0;
      for (let i = 0; i < puts; i++) {
        const answer = await r.line(timeout, `PUT ${i}`);
        const at = now();
        if (answer !== `SHA256 ${expected}`) throw new Error(`PUT ${i} answered ${JSON.stringify(answer)}`);
        if (i === 0) firstByteUs = us(at - t0);
        if (i < measured) longestWaitUs = Math.max(longestWaitUs, us(at - sentAt[i]!));
        if (i < putsDuringHandoff) stallUs = Math.max(stallUs, us(at - okAt));
      }
      await sender;
      s.write('QUIT\n');
      await r.line(timeout, 'QUIT');
      s.destroy();
      results.push({ firstByteUs, longestWaitUs, handoffUs, putsDuringHandoff, stallUs });
    }
    print({ results });
  });

program
  .command('first-served')
  .description('a new connection every --every-ms (each its own login) until one is greeted by --expect-node: the first client served, e.g. after a takeover')
  .requiredOption('--host <address>')
  .requiredOption('--port <port>')
  .option('--user <name>', 'user', 'bob')
  .option('--expect-node <node>', 'the node whose greeting counts', 'n3')
  .option('--every-ms <ms>', 'a new attempt this often, earlier ones left running', '50')
  .option('--attempt-timeout-ms <ms>', 'bound on each attempt', '3000')
  .option('--bound-ms <ms>', 'no new attempt after this long', '15000')
  .option('--start-file <path>', 'the first attempt once this file exists (polled every ms; the process is started earlier, so its own start is not timed)')
  .option('--start-within-ms <ms>', 'bound on the wait for --start-file', '30000')
  .action(async (o: { host: string; port: string; user: string; expectNode: string; everyMs: string; attemptTimeoutMs: string; boundMs: string; startFile?: string; startWithinMs: string }) => {
    for (const deadline = Date.now() + Number(o.startWithinMs); o.startFile && !fs.existsSync(o.startFile); await sleep(1)) {
      if (Date.now() > deadline) {
        print({ ok: false, error: `${o.startFile} did not appear within ${o.startWithinMs} ms` });
        process.exit(1);
      }
    }
    // Epoch milliseconds, comparable with the lab's log lines and the suite's clock.
    const startedAtMs = Date.now();
    const timeout = Number(o.attemptTimeoutMs);
    const errors = new Map<string, number>();
    const sockets = new Set<net.Socket>();
    let served: { servedAtMs: number; attemptStartedAtMs: number; attempt: number } | undefined;
    let attempts = 0;
    let pending = 0;
    const attempt = async (i: number) => {
      const t = Date.now();
      let s: net.Socket | undefined;
      pending++;
      try {
        s = await connect(o.host, Number(o.port), timeout);
        sockets.add(s);
        const got = await login(new Reader(s), o.user, timeout);
        if (got.node !== o.expectNode) throw new Error(`greeted by ${got.node}`);
        served ??= { servedAtMs: Date.now(), attemptStartedAtMs: t, attempt: i };
      } catch (err) {
        // One given up on once another was served is not an error.
        if (!served) {
          const why = (err as Error).message.replace(/\d+/g, 'N');
          errors.set(why, (errors.get(why) ?? 0) + 1);
        }
      } finally {
        pending--;
        if (s) {
          sockets.delete(s);
          s.destroy();
        }
      }
    };
    // New attempts until one is served or the bound has passed; then the last ones may still answer.
    while (!served && (Date.now() - startedAtMs < Number(o.boundMs) || pending > 0)) {
      if (Date.now() - startedAtMs < Number(o.boundMs)) void attempt(attempts++);
      await sleep(Number(o.everyMs));
    }
    for (const s of sockets) s.destroy();
    print({ ok: served !== undefined, startedAtMs, ...served, attempts, errors: Object.fromEntries(errors) });
    process.exit(0);
  });

program.parseAsync().catch((err: unknown) => {
  print({ error: (err as Error).message });
  process.exitCode = 1;
});
