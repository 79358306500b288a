// Line-protocol target application (DVIPA port 7000) on n2/n3. It receives connections the
// routing application handed off, resumes from the app state (answers the pending USER with
// OK <node>), then serves:
//   GET <n>  → n bytes of the pattern (byte i = i mod 251)
//   PUT <n>  → reads n raw bytes, answers SHA256 <hex>
//   WHOAMI   → YOU <user> ON <node> (the user comes from the routing application's state)
//   MOVE <node> → this node hands the connection on to <node> (claim 10), whose target answers
//               OK <node>; on failure ERR, and this node keeps serving
//   QUIT     → BYE, closes
// Beyond --capacity live connections its batond refuses offers for it.
import { RouterClient, TargetClient, isBatonError, type TransferredConnection } from '../../controller/sdk/index.js';
import { createLogger } from '../../controller/log.js';
import { capacityOptions, exampleOptions, withRetry } from '../common.js';
import { LineSession } from './session.js';
const opts = exampleOptions('line-target', 7000);
const log = createLogger({ app: 'line-target', node: opts.node });

function serve(conn: TransferredConnection): void {
  const { socket } = conn;
  const state = conn.appState as { user?: string; greeting?: string } | null;
  // The greeting first: the client waits for it, the log line does not.
  if (state?.greeting) socket.write(`${state.greeting} ${opts.node}\n`);
  log.info({ connId: conn.connId, user: state?.user, client: conn.client, from: conn.from, clock: conn.clock, event: 'resumed' }, 'serving transferred connection');
  socket.on('error', (err) => log.warn({ connId: conn.connId, err: err.message }, 'client socket error'));

  let operatorMove: { node: string; resolve: () => void; reject: (err: Error) => void } | undefined;
  /** Hands the connection on with everything not yet parsed as peeked bytes; on failure serves on. */
  const moveTo = (next: string, greeting?: string): Promise<void> => {
    const peeked = session.detach();
    return router.handoff(socket, { node: next, port: opts.port }, { appState: { user: state?.user, greeting }, peeked }).then(
      (r) => log.info({ connId: r.connId, event: 'handed-off', target: next, timings: r.timings }, 'connection moved on'),
      (err: unknown) => {
        log.warn({ connId: conn.connId, target: next, err: (err as Error).message }, 'move failed; still serving here');
        session.reattach(peeked);
        throw err;
      },
    );
  };
  const session = new LineSession(socket, {
    usage: 'ERR expected GET <n>, PUT <n>, WHOAMI or QUIT',
    maxLine: 1024,
    // An operator's move waits for a line boundary with no transfer running: the next target
    // resumes from the user alone, without greeting, so the client sees nothing.
    hold: () => {
      if (!operatorMove) return false;
      const { node, resolve, reject } = operatorMove;
      operatorMove = undefined;
      moveTo(node).then(resolve, (err: unknown) => {
        reject(err as Error);
        session.run();
      });
      return true;
    },
    extra: (line) => {
      const move = /^MOVE ([A-Za-z0-9][A-Za-z0-9._-]{0,62})$/.exec(line);
      if (move) {
        const next = move[1]!;
        moveTo(next, 'OK').catch((err: unknown) => {
          socket.write(`ERR cannot move to ${next}: ${isBatonError(err) ? err.code : 'error'}\n`);
          session.run();
        });
        return 'stop';
      }
      if (line === 'WHOAMI') {
        socket.write(`YOU ${state?.user ?? 'unknown'} ON ${opts.node}\n`);
        return 'next';
      }
      return undefined;
    },
  });
  conn.onMoveRequest(
    (node) =>
      new Promise<void>((resolve, reject) => {
        if (operatorMove) return reject(new Error('a move of this connection is already pending'));
        operatorMove = { node, resolve, reject };
        session.run();
      }),
  );
}

// A target serves connections and can move them on: it is a routing application too.
const name = opts.instance ?? 'line-target';
const router = await withRetry('connect to batond', () => RouterClient.connect({ socketPath: opts.agent, name, logger: log, ports: [opts.port], control: opts.control }));
// Declared first: a deciding application's policy may be asked before connect() has returned.
let target: TargetClient | undefined;
target = await withRetry('connect to batond', () =>
  TargetClient.connect({ socketPath: opts.agent, name: 'line-target', instance: name, ports: [opts.port], logger: log, ...capacityOptions(opts, () => target?.load ?? 0), control: opts.control }, serve),
);
log.info({ port: opts.port }, 'line target registered');
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => { target.close(); router.close(); process.exit(0); });
