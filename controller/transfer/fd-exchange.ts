// Socket descriptors between an application and its batond (SCM_RIGHTS, native/fdpass.ts).
//
// Each application has a private descriptor link with batond: a connected pair of Unix datagram
// sockets, made by batond when the application says hello. Its end reaches the application
// through the application's inbox, an abstract address named in the hello. Anybody in the network
// namespace, of any uid, may send to an abstract address, and ten datagrams nobody reads
// (net.unix.max_dgram_qlen in a fresh namespace) fill it: batond's link then could not get in, and
// the application could not register. So before every hello the application connects its inbox to
// batond's sending socket, bound at <agentSocket>.fd (descriptorSocketPath) with the agent
// socket's owner-only mode, and throws away whatever strangers queued before: from then on the
// kernel takes datagrams into the inbox from batond's socket only (anyone else's send fails with
// EPERM) and does not count them against the queue-length limit. Again before each hello, since a
// restarted batond's socket is a new one. The application still takes the link only from batond's
// pid (the kernel stamps every datagram with its sender's: SCM_CREDENTIALS). A pair for the link
// itself, not datagrams to batond's address: between the ends of a pair the kernel applies no
// queue-length limit (it would fail the 12th handoff in flight), only the sender's send buffer,
// which batond sets large.
//
// On the link, a descriptor travels tagged with its connection id, always just before the stream
// message that names it (handoff, transferred): by the time that message is read the descriptor is
// already queued, so take() only has to drain the queue, never wait.
import fs from 'node:fs';
import type net from 'node:net';
import path from 'node:path';
import { BatonError, isBatonError } from '../errors.js';
import { bounded, errorText } from '../input.js';
import type { Logger } from '../log.js';
import { closeFd, FdSocket, peerPid } from '../../native/fdpass.js';

/** A descriptor nobody claimed within this time is closed (its stream message never came). */
const UNCLAIMED_MS = 10_000;
/**
 * Descriptors waiting for their stream message on one link, at most: as many as handoffs batond
 * runs at once by default. Beyond it a misbehaving application only fills its own link; the
 * newcomers are closed rather than batond's descriptor table.
 */
const MAX_PARKED = 4096;
/** The link itself, as batond's inbox datagram tags it. */
const LINK_TAG = 'baton-link';
/** Send buffer of each end of a link: ~1 KiB per waiting descriptor, so thousands may wait. */
const LINK_SNDBUF = 4 << 20;

/** One end of the descriptor link between batond and one application. */
export class DescriptorLink {
  private readonly parked = new Map<string, { fd: number; at: number }>();
  private readonly sweeper: NodeJS.Timeout;

  constructor(
    private readonly socket: FdSocket,
    private readonly log: Logger,
  ) {
    this.sweeper = setInterval(() => this.sweep(Date.now()), UNCLAIMED_MS);
    this.sweeper.unref();
  }

  /** Sends a duplicate of fd; the caller keeps its own and closes it when it is done with it. */
  send(fd: number, connId: string): void {
    this.socket.send(null, fd, connId);
  }

  /**
   * The descriptor sent for connId, or undefined if none came. The caller owns it from here: it
   * must close it (closeFd) or hand it to a net.Socket.
   */
  take(connId: string): number | undefined {
    this.drain();
    const parked = this.parked.get(connId);
    if (!parked) return undefined;
    this.parked.delete(connId);
    return parked.fd;
  }

  /** Closes the link and every descriptor still waiting on it. Idempotent. */
  close(): void {
    if (this.socket.fd < 0) return;
    clearInterval(this.sweeper);
    this.drain();
    this.sweep(Infinity);
    this.socket.close();
  }

  private drain(): void {
    const now = Date.now();
    for (const got of this.socket.receiveAll()) {
      if ('error' in got) {
        this.log.warn({ err: got.error }, 'descriptor datagram dropped');
        continue;
      }
      const earlier = this.parked.get(got.tag);
      if (earlier) discard(earlier.fd, got.tag, 'replaced by a later one with the same tag', this.log);
      else if (this.parked.size >= MAX_PARKED) {
        discard(got.fd, got.tag, `${MAX_PARKED} descriptors already wait on this link`, this.log);
        continue;
      }
      this.parked.set(got.tag, { fd: got.fd, at: now });
    }
  }

  private sweep(now: number): void {
    for (const [connId, p] of this.parked) {
      if (now - p.at < UNCLAIMED_MS) continue;
      this.parked.delete(connId);
      discard(p.fd, connId, 'nobody claimed it', this.log);
    }
  }
}

/** Where batond's descriptor socket is bound, beside its agent socket: what an inbox connects to. */
export function descriptorSocketPath(agentSocket: string): string {
  return `${agentSocket}.fd`;
}

/** batond's side: makes each application's link and sends the application its end. */
export class LinkMaker {
  private readonly socket: FdSocket;
  private readonly path: string;

  /**
   * Binds batond's sending socket at descriptorSocketPath(agentSocket), owner-only like the agent
   * socket, replacing a stale one a previous batond left (the caller has made sure none lives).
   * Throws E_CONFIG when agentSocket is over 104 bytes (the path would not fit), E_NATIVE otherwise.
   */
  constructor(
    private readonly log: Logger,
    agentSocket: string,
  ) {
    this.path = descriptorSocketPath(agentSocket);
    fs.mkdirSync(path.dirname(this.path), { recursive: true });
    fs.rmSync(this.path, { force: true });
    try {
      this.socket = FdSocket.bindPath(this.path);
    } catch (err) {
      if (!isBatonError(err) || err.context.errnoName !== 'ENAMETOOLONG') throw err;
      throw new BatonError('E_CONFIG', `agent socket path ${agentSocket} is too long: its descriptor socket ${this.path} must fit in 107 bytes`, { step: 'listen' });
    }
  }

  /** A link for the application whose inbox is at inboxAddress; throws E_NATIVE if it cannot be sent there. */
  make(inboxAddress: string): DescriptorLink {
    const [ours, theirs] = FdSocket.pair(LINK_SNDBUF);
    try {
      this.socket.send(inboxAddress, theirs.fd, LINK_TAG);
    } catch (err) {
      ours.close();
      throw err;
    } finally {
      theirs.close();
    }
    return new DescriptorLink(ours, this.log);
  }

  close(): void {
    if (this.socket.fd < 0) return;
    this.socket.close();
    fs.rmSync(this.path, { force: true });
  }
}

/** The application's side: where batond's end of the link arrives. Lives across reconnections. */
export class LinkInbox {
  private readonly socket = FdSocket.open();

  constructor(private readonly log: Logger) {}

  /** The inbox's abstract address, for the hello. */
  get address(): string {
    return this.socket.address;
  }

  /**
   * Before each hello: the inbox takes datagrams from the batond at agentSocket only (connected to
   * its descriptor socket; a stranger's send fails with EPERM), and what anyone queued before is
   * closed. Throws E_NATIVE when batond's descriptor socket is not there (ENOENT, ECONNREFUSED).
   */
  connectTo(agentSocket: string): void {
    this.socket.connectTo(descriptorSocketPath(agentSocket));
    let dropped = 0;
    for (const got of this.socket.receiveAll()) {
      dropped++;
      // An error entry's descriptors were closed as it was received.
      if ('error' in got) continue;
      try {
        closeFd(got.fd);
      } catch (err) {
        this.log.error({ err: errorText(err) }, 'cannot close a descriptor queued on the inbox');
      }
    }
    // Once per hello, however many: they came from someone who is not batond.
    if (dropped > 0) this.log.warn({ dropped }, 'datagrams queued on the inbox before the hello discarded');
  }

  /** The link batond (agentPid) sent before its welcome; anything else queued is closed. */
  accept(agentPid: number): DescriptorLink | undefined {
    let link: FdSocket | undefined;
    for (const got of this.socket.receiveAll()) {
      if ('error' in got) {
        this.log.warn({ err: got.error }, 'inbox datagram dropped');
        continue;
      }
      if (got.tag !== LINK_TAG || got.pid !== agentPid) {
        discard(got.fd, got.tag, `not batond's link (from pid ${got.pid}, batond is ${agentPid})`, this.log);
        continue;
      }
      link?.close();
      link = FdSocket.adopt(got.fd);
    }
    return link && new DescriptorLink(link, this.log);
  }

  close(): void {
    this.socket.close();
  }
}

function discard(fd: number, tag: string, why: string, log: Logger): void {
  try {
    closeFd(fd);
  } catch (err) {
    log.error({ tag: bounded(tag, 80), err: errorText(err) }, 'cannot close a discarded descriptor');
    return;
  }
  // The tag is the sender's (an application, or a stranger's datagram): logged bounded and escaped.
  log.warn({ tag: bounded(tag, 80) }, `descriptor discarded: ${why}`);
}

/** The pid at the other end of a connected Unix stream socket (an application's channel, or batond's). */
export function channelPeerPid(socket: net.Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: number } | null })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new BatonError('E_HANDOFF_STATE', 'channel socket has no descriptor', { step: 'peer-credentials' });
  return peerPid(fd);
}
