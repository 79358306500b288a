#!/usr/bin/env python3
"""Unmodified-client check for the line protocol: plain Python sockets, nothing Baton-specific.

Talks HELLO / USER to the routing application, is handed off to the user's node without
noticing, then does GET and PUT through the moved connection and verifies every byte.
Prints one JSON object per connection on stdout; exits non-zero if any check failed.
"""
import argparse
import hashlib
import json
import socket
import sys
import threading
import time

PERIOD = 251
BLOCK = bytes(i % PERIOD for i in range(PERIOD)) * 4096


def pattern(offset, length):
    out = bytearray()
    while len(out) < length:
        start = (offset + len(out)) % PERIOD
        out += BLOCK[start:start + min(length - len(out), len(BLOCK) - start)]
    return bytes(out)


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed while waiting for a line")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def exactly(self, n, on_chunk):
        got = min(n, len(self.buf))
        on_chunk(self.buf[:got])
        self.buf = self.buf[got:]
        while got < n:
            chunk = self.sock.recv(min(1 << 20, n - got))
            if not chunk:
                raise ConnectionError(f"connection closed after {got} of {n} bytes")
            on_chunk(chunk)
            got += len(chunk)


def read_motd(c, args, result):
    if not args.motd:
        return
    h = hashlib.sha256()
    c.exactly(args.motd, h.update)
    result["motd_ok"] = h.digest() == hashlib.sha256(pattern(0, args.motd)).digest()


def endpoint(name):
    """A socket name as host:port, an IPv6 host in brackets (what batonctl prints)."""
    host, port = name[0], name[1]
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def one(args):
    result = {"user": args.user, "ok": False}
    t0 = time.monotonic()
    source = ("", args.source_port) if args.source_port else None
    sock = socket.create_connection((args.host, args.port), timeout=args.timeout, source_address=source)
    result["local"] = endpoint(sock.getsockname())
    c = Conn(sock)
    try:
        sock.sendall(b"HELLO\n")
        assert c.line() == "WHO?", "expected WHO?"
        if args.motd:
            # Not read until after the handoff: these bytes sit in the routing node's send queue
            # (and the client's receive buffer) when the connection moves.
            sock.sendall(b"MOTD %d\n" % args.motd)
        if args.stream_during_handoff:
            # Send the USER line and the whole PUT at once: these bytes reach the routing node
            # before, during and after the export, and must all arrive at the target in order.
            payload = pattern(7, args.put)
            reader = None
            if args.read_while_sending:
                # The MOTD drains while we upload: the router still has unflushed writes when it
                # starts the handoff, and our bytes keep arriving while it waits for them.
                reader = threading.Thread(target=read_motd, args=(c, args, result))
                reader.start()
            sock.sendall(b"USER %s\nPUT %d\n" % (args.user.encode(), args.put) + payload)
            result["expected_sha256"] = hashlib.sha256(payload).hexdigest()
            if reader:
                reader.join()
            else:
                read_motd(c, args, result)
            result["greeting"] = c.line()
            t1 = time.monotonic()
            reply = c.line()
            result["put_sha256"] = reply.removeprefix("SHA256 ")
            result["put_ok"] = result["put_sha256"] == result["expected_sha256"]
            result["first_reply_ms"] = round((t1 - t0) * 1000, 2)
        else:
            sock.sendall(b"USER %s\n" % args.user.encode())
            read_motd(c, args, result)
            result["greeting"] = c.line()
            result["first_reply_ms"] = round((time.monotonic() - t0) * 1000, 2)
        if args.fallback_user and result["greeting"].startswith("ERR "):
            # The routing node kept the connection after a failed handoff: same socket, next try.
            result["first_greeting"] = result["greeting"]
            sock.sendall(b"USER %s\n" % args.fallback_user.encode())
            result["greeting"] = c.line()
        served_by = result["greeting"].removeprefix("OK ")
        result["served_by"] = served_by
        if args.whoami:
            sock.sendall(b"WHOAMI\n")
            result["whoami"] = c.line()
        if args.get:
            h_got, h_want = hashlib.sha256(), hashlib.sha256(pattern(0, args.get))
            sock.sendall(b"GET %d\n" % args.get)
            t = time.monotonic()
            c.exactly(args.get, h_got.update)
            result["get_mbps"] = round(args.get * 8 / 1e6 / max(time.monotonic() - t, 1e-6), 1)
            result["get_ok"] = h_got.digest() == h_want.digest()
        for node in filter(None, args.move.split(",")):
            # Transfer again (claim 10): the node serving us moves us on; same socket throughout.
            sock.sendall(b"MOVE %s\n" % node.encode())
            reply = c.line()
            moves = result.setdefault("moves", [])
            moves.append(reply)
            h_got, h_want = hashlib.sha256(), hashlib.sha256(pattern(0, 100000))
            sock.sendall(b"GET 100000\n")
            c.exactly(100000, h_got.update)
            payload = pattern(11, 100000)
            sock.sendall(b"PUT 100000\n" + payload)
            moved_ok = reply == "OK " + node and h_got.digest() == h_want.digest() and c.line() == "SHA256 " + hashlib.sha256(payload).hexdigest()
            result["moves_ok"] = result.get("moves_ok", True) and moved_ok
        if args.probe_for:
            # Stay connected and keep checking, while an operator may move us (REST API, drain):
            # who serves us, and a verified exchange both ways, every probe_every seconds.
            nodes, probes_ok, deadline, i = [], True, time.monotonic() + args.probe_for, 0
            while time.monotonic() < deadline:
                sock.sendall(b"WHOAMI\n")
                node = c.line().rpartition(" ON ")[2]
                if not nodes or nodes[-1] != node:
                    nodes.append(node)
                h_got, h_want = hashlib.sha256(), hashlib.sha256(pattern(0, 20000))
                sock.sendall(b"GET 20000\n")
                c.exactly(20000, h_got.update)
                payload = pattern(13 + i % 200, 20000)
                sock.sendall(b"PUT 20000\n" + payload)
                probes_ok = probes_ok and h_got.digest() == h_want.digest() and c.line() == "SHA256 " + hashlib.sha256(payload).hexdigest()
                i += 1
                time.sleep(args.probe_every)
            result["probe_nodes"], result["probes"], result["probes_ok"] = nodes, i, probes_ok
        if args.put and not args.stream_during_handoff:
            payload = pattern(3, args.put)
            t = time.monotonic()
            sock.sendall(b"PUT %d\n" % args.put + payload)
            reply = c.line()
            result["put_mbps"] = round(args.put * 8 / 1e6 / max(time.monotonic() - t, 1e-6), 1)
            result["put_ok"] = reply == "SHA256 " + hashlib.sha256(payload).hexdigest()
        sock.sendall(b"QUIT\n")
        result["bye"] = c.line() == "BYE"
        rest = sock.recv(1)
        result["clean_close"] = rest == b""
        checks = [result.get("moves_ok", True), result.get("probes_ok", True), result.get("motd_ok", True), result["greeting"] == "OK " + args.expect_node if args.expect_node else result["greeting"].startswith("OK "),
                  result.get("get_ok", True), result.get("put_ok", True), result["bye"], result["clean_close"]]
        result["ok"] = all(checks)
    except (OSError, AssertionError, ConnectionError) as e:
        result["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        sock.close()
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=7000)
    p.add_argument("--user", default="alice")
    p.add_argument("--expect-node", default="")
    p.add_argument("--get", type=int, default=0)
    p.add_argument("--put", type=int, default=0)
    p.add_argument("--motd", type=int, default=0, help="ask the router for N bytes and read them only after the handoff")
    p.add_argument("--move", default="", help="after the handoff, ask to be moved to these nodes in turn (comma-separated)")
    p.add_argument("--whoami", action="store_true", help="after the handoff, ask the target who we are")
    p.add_argument("--fallback-user", default="", help="if the first USER is answered with ERR, try this user on the same connection")
    p.add_argument("--probe-for", type=float, default=0, help="after the handoff, keep probing (WHOAMI, GET, PUT) for this many seconds")
    p.add_argument("--probe-every", type=float, default=0.2)
    p.add_argument("--source-port", type=int, default=0, help="connect from this local port (tests that need a known 4-tuple)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--stream-during-handoff", action="store_true")
    p.add_argument("--read-while-sending", action="store_true", help="with --motd and --stream-during-handoff: read the MOTD while uploading")
    args = p.parse_args()
    failed = 0
    for _ in range(args.repeat):
        r = one(args)
        failed += not r["ok"]
        print(json.dumps(r), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
