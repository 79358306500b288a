// Baselines for `make bench`: plain servers that listen on a node's own address, for the direct and
// HAProxy paths the benchmarks compare Baton with. The example targets only take transferred
// connections, so these serve the same protocols with the same code where it matters:
//   line  GET <n> / PUT <n> / QUIT with the example target's own code (examples/line/session.ts),
//         no HELLO/USER phase;
//   http  node:http answering like examples/http/target.ts, behind HTTP Digest as
//         examples/http/router.ts asks for it. Nonces are stateless (HMAC of a random part with a
//         secret every instance shares), so a request may be checked by another instance than the
//         one that issued the challenge, as happens behind HAProxy.
import { createHmac, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { Command } from 'commander';
import { challenge, parseAuthorization, verify } from '../examples/http/digest.js';
import { LineSession } from '../examples/line/session.js';

const PASSWORDS = new Map([
  ['alice', 'wonderland'],
  ['bob', 'builder'],
]);

function serveLine(socket: net.Socket): void {
  socket.on('error', () => socket.destroy());
  new LineSession(socket, { usage: 'ERR expected GET <n>, PUT <n> or QUIT' });
}

/** GET /hold?ms=N answers after N ms (at most 5 s), as the example target does. */
function holdMs(url: string | undefined): number {
  const m = /^\/hold\?ms=(\d{1,4})$/.exec(url ?? '');
  return m ? Math.min(Number(m[1]), 5000) : 0;
}

/** nonce = random part + HMAC(secret, random part): any instance holding the secret can check it. */
function nonceMaker(secret: Buffer) {
  const tag = (r: string) => createHmac('sha256', secret).update(r).digest('hex').slice(0, 32);
  return {
    issue: () => {
      const r = randomBytes(16).toString('hex');
      return `${r}${tag(r)}`;
    },
    valid: (nonce: string | undefined) => typeof nonce === 'string' && nonce.length === 64 && tag(nonce.slice(0, 32)) === nonce.slice(32),
  };
}

function serveHttp(host: string, port: number, node: string, secretFile: string): void {
  const nonces = nonceMaker(fs.readFileSync(secretFile));
  const server = http.createServer(async (req, res) => {
    const auth = parseAuthorization(req.headers.authorization);
    const user = auth && nonces.valid(auth.nonce) ? verify(req.method ?? 'GET', auth, auth.nonce!, PASSWORDS) : undefined;
    if (!user) {
      // Sized, not chunked: the same framing as the HTTP example's router gives its 401.
      const body = 'authentication required\n';
      res.writeHead(401, { 'WWW-Authenticate': challenge(nonces.issue()), 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    // As examples/http/target.ts: only a /hold request waits (even a 0 ms timer costs about a
    // millisecond), so that the comparison is of the paths, not of two handlers.
    const ms = holdMs(req.url);
    if (ms > 0) await new Promise((resolve) => setTimeout(resolve, ms));
    res.setHeader('X-Served-By', node);
    res.setHeader('X-Framework', 'node');
    res.setHeader('X-Instance', 'plain');
    res.setHeader('Content-Type', 'text/plain');
    res.end(`hello ${user}, served by ${node} for ${req.method} ${req.url}\n`);
  });
  server.keepAliveTimeout = 60_000;
  server.listen({ host, port }, () => console.log(JSON.stringify({ msg: 'plain http listening', host, port, node })));
}

const program = new Command().name('bench-servers');
program
  .command('line')
  .requiredOption('--host <address>')
  .requiredOption('--port <port>')
  .action((o: { host: string; port: string }) => {
    const server = net.createServer(serveLine);
    server.listen({ host: o.host, port: Number(o.port), backlog: 4096 }, () => console.log(JSON.stringify({ msg: 'plain line listening', host: o.host, port: Number(o.port) })));
  });
program
  .command('http')
  .requiredOption('--host <address>')
  .requiredOption('--port <port>')
  .requiredOption('--node <name>')
  .requiredOption('--secret-file <path>')
  .action((o: { host: string; port: string; node: string; secretFile: string }) => serveHttp(o.host, Number(o.port), o.node, o.secretFile));
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => process.exit(0));
program.parse();
