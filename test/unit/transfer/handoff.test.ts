// The routing node's handoff state machine against a scripted target node over real loopback
// channels, with the socket steps recorded instead of done (sockets.ts is the seam; the lab tests
// do them for real): every path before the route switch must leave no routing entry, take the
// socket out of repair mode before the application hears of the failure, and tell both sides; the
// success path must install the route only after the target is ready.
import net from 'node:net';
import tls from 'node:tls';
import { makeCertificates } from '../../helpers/certs.js';
import { sampleState } from '../../helpers/state.js';
import { until } from '../../helpers/wait.js';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { FlowKey } from '../../../controller/flow.js';
import type { ClusterConfig } from '../../../controller/config/cluster.js';
import { monotonicUs } from '../../../controller/clock.js';
import { BatonError } from '../../../controller/errors.js';
import { createLogger } from '../../../controller/log.js';
import { Channel, channelRejections, PendingReplies } from '../../../controller/transfer/channel.js';
import { type HandoffRecord, HandoffCoordinator } from '../../../controller/transfer/handoff.js';
import type { RouteWriter } from '../../../controller/transfer/routes.js';
import { Accepts, type Decoded, type MessageType } from '../../../controller/transfer/messages.js';
import { PeerLinks } from '../../../controller/transfer/peers.js';
import type { HandoffSockets } from '../../../controller/transfer/sockets.js';
import type { SocketInfo } from '../../../native/repair.js';

const log = createLogger({}, 'silent');

const state = sampleState({ sendSeq: 1, recvSeq: 2, sendQueue: Buffer.from('reply'), unsentLength: 0, recvQueue: Buffer.from('GET 1\n') });

/** Records every routing-table change in order, as the coordinator asked for it. */
class RecordingRoutes implements RouteWriter {
  readonly ops: string[] = [];
  /** What admit() throws, when a test makes the routing table refuse the flow. */
  refuse?: Error;
  async admit() {
    this.ops.push('admit');
    if (this.refuse) throw this.refuse;
  }
  async freeze() {
    this.ops.push('freeze');
  }
  /** What forward() throws, when a test makes the route install fail. */
  refuseForward?: Error;
  async forward(_flow: FlowKey, target: string) {
    this.ops.push(`forward:${target}`);
    if (this.refuseForward) throw this.refuseForward;
  }
  async unfreeze() {
    this.ops.push('unfreeze');
  }
  async release() {
    this.ops.push('release');
  }
  async finished() {
    this.ops.push('finished');
  }
}

/** The socket steps, recorded in order with what the routing application had been told by then. */
class RecordingSockets implements HandoffSockets {
  readonly ops: string[] = [];
  private readonly exported = state;
  constructor(private readonly told: () => string[]) {}
  private op(name: string) {
    this.ops.push(this.told().length ? `${name} (after ${this.told().join(',')})` : name);
  }
  /** What the descriptor is: an established TCP connection to the DVIPA unless a test says otherwise. */
  info: SocketInfo = { domain: 2, type: 1, protocol: 6, tcpState: 1, local: { family: 4, address: '10.203.0.10', port: 7000 }, remote: { address: '10.203.0.100', port: 40000 } };
  inspect(fd: number) {
    expect(fd).toBe(42);
    this.op('inspect');
    return this.info;
  }
  snapshot(fd: number) {
    expect(fd).toBe(42);
    this.op('snapshot');
    return this.exported;
  }
  /** What arrived between the snapshot and the freeze; nothing at all skips the commit. */
  late = Buffer.from('late');
  delta() {
    this.op('delta');
    return { received: this.late, unsentLength: this.exported.unsentLength, window: { ...this.exported.window } };
  }
  resume() {
    this.op('resume');
  }
  /** The old socket's final clock when quiet (batond reads it), undefined when the application must. */
  quiet: number | undefined = undefined;
  quietClock(fd: number, rcvNxt: number) {
    expect(fd).toBe(42);
    // The receive queue's start and length, plus the delta: the first sequence number not received.
    expect(rcvNxt).toBe((this.exported.recvSeq + this.exported.recvQueue.length + this.late.length) >>> 0);
    this.op('quietClock');
    return this.quiet;
  }
  release(fd: number) {
    expect(fd).toBe(42);
    this.op('release');
  }
  reinstate(): number {
    throw new Error('not at the routing node');
  }
  complete() {
    throw new Error('not at the routing node');
  }
  goLive() {
    throw new Error('not at the routing node');
  }
  discard() {
    throw new Error('not at the routing node');
  }
  takeSession() {
    throw new Error('not at the routing node');
  }
}

type TargetScript = (msg: Decoded<MessageType>, reply: Channel<MessageType>) => void;

const closers: Array<() => void> = [];
// The peer link is mutual TLS: the fake target node holds n2's certificate from a test CA.
const certs = makeCertificates([{ name: 'n1', address: '127.0.0.1' }, { name: 'n2', address: '127.0.0.1' }]);

afterEach(() => {
  while (closers.length) closers.pop()!();
});
afterAll(() => certs.dispose());

/** A target node on loopback that welcomes the peer and answers as the script says. */
async function targetNode(script: TargetScript): Promise<{ port: number; seen: string[]; lives: Array<{ timestamp?: number }> }> {
  const seen: string[] = [];
  const lives: Array<{ timestamp?: number }> = [];
  const server = tls.createServer({ ...certs.material('n2'), requestCert: true, rejectUnauthorized: true }, (s) => {
    const ch = new Channel<MessageType>(s, Accepts.agentFromPeer, log);
    ch.on('message', (d) => {
      seen.push(d.msg.type);
      if (d.msg.type === 'live') lives.push({ timestamp: d.msg.timestamp });
      if (d.msg.type === 'hello') ch.send('welcome', { node: 'n2' });
      else script(d, ch);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  closers.push(() => server.close());
  return { port: (server.address() as net.AddressInfo).port, seen, lives };
}

/** A routing application's channel pair: what the coordinator holds and what the app sees. */
async function routerPair(closeClock?: number) {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const appSide = net.connect(port, '127.0.0.1');
  const agentSide = await accepted;
  closers.push(() => {
    appSide.destroy();
    agentSide.destroy();
    server.close();
  });
  const agentChannel = new Channel(agentSide, Accepts.agentFromRouter, log);
  // What the coordinator has told the application so far, at the moment it says it.
  const told: string[] = [];
  const send = agentChannel.send.bind(agentChannel);
  agentChannel.send = ((type: never, body: never, blobs?: Buffer[]) => (told.push(type), send(type, body, blobs))) as typeof agentChannel.send;
  const replies = new PendingReplies<(typeof Accepts.agentFromRouter)[number]>();
  agentChannel.on('message', (d) => replies.deliver(d));
  const app = new Channel(appSide, Accepts.router, log);
  const got: Array<Decoded<(typeof Accepts.router)[number]>> = [];
  app.on('message', (d) => {
    got.push(d);
    if (d.msg.type === 'done' && closeClock !== undefined) app.send('closed', { connId: d.msg.connId, timestamp: closeClock });
  });
  return { router: { channel: agentChannel, replies, name: 'test-router' }, got, told, app };
}

function cluster(targetPort: number): ClusterConfig {
  const node = (name: string, id: number, peerPort: number) => ({
    name, id, address: '127.0.0.1', mac: `02:00:00:00:00:0${id}`, interface: 'eth0', peerPort, agentSocket: `/tmp/${name}.sock`, controlSecretFile: `/tmp/${name}.secret`,
    certFile: certs.certFile(name), keyFile: certs.keyFile(name),
  });
  return {
    version: 1, instance: 't', dvipa: { addresses: ['10.203.0.10'], ports: [7000] }, distributors: ['n1'], controlPort: 4701, api: { port: 4702, tokenFile: '/tmp/t.token' }, tls: { caFile: certs.caFile }, xdpMode: 'native',
    handoffStepTimeoutMs: 300, releaseGraceMs: 3000, nodes: [node('n1', 1, 1), node('n2', 2, targetPort)],
  };
}

async function coordinatorFor(targetPort: number) {
  const config = cluster(targetPort);
  const routes = new RecordingRoutes();
  const peers = new PeerLinks(config, config.nodes[0]!, log, 1000, certs.material('n1'));
  closers.push(() => peers.close());
  const records: HandoffRecord[] = [];
  const pair = await routerPair(closeClock.value);
  const sockets = new RecordingSockets(() => pair.told);
  const coordinator = new HandoffCoordinator(config, config.nodes[0]!, routes, peers, sockets, log, (r) => records.push(r));
  return { coordinator, routes, sockets, records, ...pair };
}
const closeClock: { value?: number } = {};

const request = { msg: { v: 1, type: 'handoff', connId: 'n1.t', target: { node: 'n2', port: 7000 }, appState: { user: 'a' } }, blobs: [Buffer.from('peeked'), Buffer.alloc(0)] } as Decoded<'handoff'>;

async function runHandoff(script: TargetScript, clock?: number, late = Buffer.from('late'), quiet?: number) {
  const target = await targetNode(script);
  closeClock.value = clock;
  const { coordinator, routes, sockets, records, router, got } = await coordinatorFor(target.port);
  sockets.late = late;
  sockets.quiet = quiet;
  await coordinator.run(router, request, 42);
  await new Promise((r) => setTimeout(r, 50));
  return { routes, records, sockets: sockets.ops, got: got.map((d) => d.msg.type), done: got.find((d) => d.msg.type === 'done')?.msg, seen: target.seen, lives: target.lives };
}

describe('handoff state machine at the routing node', () => {
  it('success: freeze after accept, route only after ready, done to the router, then live with its closing clock to the target', async () => {
    const script: TargetScript = (d, ch) => {
      const connId = (d.msg as { connId: string }).connId;
      if (d.msg.type === 'offer') {
        // The exported state and the application's peeked bytes travel together.
        expect(d.blobs.map((b) => b.toString())).toEqual(['reply', 'GET 1\n', 'peeked', '']);
        ch.send('accept', { connId, importUs: 5 });
      }
      if (d.msg.type === 'commit') {
        expect(d.blobs[0]!.toString()).toBe('late');
        ch.send('ready', { connId });
      }
    };
    const r = await runHandoff(script, 123_456);
    expect(r.routes.ops).toEqual(['admit', 'freeze', 'forward:n2']);
    expect(r.seen).toEqual(['hello', 'offer', 'commit', 'live']);
    expect(r.got).toEqual(['done']);
    // Repair mode stays on: the application's close, after done, must be silent.
    expect(r.sockets).toEqual(['inspect', 'snapshot', 'delta', 'quietClock', 'release (after done)']);
    expect(r.done).toMatchObject({ clockNeeded: true });
    expect(r.lives).toEqual([{ timestamp: 123_456 }]);
    expect(r.records[0]).toMatchObject({ outcome: 'done', target: 'n2' });

    // A router that never confirms its close does not hold the target back: live goes without a
    // clock after the step timeout, and the handoff is still done (the route already points there).
    const silent = await runHandoff(script);
    expect(silent.seen).toEqual(['hello', 'offer', 'commit', 'live']);
    expect(silent.lives).toEqual([{ timestamp: undefined }]);
    expect(silent.records[0]).toMatchObject({ outcome: 'done', target: 'n2' });
  });

  it('nothing arrived since the snapshot: no commit round trip, the route follows the delta read at once', async () => {
    const script: TargetScript = (d, ch) => {
      const connId = (d.msg as { connId: string }).connId;
      if (d.msg.type === 'offer') ch.send('accept', { connId, importUs: 5 });
      if (d.msg.type === 'commit') ch.send('ready', { connId });
    };
    const r = await runHandoff(script, 99, Buffer.alloc(0));
    expect(r.seen).toEqual(['hello', 'offer', 'live']);
    expect(r.routes.ops).toEqual(['admit', 'freeze', 'forward:n2']);
    expect(r.sockets).toEqual(['inspect', 'snapshot', 'delta', 'quietClock', 'release (after done)']);
    expect(r.lives).toEqual([{ timestamp: 99 }]);
    expect(r.records[0]).toMatchObject({ outcome: 'done', timings: { commitRttUs: 0 } });
  });

  it('an old socket that can send nothing more: batond reads its final clock, the target goes live at once, no closed is asked for', async () => {
    const script: TargetScript = (d, ch) => {
      const connId = (d.msg as { connId: string }).connId;
      if (d.msg.type === 'offer') ch.send('accept', { connId, importUs: 5 });
    };
    // The router would answer done with clock 1 if asked: the live must carry batond's 777.
    const r = await runHandoff(script, 1, Buffer.alloc(0), 777);
    expect(r.seen).toEqual(['hello', 'offer', 'live']);
    expect(r.lives).toEqual([{ timestamp: 777 }]);
    expect(r.done).toMatchObject({ type: 'done', clockNeeded: false });
    expect(r.sockets).toEqual(['inspect', 'snapshot', 'delta', 'quietClock', 'release (after done)']);
    expect(r.records[0]).toMatchObject({ outcome: 'done' });
  });

  it("done carries the handoff's trace: each send and receive on one clock, in order, the target's readings from its accept", async () => {
    const script: TargetScript = (d, ch) => {
      const connId = (d.msg as { connId: string }).connId;
      if (d.msg.type === 'offer') {
        const rx = monotonicUs();
        ch.send('accept', { connId, importUs: 5, clock: { rx, tx: monotonicUs() } });
      }
    };
    const before = monotonicUs();
    const r = await runHandoff(script, 1, Buffer.alloc(0), 777);
    const clock = (r.done as { timings: { clock: Record<string, number> } }).timings.clock;
    // The old socket was quiet (777): live went first, just before done.
    const order = ['handoffRx', 'offerTx', 'offerRx', 'acceptTx', 'acceptRx', 'liveTx', 'doneTx'];
    expect(Object.keys(clock).sort()).toEqual([...order].sort());
    const readings = order.map((k) => clock[k]!);
    expect(readings[0]).toBeGreaterThanOrEqual(before);
    for (let i = 1; i < readings.length; i++) expect(readings[i]).toBeGreaterThanOrEqual(readings[i - 1]!);
    expect(readings.at(-1)).toBeLessThanOrEqual(monotonicUs());
  });

  it('reject at offer: nothing frozen, no abort, the router is told E_REJECTED', async () => {
    const r = await runHandoff((d, ch) => {
      if (d.msg.type === 'offer') ch.send('reject', { connId: d.msg.connId, reason: 'full' });
    });
    expect(r.routes.ops).toEqual(['admit']);
    expect(r.seen).toEqual(['hello', 'offer']);
    expect(r.got).toEqual(['failed']);
    expect(r.sockets).toEqual(['inspect', 'snapshot', 'resume', 'release']);
    expect(r.records[0]).toMatchObject({ outcome: 'failed', step: 'offer', reason: expect.stringContaining('full') });
  });

  it('target silent after the commit: the frozen entry is restored, the target aborted, the router told E_TIMEOUT', async () => {
    const r = await runHandoff((d, ch) => {
      if (d.msg.type === 'offer') ch.send('accept', { connId: d.msg.connId, importUs: 5 });
    });
    expect(r.routes.ops).toEqual(['admit', 'freeze', 'unfreeze']);
    expect(r.seen).toEqual(['hello', 'offer', 'commit', 'abort']);
    expect(r.got).toEqual(['failed']);
    expect(r.sockets).toEqual(['inspect', 'snapshot', 'delta', 'resume', 'release']);
    expect(r.records[0]).toMatchObject({ outcome: 'failed', step: 'commit' });
  });

  it('target silent at the offer: it is told to abort (it may have reinstated the socket late)', async () => {
    const r = await runHandoff(() => undefined);
    expect(r.routes.ops).toEqual(['admit']);
    expect(r.seen).toEqual(['hello', 'offer', 'abort']);
    expect(r.got).toEqual(['failed']);
  });

  it('a descriptor that is not an established TCP connection to a DVIPA is refused before repair mode: only closed', async () => {
    const tcp = { domain: 2, type: 1, protocol: 6 };
    const dvipa = { family: 4 as const, address: '10.203.0.10', port: 7000 };
    const unfit: Array<[SocketInfo, RegExp]> = [
      [{ ...tcp, tcpState: 1, local: { family: 4, address: '10.203.0.11', port: 7000 }, remote: { address: '10.203.0.100', port: 1 } }, /local address 10\.203\.0\.11 is not a DVIPA/],
      [{ domain: 2, type: 2, protocol: 17, local: dvipa }, /datagram \(UDP\) socket/],
      [{ ...tcp, tcpState: 10, local: dvipa }, /TCP state LISTEN/],
      [{ ...tcp, tcpState: 8, local: dvipa, remote: { address: '10.203.0.100', port: 1 } }, /TCP state CLOSE_WAIT/],
      [{ domain: 1, type: 1, protocol: 0 }, /a Unix socket/],
    ];
    for (const [info, why] of unfit) {
      const target = await targetNode(() => undefined);
      const { coordinator, routes, sockets, router, got, records } = await coordinatorFor(target.port);
      sockets.info = info;
      await coordinator.run(router, request, 42);
      await until('the failed to reach the application', () => got.length > 0);
      expect(routes.ops).toEqual([]);
      expect(target.seen).toEqual([]);
      expect(sockets.ops).toEqual(['inspect', 'release']);
      expect(got.map((d) => d.msg)).toMatchObject([{ type: 'failed', step: 'check', code: 'E_HANDOFF_STATE', reason: expect.stringMatching(why) }]);
      expect(records[0]).toMatchObject({ outcome: 'failed', step: 'check' });
    }
    // Not a socket at all (a file, a pipe): refused the same way.
    const target = await targetNode(() => undefined);
    const { coordinator, sockets, router, got } = await coordinatorFor(target.port);
    sockets.inspect = () => {
      sockets.ops.push('inspect (failed)');
      throw new Error('SO_DOMAIN failed: ENOTSOCK');
    };
    await coordinator.run(router, request, 42);
    await until('the failed to reach the application', () => got.length > 0);
    expect(sockets.ops).toEqual(['inspect (failed)', 'release']);
    expect(got.map((d) => d.msg)).toMatchObject([{ type: 'failed', step: 'check', reason: expect.stringContaining('ENOTSOCK') }]);
  });

  it('a flow the routing table has no room for (a quota) is refused before export or offer: only closed', async () => {
    const target = await targetNode(() => undefined);
    const { coordinator, routes, sockets, router, got, records } = await coordinatorFor(target.port);
    routes.refuse = new BatonError('E_QUOTA', 'handoff refused: client 10.203.0.100 holds 4096 handed-off connections', { step: 'admit' });
    await coordinator.run(router, request, 42);
    await until('the failed to reach the application', () => got.length > 0);
    expect(routes.ops).toEqual(['admit']);
    expect(target.seen).toEqual([]);
    expect(sockets.ops).toEqual(['inspect', 'release']);
    expect(got.map((d) => d.msg)).toMatchObject([{ type: 'failed', step: 'admit', code: 'E_QUOTA' }]);
    expect(records[0]).toMatchObject({ outcome: 'failed', step: 'admit' });
  });

  it('an export that fails leaves nothing to resume: only batond\'s descriptor is closed', async () => {
    const target = await targetNode(() => undefined);
    const { coordinator, sockets, router, got, records } = await coordinatorFor(target.port);
    sockets.snapshot = () => {
      sockets.ops.push('snapshot (failed)');
      throw new Error('TCP_REPAIR(on) failed: EPERM');
    };
    await coordinator.run(router, request, 42);
    await until('the failed to reach the application', () => got.length > 0);
    expect(sockets.ops).toEqual(['inspect', 'snapshot (failed)', 'release']);
    expect(target.seen).toEqual([]);
    expect(got.map((d) => d.msg)).toMatchObject([{ type: 'failed', step: 'export', reason: expect.stringContaining('EPERM') }]);
    expect(records[0]).toMatchObject({ outcome: 'failed', step: 'export', client: 'unknown' });
    expect(records[0]!.flow).toBeUndefined();
  });
  it('a reject at the commit sends the handoff back to frozen: the entry restored, the target aborted, the socket resumed', async () => {
    const r = await runHandoff((d, ch) => {
      if (d.msg.type === 'offer') ch.send('accept', { connId: d.msg.connId, importUs: 5 });
      if (d.msg.type === 'commit') ch.send('reject', { connId: d.msg.connId, reason: 'commit failed: no room' });
    });
    expect(r.routes.ops).toEqual(['admit', 'freeze', 'unfreeze']);
    expect(r.seen).toEqual(['hello', 'offer', 'commit', 'abort']);
    expect(r.sockets).toEqual(['inspect', 'snapshot', 'delta', 'resume', 'release']);
    expect(r.got).toEqual(['failed']);
    expect(r.records[0]).toMatchObject({ outcome: 'failed', step: 'commit', reason: expect.stringContaining('no room') });
  });
  it('a route install that fails (the target ready): the entry restored, the target aborted, the socket resumed', async () => {
    const target = await targetNode((d, ch) => {
      if (d.msg.type === 'offer') ch.send('accept', { connId: d.msg.connId, importUs: 5 });
      if (d.msg.type === 'commit') ch.send('ready', { connId: d.msg.connId });
    });
    const { coordinator, routes, sockets, router, got, records } = await coordinatorFor(target.port);
    routes.refuseForward = new BatonError('E_HANDOFF_STATE', 'distributor n1 refused forward: not the owner', { step: 'forward' });
    await coordinator.run(router, request, 42);
    await until('the failed at the application and the abort at the target', () => got.length > 0 && target.seen.includes('abort'));
    expect(routes.ops).toEqual(['admit', 'freeze', 'forward:n2', 'unfreeze']);
    expect(target.seen).toEqual(['hello', 'offer', 'commit', 'abort']);
    expect(sockets.ops).toEqual(['inspect', 'snapshot', 'delta', 'resume', 'release']);
    expect(got.map((d) => d.msg)).toMatchObject([{ type: 'failed', step: 'route', code: 'E_HANDOFF_STATE' }]);
    expect(records[0]).toMatchObject({ outcome: 'failed', step: 'route' });
  });
});

/** Refusals of this process so far, by reason (channel.ts counts them for baton_transfer_rejected_total). */
const refused = () => channelRejections();

describe('replies the handoff\'s phase does not allow: refused, counted, nothing changes', () => {
  it('a ready before the accept, and a second accept: both refused, the handoff goes on with the first accept', async () => {
    const before = refused();
    const r = await runHandoff((d, ch) => {
      const connId = (d.msg as { connId: string }).connId;
      if (d.msg.type === 'offer') {
        ch.send('ready', { connId });
        ch.send('accept', { connId, importUs: 5 });
        ch.send('accept', { connId, importUs: 6 });
      }
      if (d.msg.type === 'commit') ch.send('ready', { connId });
    }, 123_456);
    expect(refused()['out-of-phase'] - before['out-of-phase']).toBe(2);
    expect(r.routes.ops).toEqual(['admit', 'freeze', 'forward:n2']);
    expect(r.seen).toEqual(['hello', 'offer', 'commit', 'live']);
    expect(r.lives).toEqual([{ timestamp: 123_456 }]);
    expect(r.records).toHaveLength(1);
    expect(r.records[0]).toMatchObject({ outcome: 'done', timings: { importUs: 5 } });
  });

  it('a ready when there was nothing to commit: refused, the route was already switched on the delta read', async () => {
    const before = refused();
    const r = await runHandoff((d, ch) => {
      const connId = (d.msg as { connId: string }).connId;
      if (d.msg.type === 'offer') {
        ch.send('accept', { connId, importUs: 5 });
        ch.send('ready', { connId });
      }
    }, 99, Buffer.alloc(0));
    expect(refused()['out-of-phase'] - before['out-of-phase']).toBe(1);
    expect(r.seen).toEqual(['hello', 'offer', 'live']);
    expect(r.lives).toEqual([{ timestamp: 99 }]);
    expect(r.records[0]).toMatchObject({ outcome: 'done', timings: { commitRttUs: 0 } });
  });

  it('a closed from the application before the route switched: refused; its closed after done carries the clock', async () => {
    const before = refused();
    let app: Channel<(typeof Accepts.router)[number]> | undefined;
    const target = await targetNode((d, ch) => {
      const connId = (d.msg as { connId: string }).connId;
      if (d.msg.type === 'offer') {
        // The application says closed while the offer is out; the target accepts once it was refused.
        app!.send('closed', { connId, timestamp: 1 });
        void until('the early closed to be refused', () => refused()['out-of-phase'] > before['out-of-phase']).then(() => ch.send('accept', { connId, importUs: 5 }));
      }
      if (d.msg.type === 'commit') ch.send('ready', { connId });
    });
    closeClock.value = 123_456;
    const c = await coordinatorFor(target.port);
    app = c.app;
    await c.coordinator.run(c.router, request, 42);
    await until('the live at the target', () => target.lives.length > 0);
    expect(refused()['out-of-phase'] - before['out-of-phase']).toBe(1);
    expect(c.routes.ops).toEqual(['admit', 'freeze', 'forward:n2']);
    expect(target.lives).toEqual([{ timestamp: 123_456 }]);
    expect(c.records[0]).toMatchObject({ outcome: 'done' });
  });

  it('only answers the phase does not allow: the offer times out as it would, the target is aborted', async () => {
    const before = refused();
    const r = await runHandoff((d, ch) => {
      const connId = (d.msg as { connId: string }).connId;
      if (d.msg.type === 'offer') ch.send('ready', { connId });
    });
    expect(refused()['out-of-phase'] - before['out-of-phase']).toBe(1);
    expect(r.routes.ops).toEqual(['admit']);
    expect(r.seen).toEqual(['hello', 'offer', 'abort']);
    expect(r.sockets).toEqual(['inspect', 'snapshot', 'resume', 'release']);
    expect(r.records[0]).toMatchObject({ outcome: 'failed', step: 'offer', reason: expect.stringContaining('no accept/reject within 300 ms') });
  });

  it('a reply after the handoff ended, or for a handoff that never was: nobody waits for it, counted as unsolicited', async () => {
    const before = refused();
    const r = await runHandoff((d, ch) => {
      const connId = (d.msg as { connId: string }).connId;
      if (d.msg.type === 'offer') {
        ch.send('accept', { connId: 'n1.never', importUs: 1 });
        ch.send('accept', { connId, importUs: 5 });
      }
      if (d.msg.type === 'commit') ch.send('ready', { connId });
      // live is the last message of a handoff: by the time this arrives its handoff is over.
      if (d.msg.type === 'live') ch.send('ready', { connId });
    }, 7);
    await until('the late ready to be counted', () => refused().unsolicited - before.unsolicited >= 2);
    expect(refused().unsolicited - before.unsolicited).toBe(2);
    expect(refused()['out-of-phase'] - before['out-of-phase']).toBe(0);
    expect(r.records).toEqual([expect.objectContaining({ outcome: 'done' })]);
  });
});
