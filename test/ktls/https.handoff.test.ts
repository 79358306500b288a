// TLS connections handed off with their session, end to end with unmodified clients, in the
// namespace lab on a kernel with kernel TLS (a Debian 12 VM: make vagrant-test). The routing
// applications terminate TLS (acceptTls), converse, and hand the connection off; the target's
// batond installs kernel TLS on the reinstated socket, and the target application reads and
// writes plaintext while the client's TLS session goes on, never renegotiated:
//   - curl --http1.1 https with a Digest challenge: handed off after authentication, two requests
//     on one connection answered by the user's node; bob's node refuses (capacity 0), so the
//     router's second target takes him (claim 16 over TLS);
//   - openssl s_client, TLS 1.3 and 1.2 with each cipher: the request pipelined after USER
//     (peeked bytes) answered by the target from the routing application's state (WHOAMI), then
//     10 MB each way, byte-exact;
//   - a refusal (n3's target at capacity): the router answers on its own TLS session, and the
//     same session is then handed off to n2;
//   - a TLS connection moved on by its node (n2 → n3), with a request pipelined behind MOVE;
//   - a TLS 1.3 KeyUpdate from the client after the handoff: this kernel cannot take new keys, so
//     the target ends the connection with an alert and says why;
//   - close_notify both ways at the end (s_client's QUIT), no reset.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { labCaFile, TLS_LINE_PORT } from '../../controller/lab/cluster.js';
import { curlDigestTls, inClient, readLog } from '../../controller/lab/demo.js';
import { until } from '../../controller/lab/wait.js';
import { patternChunk } from '../../examples/line/pattern.js';
import { useLab } from '../helpers/lab.js';

const running = useLab({
  https: true,
  extraArgs: { 'n3-tls-line-target': ['--capacity', '1'], 'n3-https-target': ['--capacity', '0'] },
});

/** openssl s_client in the client's namespace, driven through its stdin and stdout. */
class SClient {
  private readonly proc: ChildProcess;
  private out = Buffer.alloc(0);
  private at = 0;
  exited?: number | null;

  constructor(args: string[]) {
    const { lab } = running;
    this.proc = spawn('ip', ['netns', 'exec', lab.client.ns, 'openssl', 's_client', '-connect', `${lab.dvipa.address}:${TLS_LINE_PORT}`, '-CAfile', labCaFile(lab), '-verify_return_error', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.proc.stdout!.on('data', (b: Buffer) => (this.out = Buffer.concat([this.out, b])));
    this.proc.stderr!.on('data', (b: Buffer) => (this.out = Buffer.concat([this.out, b])));
    this.proc.on('exit', (code) => (this.exited = code));
  }

  send(bytes: string | Buffer): void {
    this.proc.stdin!.write(bytes);
  }

  /** Everything printed so far, as text (s_client's own lines and the server's bytes). */
  get text(): string {
    return this.out.toString('latin1');
  }

  /** Waits for a line matching re after what was read so far; returns it and moves past it. */
  async line(re: RegExp, timeoutMs = 60_000): Promise<string> {
    let found: RegExpExecArray | null = null;
    await until(() => `${re} in ${JSON.stringify(this.out.subarray(this.at).toString('latin1').slice(-300))}`, () => {
      const rest = this.out.subarray(this.at).toString('latin1');
      found = new RegExp(`^(?:${re.source})$`, 'm').exec(rest);
      return found !== null;
    }, timeoutMs, 20);
    const m = found as unknown as RegExpExecArray;
    this.at += Buffer.byteLength(this.out.subarray(this.at).toString('latin1').slice(0, m.index + m[0].length + 1), 'latin1');
    return m[0];
  }

  /** The next n raw bytes of the server's stream. */
  async bytes(n: number, timeoutMs = 120_000): Promise<Buffer> {
    await until(() => `${n} bytes (have ${this.out.length - this.at})`, () => this.out.length - this.at >= n, timeoutMs, 20);
    const b = this.out.subarray(this.at, this.at + n);
    this.at += n;
    return b;
  }

  async closed(timeoutMs = 30_000): Promise<number | null | undefined> {
    await until('s_client to exit', () => this.exited !== undefined, timeoutMs);
    return this.exited;
  }

  kill(): void {
    if (this.exited === undefined) this.proc.kill();
  }
}

const SUITES: Array<[string, string[]]> = [
  ['TLS 1.3 AES-128-GCM', ['-tls1_3', '-ciphersuites', 'TLS_AES_128_GCM_SHA256']],
  ['TLS 1.3 AES-256-GCM', ['-tls1_3', '-ciphersuites', 'TLS_AES_256_GCM_SHA384']],
  ['TLS 1.3 ChaCha20-Poly1305', ['-tls1_3', '-ciphersuites', 'TLS_CHACHA20_POLY1305_SHA256']],
  ['TLS 1.2 AES-128-GCM', ['-tls1_2', '-cipher', 'ECDHE-ECDSA-AES128-GCM-SHA256']],
  ['TLS 1.2 AES-256-GCM', ['-tls1_2', '-cipher', 'ECDHE-ECDSA-AES256-GCM-SHA384']],
  ['TLS 1.2 ChaCha20-Poly1305', ['-tls1_2', '-cipher', 'ECDHE-ECDSA-CHACHA20-POLY1305']],
];
const MB10 = 10 * 1024 * 1024;

describe('HTTPS with curl, handed off after Digest authentication', () => {
  it('alice: two requests on one TLS connection, both answered by n2', async () => {
    const r = await inClient(running.lab, curlDigestTls(running.lab, 'alice', 'wonderland', ['/first', '/second']));
    expect(r.stderr).toBe('');
    expect(r.stdout.split('\n').filter((l) => l.startsWith('hello'))).toEqual(['hello alice, served by n2 for GET /first', 'hello alice, served by n2 for GET /second']);
    expect([...r.stdout.matchAll(/^(\d{3}) connects=(\d+)$/gm)].map((m) => [m[1], m[2]])).toEqual([['200', '1'], ['200', '0']]);
    expect(readLog(running.lab, 'n1-https-router').some((l) => l.event === 'handed-off' && l.user === 'alice' && l.target === 'n2')).toBe(true);
  });

  it("bob: his node's target refuses, the router's next target (n2) takes the TLS connection", async () => {
    const r = await inClient(running.lab, curlDigestTls(running.lab, 'bob', 'builder', ['/']));
    expect(r.stderr).toBe('');
    expect(r.stdout).toContain('hello bob, served by n2 for GET /');
    const handed = readLog(running.lab, 'n1-https-router').filter((l) => l.event === 'handed-off' && l.user === 'bob').pop();
    expect(handed).toMatchObject({ target: 'n2', attempts: [{ target: { node: 'n3' }, outcome: 'failed', code: 'E_REJECTED' }, { target: { node: 'n2' }, outcome: 'done' }] });
  });
});

describe('openssl s_client on the line protocol over TLS', () => {
  it.each(SUITES)('%s: peeked request and app state, then 10 MB each way byte-exact, then close_notify both ways', async (_name, args) => {
    const s = new SClient(['-quiet', ...args]);
    try {
      s.send('HELLO\n');
      await s.line(/WHO\?/);
      // WHOAMI rides with USER: the router read it, it travels as peeked bytes.
      s.send('USER alice\nWHOAMI\n');
      await s.line(/OK n2/);
      await s.line(/YOU alice ON n2/);
      const upload = randomBytes(MB10);
      s.send(`PUT ${MB10}\n`);
      s.send(upload);
      expect(await s.line(/SHA256 [0-9a-f]{64}/, 300_000)).toBe(`SHA256 ${createHash('sha256').update(upload).digest('hex')}`);
      s.send(`GET ${MB10}\n`);
      expect((await s.bytes(MB10, 300_000)).equals(patternChunk(0, MB10))).toBe(true);
      s.send('QUIT\n');
      await s.line(/BYE/);
      expect(await s.closed()).toBe(0);
      expect(readLog(running.lab, 'n2-tls-line-target').some((l) => l.event === 'resumed' && l.user === 'alice')).toBe(true);
    } finally {
      s.kill();
    }
  });

  it("a refusal (n3's target at capacity): the router answers on its own TLS session, which it then hands to n2", async () => {
    const first = new SClient(['-quiet', '-tls1_3']);
    const s = new SClient(['-quiet', '-tls1_2']);
    try {
      first.send('HELLO\nUSER bob\n');
      await first.line(/OK n3/);
      s.send('HELLO\n');
      await s.line(/WHO\?/);
      s.send('USER bob\n');
      expect(await s.line(/ERR cannot reach n3: .*/)).toMatch(/E_REJECTED/);
      s.send('USER alice\n');
      await s.line(/OK n2/);
      s.send('WHOAMI\n');
      await s.line(/YOU alice ON n2/);
      first.send('QUIT\n');
      await first.line(/BYE/);
    } finally {
      first.kill();
      s.kill();
    }
  });

  it('a TLS 1.3 KeyUpdate after the handoff ends the connection with an alert, and the target says why', async () => {
    // Not -quiet: s_client then reads "K" alone on a line as "send a KeyUpdate".
    const s = new SClient(['-tls1_3']);
    try {
      s.send('HELLO\n');
      await s.line(/WHO\?/);
      s.send('USER alice\n');
      await s.line(/OK n2/);
      s.send('WHOAMI\n');
      await s.line(/YOU alice ON n2/);
      s.send('K\n');
      await s.closed();
      expect(s.text).toMatch(/alert internal error/i);
      await until('the target to log the key update', () => readLog(running.lab, 'n2-tls-line-target').some((l) => typeof l.err === 'string' && l.err.includes('KeyUpdate')));
    } finally {
      s.kill();
    }
  });
});

describe('a TLS connection moved on by the node serving it (claim 10)', () => {
  it.each([
    ['TLS 1.3', ['-tls1_3']],
    ['TLS 1.2', ['-tls1_2', '-cipher', 'ECDHE-ECDSA-AES256-GCM-SHA384']],
  ])('%s: n2 → n3 with a pipelined request, then 1 MB each way, byte-exact', async (_name, args) => {
    const s = new SClient(['-quiet', ...args]);
    try {
      s.send('HELLO\nUSER alice\n');
      await s.line(/OK n2/);
      s.send('GET 1000\n');
      expect((await s.bytes(1000)).equals(patternChunk(0, 1000))).toBe(true);
      // WHOAMI rides with MOVE: n2's target passes it on as peeked bytes, n3's answers it.
      s.send('MOVE n3\nWHOAMI\n');
      await s.line(/OK n3/);
      await s.line(/YOU alice ON n3/);
      const upload = randomBytes(1024 * 1024);
      s.send(`PUT ${upload.length}\n`);
      s.send(upload);
      expect(await s.line(/SHA256 [0-9a-f]{64}/, 120_000)).toBe(`SHA256 ${createHash('sha256').update(upload).digest('hex')}`);
      s.send(`GET ${1024 * 1024}\n`);
      expect((await s.bytes(1024 * 1024, 120_000)).equals(patternChunk(0, 1024 * 1024))).toBe(true);
      s.send('QUIT\n');
      await s.line(/BYE/);
      expect(await s.closed()).toBe(0);
    } finally {
      s.kill();
    }
  });
});
