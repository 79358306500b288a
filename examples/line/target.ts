// Line-protocol target application (DVIPA port 7000) on n2/n3. It receives connections the
// routing application handed off, resumes from the app state (answers the pending USER with
// OK <node>), then serves:
//   GET <n>  → n bytes of the pattern (byte i = i mod 251)
//   PUT <n>  → reads n raw bytes, answers SHA256 <hex>
//   WHOAMI   → YOU <user> ON <node> (the user comes from the routing application's state)
//   MOVE <node> → this node hands the connection on to <node> (claim 10), whose target answers
//               OK <node>; on failure ERR, and this node keeps serving
//   QUIT     → BYE, closes
// Beyond --capacity live connections it refuses offers.
import { createHash } from 'node:crypto';
import { RouterClient, TargetClient, isBatonError, type TransferredConnection } from '../../controller/sdk/index.js';
import { createLogger } from '../../controller/log.js';
import { capacityPolicy, exampleOptions, withRetry } from '../common.js';
import { streamPattern } from './pattern.js';

const MAX_TRANSFER = 1 << 30;
const opts = exampleOptions('line-target', 7000);
const log = createLogger({ app: 'line-target', node: opts.node });

function serve(conn: TransferredConnection): void {
  const { socket } = conn;
  const state = conn.appState as { user?: string; greeting?: string } | null;
  log.info({ connId: conn.connId, user: state?.user, client: conn.client, from: conn.from, event: 'resumed' }, 'serving transferred connection');
  socket.on('error', (err) => log.warn({ connId: conn.connId, err: err.message }, 'client socket error'));
  if (state?.greeting) socket.write(`${state.greeting} ${opts.node}\n`);

  let buffered: Buffer = Buffer.alloc(0);
  let upload: { remaining: number; hash: ReturnType<typeof createHash> } | undefined;
  let busy = false;
  let operatorMove: { node: string; resolve: () => void; reject: (err: Error) => void } | undefined;
  /** Hands the connection on with everything not yet parsed as peeked bytes; on failure serves on. */
  const moveTo = (next: string, greeting?: string): Promise<void> => {
    const peeked = buffered;
    buffered = Buffer.alloc(0);
    socket.off('data', onData);
    busy = true;
    return router.handoff(socket, { node: next, port: opts.port }, { appState: { user: state?.user, greeting }, peeked }).then(
      (r) => log.info({ connId: r.connId, event: 'handed-off', target: next, timings: r.timings }, 'connection moved on'),
      (err: unknown) => {
        log.warn({ connId: conn.connId, target: next, err: (err as Error).message }, 'move failed; still serving here');
        buffered = Buffer.concat([peeked, buffered]);
        busy = false;
        socket.on('data', onData);
        throw err;
      },
    );
  };
  conn.onMoveRequest(
    (node) =>
      new Promise<void>((resolve, reject) => {
        if (operatorMove) return reject(new Error('a move of this connection is already pending'));
        operatorMove = { node, resolve, reject };
        process_();
      }),
  );
  const process_ = () => {
    while (!busy) {
      // An operator's move waits for a line boundary with no transfer running: the next target
      // resumes from the user alone, without greeting, so the client sees nothing.
      if (operatorMove && !upload) {
        const { node, resolve, reject } = operatorMove;
        operatorMove = undefined;
        moveTo(node).then(resolve, (err: unknown) => {
          reject(err as Error);
          process_();
        });
        return;
      }
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
      const move = /^MOVE ([A-Za-z0-9][A-Za-z0-9._-]{0,62})$/.exec(line);
      if (move) {
        const next = move[1]!;
        moveTo(next, 'OK').catch((err: unknown) => {
          socket.write(`ERR cannot move to ${next}: ${isBatonError(err) ? err.code : 'error'}\n`);
          process_();
        });
        return;
      }
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
  const onData = (chunk: Buffer) => {
    buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
    process_();
  };
  socket.on('data', onData);
}

// A target serves connections and can move them on: it is a routing application too.
const router = await withRetry('connect to batond', () => RouterClient.connect({ socketPath: opts.agent, name: 'line-target', logger: log, ports: [opts.port], control: opts.control }));
const capacity = capacityPolicy(opts.capacity);
const target = await withRetry('connect to batond', () =>
  TargetClient.connect({ socketPath: opts.agent, name: 'line-target', ports: [opts.port], logger: log, onOffer: capacity.decide, capacity: opts.capacity, control: opts.control }, (conn) => {
    capacity.track(conn.socket);
    serve(conn);
  }),
);
log.info({ port: opts.port }, 'line target registered');
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => { target.close(); router.close(); process.exit(0); });
