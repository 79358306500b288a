// At a takeover the new distributor's table is a replica: as good as the stream that fed it. The
// stream can be short of the truth (the old distributor died between a table change and its
// sending; a backup restarted and re-snapshotted while a handoff finished), and only the nodes'
// kernels know the truth. So, as Sysplex's backup does, the new distributor asks every node which
// connections to the DVIPAs its kernel serves (a sock_diag dump, native/diag.ts) and brings the
// table in line: an entry where a node serves a flow the table lacks or names elsewhere, none
// where no node serves it any more.
//
// Asking: one `served` request per node, answered with the pages of one dump (`serving`).
// Reconciling (reconcileServed): a flow served live (not TIME_WAIT or CLOSE) by exactly one node
// is pointed at it as each answer comes; entries naming a node that answered, for flows no node
// reports at all, are removed once every node but the old distributor has answered (a node still
// silent might serve the flow an entry wrongly names elsewhere: removing it would reset a live
// connection), and only after the node they name confirms it, flow by flow, with an exact lookup
// (probe): a dump is no snapshot, the kernel walks its hash table in several reads and a socket
// moved under the walk may be missed. Frozen entries are left to recovery (route-service.ts
// recover), and an entry that changed while the nodes were asked is left as it is.
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { BatonError } from '../errors.js';
import { connectionId, type FlowKey } from '../flow.js';
import { errorText } from '../input.js';
import type { Logger } from '../log.js';
import type { IndexedRoute } from '../agent/table-index.js';
import { MAX_FLOWS_PER_MESSAGE, type Message } from '../transfer/messages.js';
import type { PeerLink, PeerLinks } from '../transfer/peers.js';

/** Flows per `serving` page (the message's bound). */
export const SERVING_PAGE = MAX_FLOWS_PER_MESSAGE;
/** Flows one node may report: the routing table's default capacity. A node reporting more is not believed. */
export const SERVING_MAX_FLOWS = 262_144;
/** DVIPAs per `served` question (the message's bound). */
const SERVED_MAX_ADDRESSES = 64;
/** Pages one answer may take: bounds what a node's answer can make the asker hold. */
const SERVING_MAX_PAGES = Math.ceil(SERVING_MAX_FLOWS / SERVING_PAGE);

/** A connection a node's kernel holds for a DVIPA, and its TCP state. */
export interface Served {
  flow: FlowKey;
  state: string;
}

/** States in which a socket no longer carries a connection: the tuple is only waiting out TCP's close. */
const WINDING_DOWN = new Set(['TIME_WAIT', 'CLOSE']);

/**
 * A node answering `served`: one dump per address, sent in pages. Any failure (the dump, a
 * non-address, too many flows) answers failed: the asker then learns nothing from this node,
 * which keeps every entry naming it.
 */
export function answerServed(msg: Message<'served'>, dump: (family: 4 | 6, address: string) => Served[], send: (body: Omit<Message<'serving'>, 'v' | 'type' | 'blobs'>) => void, log: Logger): void {
  let all: Served[] = [];
  try {
    for (const address of msg.addresses) {
      const family = net.isIP(address);
      if (family !== 4 && family !== 6) throw new BatonError('E_PROTOCOL', 'served: not an IP address', { step: 'served' });
      all = all.concat(dump(family, address));
      if (all.length > SERVING_MAX_FLOWS) throw new BatonError('E_NATIVE', `more than ${SERVING_MAX_FLOWS} connections to the DVIPAs`, { step: 'served' });
    }
  } catch (err) {
    log.warn({ connId: msg.connId, err: errorText(err) }, 'cannot tell a distributor which DVIPA connections this node serves');
    send({ connId: msg.connId, flows: [], states: [], last: true, failed: true });
    return;
  }
  for (let i = 0; i === 0 || i < all.length; i += SERVING_PAGE) {
    const page = all.slice(i, i + SERVING_PAGE);
    send({ connId: msg.connId, flows: page.map((s) => s.flow), states: page.map((s) => s.state), last: i + SERVING_PAGE >= all.length });
  }
}

/** Asks one node which connections to addresses its kernel serves: every page of its answer, within timeoutMs. */
export function askServed(link: Pick<PeerLink, 'channel' | 'replies'>, node: string, addresses: string[], timeoutMs: number): Promise<Served[]> {
  const connId = `served-${randomBytes(6).toString('hex')}`;
  return new Promise((resolve, reject) => {
    const got: Served[] = [];
    let pages = 0;
    const finish = (err?: BatonError) => {
      clearTimeout(timer);
      release();
      if (err) reject(err);
      else resolve(got);
    };
    const timer = setTimeout(() => finish(new BatonError('E_TIMEOUT', `${node} did not say within ${timeoutMs} ms which DVIPA connections it serves`, { node, step: 'served' })), timeoutMs);
    const release = link.replies.claim(connId, {
      types: ['serving'],
      receive: (d) => {
        const msg = d.msg as Message<'serving'>;
        if (msg.failed) return finish(new BatonError('E_PEER', `${node} could not list the DVIPA connections it serves`, { node, step: 'served' }));
        if (msg.states.length !== msg.flows.length || ++pages > SERVING_MAX_PAGES) {
          return finish(new BatonError('E_PROTOCOL', `${node} answered served with a malformed or oversized page`, { node, step: 'served' }));
        }
        msg.flows.forEach((flow, i) => got.push({ flow, state: msg.states[i]! }));
        if (msg.last) finish();
      },
      fail: (err) => finish(err),
    });
    link.channel.send('served', { connId, addresses });
  });
}

/** What reconciliation may do to the table: RouteService's calls for it. */
export interface ServedTable {
  /** Every entry now, as the index holds it (the records dropIf compares with). */
  records(): IndexedRoute[];
  /** Node name of an entry's node id. */
  nodeName(id: number): string | undefined;
  /** Points flow at node (removes its entry when node is this distributor); false when nothing changed or it is frozen. */
  pointAt(flow: FlowKey, node: string): boolean;
  /** Removes the entry if the index still holds exactly this record; false otherwise. */
  dropIf(record: IndexedRoute): boolean;
}

export interface ReconcileResult {
  /** Entries added or pointed at the node serving the flow (or removed: this distributor serves it). */
  pointed: number;
  /** Entries removed: no node serves their flow. */
  dropped: number;
  /** Nodes that answered. */
  answered: string[];
  /** Flows two nodes claim to serve live at once: left as they were. */
  ambiguous: number;
}

/**
 * Brings the table in line with what the nodes' kernels serve (see the top of this file). ask
 * answers for every node in nodes (this distributor's own included: its kernel serves flows with
 * no entry); previous is the distributor this one took over from, which need not answer (dead).
 */
export async function reconcileServed(
  table: ServedTable,
  nodes: string[],
  previous: string | undefined,
  ask: (node: string) => Promise<Served[]>,
  /** The exact lookup (route-service.ts Prober): one state per flow, GONE when the node holds no socket. */
  probe: (node: string, flows: FlowKey[]) => Promise<string[]>,
  log: Logger,
): Promise<ReconcileResult> {
  const before = table.records().filter((r) => r.state !== 'frozen');
  const result: ReconcileResult = { pointed: 0, dropped: 0, answered: [], ambiguous: 0 };
  /** Every flow any node reports, with the nodes serving it live. */
  const reported = new Map<string, { flow: FlowKey; live: Set<string> }>();
  const silent: string[] = [];
  await Promise.all(
    nodes.map(async (node) => {
      let served: Served[];
      try {
        served = await ask(node);
      } catch (err) {
        silent.push(node);
        log.warn({ node, err: errorText(err) }, 'a node did not say which DVIPA connections it serves: entries naming it are kept');
        return;
      }
      result.answered.push(node);
      for (const { flow, state } of served) {
        const id = connectionId(flow);
        let r = reported.get(id);
        if (!r) reported.set(id, (r = { flow, live: new Set() }));
        if (WINDING_DOWN.has(state)) continue;
        r.live.add(node);
        // Pointed as each answer comes: the sooner an entry is right, the fewer frames go astray.
        if (r.live.size === 1 && table.pointAt(flow, node)) result.pointed++;
      }
    }),
  );
  for (const r of reported.values()) if (r.live.size > 1) result.ambiguous++;
  if (result.ambiguous > 0) log.warn({ flows: result.ambiguous }, 'flows two nodes say they serve at once: their entries left as they were');
  if (silent.some((n) => n !== previous)) return result;
  const answered = new Set(result.answered);
  const unserved = new Map<string, IndexedRoute[]>();
  for (const record of before) {
    const node = table.nodeName(record.node);
    if (node === undefined || !answered.has(node) || reported.has(record.id)) continue;
    const list = unserved.get(node);
    if (list) list.push(record);
    else unserved.set(node, [record]);
  }
  await Promise.all(
    [...unserved].map(async ([node, records]) => {
      for (let i = 0; i < records.length; i += MAX_FLOWS_PER_MESSAGE) {
        const batch = records.slice(i, i + MAX_FLOWS_PER_MESSAGE);
        let states: string[];
        try {
          states = await probe(node, batch.map((r) => r.flow));
        } catch (err) {
          log.warn({ node, flows: batch.length, err: errorText(err) }, 'cannot confirm that a node no longer serves flows: their entries are kept');
          continue;
        }
        batch.forEach((record, j) => {
          if (states[j] === 'GONE' && table.dropIf(record)) result.dropped++;
        });
      }
    }),
  );
  return result;
}

/**
 * How a distributor asks any node, itself included (its own kernel, with no message), which
 * connections to the DVIPAs it serves: addresses() says which DVIPAs, at the time of asking.
 */
export function servedAsker(peers: Pick<PeerLinks, 'get'>, self: string, addresses: () => string[], dump: (family: 4 | 6, address: string) => Served[], timeoutMs: number): (node: string) => Promise<Served[]> {
  return async (node) => {
    const list = addresses();
    if (node === self) return list.flatMap((a) => dump(net.isIP(a) === 6 ? 6 : 4, a));
    const chunks: string[][] = [];
    for (let i = 0; i < list.length; i += SERVED_MAX_ADDRESSES) chunks.push(list.slice(i, i + SERVED_MAX_ADDRESSES));
    const link = await peers.get(node);
    return (await Promise.all(chunks.map((c) => askServed(link, node, c, timeoutMs)))).flat();
  };
}
