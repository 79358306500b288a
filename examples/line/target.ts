// Line-protocol target application (DVIPA port 7000) on n2/n3. It receives connections the
// routing application handed off, resumes from the app state (answers the pending USER with
// OK <node>), then serves:
//   GET <n>  → n bytes of the pattern (byte i = i mod 251)
//   PUT <n>  → reads n raw bytes, answers SHA256 <hex>
//   WHOAMI   → YOU <user> ON <node> (the user comes from the routing application's state)
//   QUIT     → BYE, closes
// Beyond --capacity live connections it refuses offers.
import { createHash } from 'node:crypto';
import type net from 'node:net';
import { TargetClient, type TransferredConnection } from '../../controller/sdk/index.js';
import { createLogger } from '../../controller/log.js';
import { capacityPolicy, exampleOptions, withRetry } from '../common.js';
import { patternChunk } from './pattern.js';

const MAX_TRANSFER = 1 << 30;
const CHUNK = 256 * 1024;
const opts = exampleOptions('line-target', 7000);
const log = createLogger({ app: 'line-target', node: opts.node });

function streamPattern(socket: net.Socket, total: number, done: () => void): void {
  let sent = 0;
  const pump = () => {
    while (sent < total) {
      const n = Math.min(CHUNK, total - sent);
      const ok = socket.write(patternChunk(sent, n));
      sent += n;
      if (!ok) {
        socket.once('drain', pump);
        return;
      }
    }
    done();
  };
  pump();
}

function serve(conn: TransferredConnection): void {
  const { socket } = conn;
  const state = conn.appState as { user?: string; greeting?: string } | null;
  log.info({ connId: conn.connId, user: state?.user, client: conn.client, from: conn.from, event: 'resumed' }, 'serving transferred connection');
  socket.on('error', (err) => log.warn({ connId: conn.connId, err: err.message }, 'client socket error'));
  if (state?.greeting) socket.write(`${state.greeting} ${opts.node}\n`);

  let buffered: Buffer = Buffer.alloc(0);
  let upload: { remaining: number; hash: ReturnType<typeof createHash> } | undefined;
  let busy = false;
  const process_ = () => {
    while (!busy) {
      if (upload) {
        const n = Math.min(upload.remaining, buffered.length);
        upload.hash.update(buffered.subarray(0, n));
        upload.remaining -= n;
        buffered = buffered.subarray(n);
        if (upload.remaining > 0) return;
        socket.write(`SHA256 ${upload.hash.digest('hex')}\n`);
        upload = undefined;
        continue;
      }
      const nl = buffered.indexOf(0x0a);
      if (nl < 0) {
        if (buffered.length > 1024) socket.end('ERR line too long\n');
        return;
      }
      const line = buffered.subarray(0, nl).toString('utf8').trim();
      buffered = buffered.subarray(nl + 1);
      const m = /^(GET|PUT) (\d{1,10})$/.exec(line);
      if (line === 'WHOAMI') {
        socket.write(`YOU ${state?.user ?? 'unknown'} ON ${opts.node}\n`);
        continue;
      }
      if (line === 'QUIT') {
        socket.end('BYE\n');
        return;
      }
      if (!m || Number(m[2]) > MAX_TRANSFER) {
        socket.write('ERR expected GET <n>, PUT <n>, WHOAMI or QUIT\n');
        continue;
      }
      const n = Number(m[2]);
      if (m[1] === 'PUT') {
        upload = { remaining: n, hash: createHash('sha256') };
        if (n === 0) continue;
      } else {
        busy = true;
        streamPattern(socket, n, () => {
          busy = false;
          process_();
        });
      }
    }
  };
  socket.on('data', (chunk: Buffer) => {
    buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
    process_();
  });
}

const capacity = capacityPolicy(opts.capacity);
const target = await withRetry('connect to batond', () =>
  TargetClient.connect({ socketPath: opts.agent, name: 'line-target', ports: [opts.port], logger: log, onOffer: capacity.decide }, (conn) => {
    capacity.track(conn.socket);
    serve(conn);
  }),
);
log.info({ port: opts.port }, 'line target registered');
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => { target.close(); process.exit(0); });
