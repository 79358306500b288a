// A target relay in the test process, every message through the real codecs. What a test delivers
// is encoded to a frame and decoded as the receiving link decodes it (decodeMessage with that
// side's Accepts); what the relay sends is decoded as its receiver would decode it, so a message
// either side would refuse shows as `<who>:undecodable <type>` instead of passing. Socket steps
// are recorded (sockets.ts is the seam), in one list with the messages, so the order across
// sockets, descriptors and messages shows. The lab tests do all of it for real.
import type { FlowKey } from '../../controller/flow.js';
import { createLogger } from '../../controller/log.js';
import { Accepts, type Body, connToWire, type Message, type MessageType } from '../../controller/transfer/messages.js';
import { cryptoInfo } from '../../native/ktls.js';
import type { HandoffSockets } from '../../controller/transfer/sockets.js';
import { type OfferPolicy, type TargetApp, TargetRelay, type TransferFromPeer } from '../../controller/transfer/target-relay.js';
import { sampleState } from './state.js';
import { fromWire } from './wire.js';

export const DVIPA = '10.203.0.10';
export const FLOW: FlowKey = { family: 4, clientAddress: '10.203.0.100', clientPort: 40000, vipAddress: DVIPA, vipPort: 7000 };
/** The connection offered: its send queue holds 'reply' (sent) then 'tail' (never transmitted by the routing node). */
export const STATE = sampleState({ sendQueue: Buffer.from('replytail'), unsentLength: 4 });

/** The owner question the relay asked the distributor, and how the test answers it. */
export interface Asked {
  node: string;
  flow: FlowKey;
  connId: string;
  /** Resolves once the relay has acted on the answer. */
  answer(ok: boolean): Promise<void>;
}

type PeerChannel = Parameters<TargetRelay['fromPeer']>[0];

export function targetWorld(limits: Partial<Pick<OfferPolicy, 'offersPerPeer' | 'offerBytesPerPeer' | 'targetCapacity' | 'kernelTls'>> = {}) {
  const events: string[] = [];
  /** Every message the relay sent, as its receiver decoded it. */
  const sent: Array<{ to: string; msg: Message }> = [];
  /** A link end that takes what the relay sends through the real codecs, as the receiver on `to` would. */
  const recorder = (to: string, accepts: readonly MessageType[]) => ({
    send<K extends MessageType>(type: K, body: Body<K>, blobs: Buffer[] = []): boolean {
      try {
        sent.push({ to, msg: fromWire(type, body, accepts, blobs).msg });
        events.push(`${to}:${type}`);
      } catch {
        events.push(`${to}:undecodable ${type}`);
      }
      return true;
    },
    /** The recorder keeps no batches: everything it was sent is already recorded. */
    flush(): void {},
  });
  let nextFd = 10;
  const notHere = () => {
    throw new Error('not at the target');
  };
  const sockets: HandoffSockets = {
    inspect: notHere,
    snapshot: notHere,
    delta: notHere,
    resume: notHere,
    quietClock: notHere,
    reinstate: (state, peeked) => (events.push(`reinstate ${state.remote.port} peeked=${peeked.toString()}`), nextFd++),
    complete: (fd, sentBytes, received) => void events.push(`complete fd${fd} sent=${sentBytes.toString()} received=${received.toString()}`),
    goLive: (fd, ts) => void events.push(`goLive fd${fd} ts=${ts}`),
    release: (fd) => void events.push(`release fd${fd}`),
    discard: (fd) => void events.push(`discard fd${fd}`),
    takeSession: (fd, unsent, keys) => void events.push(`takeSession fd${fd} unsent=${unsent.toString()} tls=${keys.version}/${keys.cipher} rx=${keys.rx.recSeq} tx=${keys.tx.recSeq}`),
  };
  const asked: Asked[] = [];
  const orphans: Array<{ flow: FlowKey; connId: string }> = [];
  const policy: OfferPolicy = {
    isDvipa: (address) => address === DVIPA,
    distributor: () => 'n1',
    confirmOwner: (node, flow, connId) =>
      new Promise<void>((resolve, reject) => {
        asked.push({
          node,
          flow,
          connId,
          answer: async (ok) => {
            if (ok) resolve();
            else reject(new Error(`${node} does not serve this flow`));
            // The relay acts on the answer in a later microtask.
            await new Promise((r) => setImmediate(r));
          },
        });
      }),
    offersPerPeer: limits.offersPerPeer ?? 100,
    offerBytesPerPeer: limits.offerBytesPerPeer ?? 1 << 20,
    targetCapacity: limits.targetCapacity ?? 10_000,
    // The node's kernel has kernel TLS unless the test says otherwise (this machine's has none).
    kernelTls: limits.kernelTls ?? (() => ({ available: true, how: 'the tls ULP is registered' })),
  };
  const relay = new TargetRelay(createLogger({}, 'silent'), 10_000, sockets, policy, (flow, connId) => orphans.push({ flow, connId }));
  // The relay uses only send() and flush() of a channel: a recorder stands in for the link, not for its messages.
  const links = new Map<string, PeerChannel>();
  const link = (node: string): PeerChannel => {
    let l = links.get(node);
    if (!l) links.set(node, (l = recorder(node, Accepts.peerReplies) as unknown as PeerChannel));
    return l;
  };
  const app = (opts: Partial<TargetApp> = {}): TargetApp => {
    const descriptors = { send: (fd: number, connId: string) => void events.push(`descriptor fd${fd} (${connId})`) };
    const t: TargetApp = { name: 't', ports: [7000], channel: recorder('app', Accepts.target) as unknown as TargetApp['channel'], descriptors, decides: false, capacity: 0, ...opts };
    relay.register(t);
    return t;
  };
  /** A message from the routing node `on`, arriving on the link its certificate authenticated. */
  const deliver = <K extends TransferFromPeer>(on: string, type: K, body: Body<K>, blobs: Buffer[] = []) => relay.fromPeer(link(on), fromWire(type, body, Accepts.agentFromPeer, blobs), on);
  /** The target application's answer, as its link delivers it. */
  const answer = <K extends 'decided' | 'moved'>(t: TargetApp, type: K, body: Body<K>) => relay.fromApp(t, fromWire(type, body, Accepts.agentFromTarget));
  /** Reasons of the rejects sent, in order. */
  const reasons = () => sent.flatMap((s) => (s.msg.type === 'reject' ? [s.msg.reason] : []));
  return {
    events,
    sent,
    relay,
    asked,
    orphans,
    app,
    deliver,
    answer,
    reasons,
    /** An offer of STATE from `on`; `over` changes what the test is about. */
    offer: (on: string, connId: string, over: { from?: string; port?: number; instance?: string; local?: { address: string; port: number }; tls?: boolean } = {}) => {
      const { conn, queues } = connToWire(over.local ? { ...STATE, local: over.local } : STATE);
      const target = { node: 'n2', port: over.port ?? 7000, ...(over.instance ? { instance: over.instance } : {}) };
      const tls = { version: '1.3', cipher: 'aes-128-gcm' } as const;
      const dir = (recSeq: bigint) => cryptoInfo(tls.version, tls.cipher, { key: Buffer.alloc(16, 7), salt: Buffer.alloc(4, 8), iv: Buffer.alloc(8, 9), recSeq });
      // A TLS offer: sealed records in place of the peeked bytes, the keys (TX then RX) in their own blob.
      const keys = over.tls ? Buffer.concat([dir(7n), dir(5n)]) : Buffer.alloc(0);
      deliver(on, 'offer', { connId, from: over.from ?? on, target, conn, appState: { user: 'alice' }, ...(over.tls ? { tls } : {}) }, [...queues, Buffer.from('GET'), keys]);
    },
    /** The routing node's delta: 'late' arrived after the snapshot; unsentLength of the tail still unsent. */
    commit: (on: string, connId: string, unsentLength: number) => deliver(on, 'commit', { connId, unsentLength, window: STATE.window }, [Buffer.from('late')]),
    live: (on: string, connId: string, timestamp?: number) => deliver(on, 'live', timestamp === undefined ? { connId } : { connId, timestamp }),
    abort: (on: string, connId: string, reason = 'rolled back') => deliver(on, 'abort', { connId, reason }),
  };
}

export type TargetWorld = ReturnType<typeof targetWorld>;
