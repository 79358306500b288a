// Sockets this process handed off to another node. Their 'close' is the move, not the end of the
// connection, so a target application must not report them as closed.
import type net from 'node:net';

export const handedOff = new WeakSet<net.Socket>();
