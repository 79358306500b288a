#!/usr/bin/env python3
"""Loss and delay on the lab's segment, where this kernel has no netem (docs/lab.md,
"Impairing the segment").

Runs in the switch namespace. Each --link PORT,RELAY names two devices: PORT is the veth end
facing a node (or the client), taken off the bridge; RELAY is a veth whose peer is now the bridge
port in its place. Frames from PORT go to RELAY at once; frames from RELAY (what the bridge sends
towards that node) are dropped with --loss-percent and otherwise sent to PORT --delay-ms after the
kernel received them. So a frame is impaired once per crossing of the bridge, on the way out of
it, which is what netem on the egress of every bridge port would do.

Counters go to --stats as JSON every 250 ms and when SIGTERM ends the relay.
"""
import argparse
import collections
import errno
import json
import os
import random
import select
import signal
import socket
import struct
import time

# Linux constants the socket module does not export.
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
TP_STATUS_CSUMNOTREADY = 1 << 3
AUXDATA = struct.Struct("IIIHHHH")
TIMESPEC = struct.Struct("qq")

FRAME_MAX = 65536
SOCKET_BUFFER = 8 << 20
# Per wake-up and socket: one busy link must not starve the others, nor the send queue.
BURST = 64
STATS_EVERY_S = 0.25
HOLD_BINS_PER_MS = 10
HOLD_MAX_MS = 2000
ANCILLARY = socket.CMSG_SPACE(AUXDATA.size) + socket.CMSG_SPACE(TIMESPEC.size)


class Link:
    def __init__(self, name, port, relay):
        self.name = name
        self.port = open_socket(port)
        self.relay = open_socket(relay)
        self.to_port = {"frames": 0, "dropped": 0, "forwarded": 0}
        self.from_port = {"frames": 0}


def open_socket(dev):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    # Our own transmissions on a device would otherwise come back to us as input.
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    # Tells a frame whose checksum was never completed, or that is larger than what we read.
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    # The delay counts from the kernel's arrival time, so time spent in our receive queue while
    # the machine is busy is not added on top of it.
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER)
    s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER)
    s.bind((dev, ETH_P_ALL))
    s.setblocking(False)
    return s


class Relay:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.loss = args.loss_percent / 100.0
        self.delay = args.delay_ms / 1000.0
        self.links = []
        for spec in args.link:
            port, relay = spec.split(",")
            self.links.append(Link(port, port, relay))
        # (due, out socket, frame): one delay for every frame, so arrival order is due order.
        self.queue = collections.deque()
        self.hold_bins = [0] * (HOLD_MAX_MS * HOLD_BINS_PER_MS + 1)
        self.hold_min = None
        self.hold_max = 0.0
        self.anomalies = {"checksumPartial": 0, "truncated": 0, "sendErrors": 0, "kernelDrops": 0}
        self.send_errnos = collections.Counter()
        self.buf = bytearray(FRAME_MAX)
        self.view = memoryview(self.buf)
        self.stopping = False
        self.poll = select.epoll()
        self.by_fd = {}
        for link in self.links:
            for sock, towards_port in ((link.port, False), (link.relay, True)):
                self.poll.register(sock.fileno(), select.EPOLLIN)
                self.by_fd[sock.fileno()] = (link, sock, towards_port)

    def receive(self, link, sock, towards_port):
        for _ in range(BURST):
            try:
                n, anc, flags, _addr = sock.recvmsg_into([self.buf], ANCILLARY)
            except BlockingIOError:
                return
            mono, wall = time.monotonic(), time.time()
            arrived = mono
            for level, kind, data in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= AUXDATA.size:
                    status, length = AUXDATA.unpack_from(data)[:2]
                    if status & TP_STATUS_CSUMNOTREADY:
                        self.anomalies["checksumPartial"] += 1
                    if length > n:
                        self.anomalies["truncated"] += 1
                elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= TIMESPEC.size:
                    sec, nsec = TIMESPEC.unpack_from(data)
                    arrived = mono - max(0.0, wall - (sec + nsec / 1e9))
            if flags & socket.MSG_TRUNC:
                self.anomalies["truncated"] += 1
            frame = bytes(self.view[:n])
            if not towards_port:
                link.from_port["frames"] += 1
                self.send(link.relay, frame)
                continue
            link.to_port["frames"] += 1
            if self.loss and self.rng.random() < self.loss:
                link.to_port["dropped"] += 1
                continue
            link.to_port["forwarded"] += 1
            self.queue.append((arrived + self.delay, link.port, frame))

    def send(self, sock, frame):
        try:
            sock.send(frame)
        except OSError as e:
            self.anomalies["sendErrors"] += 1
            self.send_errnos[errno.errorcode.get(e.errno, str(e.errno))] += 1

    def release_due(self):
        now = time.monotonic()
        while self.queue and self.queue[0][0] <= now:
            due, sock, frame = self.queue.popleft()
            self.send(sock, frame)
            held_ms = (now - due) * 1000 + self.args.delay_ms
            self.hold_bins[min(int(held_ms * HOLD_BINS_PER_MS), len(self.hold_bins) - 1)] += 1
            self.hold_min = held_ms if self.hold_min is None else min(self.hold_min, held_ms)
            self.hold_max = max(self.hold_max, held_ms)

    def hold_percentile(self, p, count):
        rank = max(1, int(p * count + 0.999999))
        seen = 0
        for i, c in enumerate(self.hold_bins):
            seen += c
            if seen >= rank:
                return round((i + 0.5) / HOLD_BINS_PER_MS, 2)
        return None

    def write_stats(self, final=False):
        for link in self.links:
            for sock in (link.port, link.relay):
                # Reading the kernel's counters resets them, so they are summed here.
                got = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
                self.anomalies["kernelDrops"] += struct.unpack("II", got)[1]
        held = sum(self.hold_bins)
        total = {"frames": 0, "dropped": 0, "forwarded": 0}
        for link in self.links:
            for k in total:
                total[k] += link.to_port[k]
        stats = {
            "ready": True,
            "final": final,
            "pid": os.getpid(),
            "seed": self.args.seed,
            "lossPercent": self.args.loss_percent,
            "delayMs": self.args.delay_ms,
            "links": {l.name: {"toPort": l.to_port, "fromPort": l.from_port} for l in self.links},
            "impaired": total,
            "queued": len(self.queue),
            "holdMs": {
                "count": held,
                "min": None if self.hold_min is None else round(self.hold_min, 3),
                "p50": self.hold_percentile(0.5, held) if held else None,
                "p99": self.hold_percentile(0.99, held) if held else None,
                "max": round(self.hold_max, 3),
            },
            "anomalies": dict(self.anomalies),
            "sendErrnos": dict(self.send_errnos),
            "updatedAt": time.time(),
        }
        tmp = "%s.%d.tmp" % (self.args.stats, os.getpid())
        with open(tmp, "w") as f:
            json.dump(stats, f)
        os.replace(tmp, self.args.stats)

    def run(self):
        next_stats = 0.0
        while not self.stopping:
            now = time.monotonic()
            if now >= next_stats:
                self.write_stats()
                next_stats = now + STATS_EVERY_S
            wait = next_stats - now
            if self.queue:
                wait = min(wait, self.queue[0][0] - now)
            try:
                events = self.poll.poll(max(0.0, wait))
            except InterruptedError:
                events = []
            for fd, _ev in events:
                self.receive(*self.by_fd[fd])
            self.release_due()
        self.write_stats(final=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--link", action="append", required=True, help="PORT,RELAY device names (repeatable)")
    p.add_argument("--loss-percent", type=float, required=True)
    p.add_argument("--delay-ms", type=float, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--stats", required=True, help="JSON counters, rewritten atomically")
    args = p.parse_args()
    if not 0 <= args.loss_percent < 100 or not 0 <= args.delay_ms <= HOLD_MAX_MS:
        p.error("--loss-percent 0..<100, --delay-ms 0..%d" % HOLD_MAX_MS)
    relay = Relay(args)

    def stop(_sig, _frame):
        relay.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    relay.run()


if __name__ == "__main__":
    main()
