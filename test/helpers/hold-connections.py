#!/usr/bin/env python3
"""Opens --connections line-protocol connections one after another from one source address and
keeps them all open: HELLO, USER <user>, then the greeting (OK <node> once handed off, or the
routing application's ERR when the handoff was refused). Prints one JSON line per connection
({"conn", "greeting"} or {"conn", "error"}), then holds every connection until --hold seconds have
passed and closes them (QUIT, BYE). Bounded: every socket operation has --timeout.
"""
import argparse
import json
import socket
import time


def line(sock):
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed by the server")
        buf += chunk
    return buf.decode().rstrip("\n")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=7000)
    p.add_argument("--source", default="", help="source address to bind (one client address for all)")
    p.add_argument("--user", default="alice")
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--hold", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args()
    open_socks = []
    for i in range(args.connections):
        try:
            s = socket.create_connection((args.host, args.port), timeout=args.timeout, source_address=(args.source, 0) if args.source else None)
            s.sendall(b"HELLO\n")
            assert line(s) == "WHO?", "expected WHO?"
            s.sendall(b"USER %s\n" % args.user.encode())
            greeting = line(s)
            print(json.dumps({"conn": i, "local": "%s:%d" % s.getsockname(), "greeting": greeting}), flush=True)
            open_socks.append(s)
        except (OSError, AssertionError) as e:
            print(json.dumps({"conn": i, "error": "%s: %s" % (type(e).__name__, e)}), flush=True)
    time.sleep(args.hold)
    for s in open_socks:
        try:
            s.sendall(b"QUIT\n")
            line(s)
        except OSError:
            pass
        s.close()


if __name__ == "__main__":
    main()
