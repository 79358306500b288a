// What the SDK remembers about sockets across its router and target halves.
import type net from 'node:net';

// Sockets this process handed off to another node. Their 'close' is the move, not the end of the
// connection, so a target application must not report them as closed.
export const handedOff = new WeakSet<net.Socket>();

// The connection id a transferred socket arrived with. Moving it on keeps the id, so the logs of
// every node a connection passes through, and the API's transfer records, share one id.
export const connectionIds = new WeakMap<net.Socket, string>();
