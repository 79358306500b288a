// What the SDK remembers about sockets across its router and target halves.
import { randomBytes } from 'node:crypto';
import type net from 'node:net';

// Sockets this process handed off to another node. Their 'close' is the move, not the end of the
// connection, so a target application must not report them as closed.
export const handedOff = new WeakSet<net.Socket>();

// The handoff id (wire and log field `connId`) a transferred socket arrived with. Not the
// connection id, which is the 4-tuple (controller/flow.ts): the handoff id names the handoffs of
// one connection, so the API's transfer records of every node it passes through, and their logs
// (batond's and the SDK's lines about a handoff are at debug), share one id to grep for.
const handoffIds = new WeakMap<net.Socket, string>();

/**
 * The handoff id for handing socket off from node: the one it arrived with if it was transferred
 * here (moving it on keeps the id), else a new one, the node's name and 48 random bits
 * (n1.e26ac130f728): unique without coordination, and it says where the connection began.
 */
export function handoffIdOf(socket: net.Socket, node: string): string {
  return handoffIds.get(socket) ?? `${node}.${randomBytes(6).toString('hex')}`;
}

/** A socket transferred here with this handoff id: a later handoff of it keeps the id. */
export function keepHandoffId(socket: net.Socket, handoffId: string): void {
  handoffIds.set(socket, handoffId);
}
