#!/usr/bin/env python3
"""Many unmodified line-protocol clients in one process: plain non-blocking sockets and selectors.

Each of --connections connections logs in (HELLO / USER, so the routing application hands it off
to the user's node like any other), then streams in both directions in paced rounds until
--until-file exists or --seconds have passed: every round sends GET <g> and PUT <p> + p bytes at
once, checks the g bytes against the pattern and the SHA256 answer against what it sent. Then QUIT,
BYE and a clean close.

Prints one JSON object per connection (with the start and end of every round, epoch milliseconds,
so a caller can tell which rounds ran during some window), then a summary line; exits non-zero if
any connection failed.
"""
import argparse
import errno
import hashlib
import heapq
import itertools
import json
import os
import selectors
import socket
import sys
import time

from line_client import BLOCK, PERIOD, endpoint

# GETs are checked against BLOCK by direct slicing, and PUT payloads are slices of it.
MAX_ROUND_BYTES = len(BLOCK) - PERIOD


def now_ms():
    return int(time.time() * 1000)


class Failed(Exception):
    pass


class Stream:
    def __init__(self, idx, user, expect_node, args):
        self.idx = idx
        self.user = user
        self.expect_node = expect_node
        self.args = args
        self.state = "connecting"
        self.out = []  # memoryviews still to send, in order
        self.inbuf = b""
        self.result = {"conn": idx, "user": user, "ok": False, "rounds": 0, "get_bytes": 0, "put_bytes": 0}
        self.round_ms = []
        self.round_started = 0.0  # wall clock, for the report
        self.round_began = 0.0  # monotonic, for pacing
        self.next_round = 0.0
        self.get_left = 0
        self.get_off = 0
        self.put_sha = ""
        self.last_progress = time.monotonic()
        # An address literal: IPv6 if it has a colon (the DVIPA's IPv6 address), IPv4 otherwise.
        self.sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        err = self.sock.connect_ex((args.host, args.port))
        if err not in (0, errno.EINPROGRESS):
            raise Failed("connect: %s" % os.strerror(err))

    def events(self):
        if self.state == "done":
            return 0
        if self.state == "connecting":
            return selectors.EVENT_WRITE
        return selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)

    def send(self, data):
        self.out.append(memoryview(data))

    def flush(self):
        while self.out:
            try:
                n = self.sock.send(self.out[0])
            except BlockingIOError:
                return
            if n:
                self.last_progress = time.monotonic()
            if n == len(self.out[0]):
                self.out.pop(0)
            else:
                self.out[0] = self.out[0][n:]
                return

    def on_connected(self):
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise Failed("connect: %s" % os.strerror(err))
        self.result["local"] = endpoint(self.sock.getsockname())
        self.state = "who"
        self.send(b"HELLO\n")

    def take_line(self):
        nl = self.inbuf.find(b"\n")
        if nl < 0:
            if len(self.inbuf) > 1024:
                raise Failed("line too long: %r" % self.inbuf[:80])
            return None
        line, self.inbuf = self.inbuf[:nl].decode(), self.inbuf[nl + 1:]
        return line

    def start_round(self):
        a = self.args
        n = self.result["rounds"]
        # A payload differing per connection and per round: bytes crossed between connections,
        # or an old round's bytes replayed, give the wrong hash.
        start = (self.idx * 31 + n * 7) % PERIOD
        payload = memoryview(BLOCK)[start:start + a.put]
        self.put_sha = "SHA256 " + sha_of(start, a.put)
        self.round_started = time.time()
        self.round_began = time.monotonic()
        self.get_left, self.get_off = a.get, 0
        self.state = "round"
        self.send(b"GET %d\nPUT %d\n" % (a.get, a.put))
        self.send(payload)

    def on_data(self, chunk):
        self.inbuf += chunk
        while self.inbuf:
            if self.state == "who":
                line = self.take_line()
                if line is None:
                    return
                if line != "WHO?":
                    raise Failed("expected WHO?, got %r" % line)
                self.state = "greeting"
                self.send(b"USER %s\n" % self.user.encode())
            elif self.state == "greeting":
                line = self.take_line()
                if line is None:
                    return
                self.result["greeting"] = line
                self.result["served_by"] = line.removeprefix("OK ")
                if line != "OK " + self.expect_node:
                    raise Failed("expected OK %s, got %r" % (self.expect_node, line))
                self.state = "idle"
                self.result["streaming_since"] = now_ms()
                self.next_round = time.monotonic()
            elif self.state == "round" and self.get_left:
                n = min(self.get_left, len(self.inbuf))
                if self.inbuf[:n] != BLOCK[self.get_off:self.get_off + n]:
                    raise Failed("round %d: GET bytes %d..%d differ from the pattern" % (self.result["rounds"], self.get_off, self.get_off + n))
                self.inbuf = self.inbuf[n:]
                self.get_left -= n
                self.get_off += n
                self.result["get_bytes"] += n
            elif self.state == "round":
                line = self.take_line()
                if line is None:
                    return
                if line != self.put_sha:
                    raise Failed("round %d: PUT answered %r, expected %r" % (self.result["rounds"], line, self.put_sha))
                self.result["put_bytes"] += self.args.put
                self.result["rounds"] += 1
                self.round_ms.append([int(self.round_started * 1000), now_ms()])
                self.state = "idle"
                # Paced from this round's start, with no catching up: after a stall the rate stays
                # what was asked for rather than bursting.
                self.next_round = max(time.monotonic(), self.round_began + self.args.interval)
            elif self.state == "bye":
                line = self.take_line()
                if line is None:
                    return
                if line != "BYE":
                    raise Failed("expected BYE, got %r" % line)
                self.result["bye"] = True
                self.state = "closing"
            else:
                raise Failed("unexpected bytes in state %s: %r" % (self.state, self.inbuf[:80]))

    def on_eof(self):
        if self.state != "closing":
            raise Failed("connection closed by the peer in state %s" % self.state)
        self.result["clean_close"] = True
        self.result["ok"] = self.result["rounds"] > 0
        self.finish()

    def tick(self, stopping):
        """Starts the next round when due, or says goodbye; returns when to look again (monotonic)."""
        if self.state != "idle":
            return None
        if stopping:
            self.state = "bye"
            self.send(b"QUIT\n")
            return None
        if time.monotonic() >= self.next_round:
            self.start_round()
            return None
        return self.next_round

    def fail(self, why):
        self.result["error"] = "%s (in state %s, after %d rounds)" % (why, self.state, self.result["rounds"])
        self.finish()

    def finish(self):
        self.state = "done"
        self.result["round_ms"] = self.round_ms


_sha = {}


def sha_of(start, length):
    key = (start, length)
    if key not in _sha:
        _sha[key] = hashlib.sha256(BLOCK[start:start + length]).hexdigest()
    return _sha[key]


def run(args):
    users = [u.split("=") for u in args.users.split(",")]
    sel = selectors.DefaultSelector()
    pending = list(range(args.connections))
    streams = {}
    unstarted = {}
    registered = {}
    timers = []  # (monotonic time, seq, stream): idle streams and when their next round is due
    seq = itertools.count()
    deadline = time.monotonic() + args.seconds
    stopping = False

    def update(s):
        ev = s.events()
        old = registered.get(s.idx, 0)
        if not ev:
            if old:
                sel.unregister(s.sock)
            registered[s.idx] = 0
            s.sock.close()
        elif not old:
            sel.register(s.sock, ev, s)
        elif ev != old:
            sel.modify(s.sock, ev, s)
        registered[s.idx] = ev

    def settle(s):
        """After anything happened to s: start or schedule its next round, send, fix its registration."""
        if s.state != "done":
            try:
                when = s.tick(stopping)
                if when is not None:
                    heapq.heappush(timers, (when, next(seq), s))
                s.flush()
            except (OSError, Failed) as e:
                s.fail(e)
        update(s)

    next_poll = next_stall_check = 0.0
    while True:
        t = time.monotonic()
        if not stopping and t >= next_poll:
            next_poll = t + 0.05
            if t > deadline or (args.until_file and os.path.exists(args.until_file)):
                stopping = True
                for i in pending:
                    unstarted[i] = {"conn": i, "ok": False, "rounds": 0, "error": "never started: told to stop first"}
                pending = []
                for s in streams.values():
                    settle(s)
        if pending:
            # Logins a few at a time: the subject is what happens to established streams, not a
            # burst of simultaneous handoffs.
            logging_in = sum(1 for s in streams.values() if s.state in ("connecting", "who", "greeting"))
            while pending and logging_in < args.logins_at_once:
                i = pending.pop(0)
                user, node = users[i % len(users)]
                try:
                    streams[i] = Stream(i, user, node, args)
                    logging_in += 1
                    update(streams[i])
                except (OSError, Failed) as e:
                    unstarted[i] = {"conn": i, "user": user, "ok": False, "rounds": 0, "error": "connect: %s" % e}
        while timers and timers[0][0] <= t:
            settle(heapq.heappop(timers)[2])
        # (Checked every pass only once stopping, when it is about to come true.)
        if not pending and (stopping or t >= next_stall_check) and all(s.state == "done" for s in streams.values()):
            break
        wait = 0.05 if not timers else min(0.05, timers[0][0] - t)
        for key, ev in sel.select(max(0.0, wait)):
            s = key.data
            try:
                if s.state == "connecting":
                    s.on_connected()
                else:
                    if ev & selectors.EVENT_WRITE:
                        s.flush()
                    if ev & selectors.EVENT_READ:
                        chunk = s.sock.recv(262144)
                        if chunk:
                            s.last_progress = time.monotonic()
                            s.on_data(chunk)
                        else:
                            s.on_eof()
            except (OSError, Failed) as e:
                s.fail(e)
            settle(s)
        if t >= next_stall_check:
            next_stall_check = t + 1.0
            for s in streams.values():
                if s.state not in ("done", "idle") and t - s.last_progress > args.timeout:
                    s.fail("no progress for %.1f s" % args.timeout)
                    update(s)
    return [streams[i].result if i in streams else unstarted[i] for i in range(args.connections)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=7000)
    p.add_argument("--connections", type=int, default=10)
    p.add_argument("--users", default="alice=n2,bob=n3", help="user=node pairs, used in turn; the node is the greeting expected")
    p.add_argument("--get", type=int, default=32768, help="bytes each round downloads")
    p.add_argument("--put", type=int, default=32768, help="bytes each round uploads")
    p.add_argument("--interval", type=float, default=0.25, help="seconds from one round's start to the next's (pacing)")
    p.add_argument("--seconds", type=float, default=10.0, help="stop starting rounds after this long")
    p.add_argument("--until-file", default="", help="stop starting rounds as soon as this file exists")
    p.add_argument("--logins-at-once", type=int, default=16)
    p.add_argument("--timeout", type=float, default=20.0, help="a connection with work outstanding and no progress for this long fails")
    args = p.parse_args()
    for n in (args.get, args.put):
        if not 0 < n <= MAX_ROUND_BYTES:
            p.error("--get and --put: 1 to %d bytes" % MAX_ROUND_BYTES)
    results = run(args)
    for r in results:
        print(json.dumps(r, separators=(",", ":")))
    failed = [{"conn": r["conn"], "error": r.get("error", "no round completed")} for r in results if not r["ok"]]
    print(json.dumps({"summary": True, "connections": len(results), "ok": len(results) - len(failed), "failed": failed}), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
