#!/usr/bin/env python3
"""Opens --connections line-protocol connections one after another from one source address and
keeps them all open: HELLO, USER <user>, then the greeting (OK <node> once handed off, or the
routing application's ERR when the handoff was refused). Prints one JSON line per connection
({"conn", "greeting"} or {"conn", "error"}), then holds every connection until --hold seconds have
passed and closes them (QUIT, BYE). With --until-file, holds until that file exists instead (--hold still bounds it);
with --report-close, prints {"conn", "bye"} or {"conn", "close_error"} per connection as it closes.
With --login-late, each connection stops after HELLO (still in its routing phase on the
distributor) and sends USER only once the hold is over, then prints {"conn", "greeting"} (or
{"conn", "error"}) before its QUIT.
Bounded: every socket operation has --timeout.
"""
import argparse
import json
import os
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
    p.add_argument("--until-file", default="", help="stop holding as soon as this file exists")
    p.add_argument("--report-close", action="store_true", help="print how each connection's QUIT was answered")
    p.add_argument("--login-late", action="store_true", help="send USER only after the hold")
    args = p.parse_args()
    open_socks = []
    for i in range(args.connections):
        try:
            s = socket.create_connection((args.host, args.port), timeout=args.timeout, source_address=(args.source, 0) if args.source else None)
            s.sendall(b"HELLO\n")
            assert line(s) == "WHO?", "expected WHO?"
            if not args.login_late:
                s.sendall(b"USER %s\n" % args.user.encode())
                greeting = line(s)
                print(json.dumps({"conn": i, "local": "%s:%d" % s.getsockname(), "greeting": greeting}), flush=True)
            open_socks.append(s)
        except (OSError, AssertionError) as e:
            print(json.dumps({"conn": i, "error": "%s: %s" % (type(e).__name__, e)}), flush=True)
    deadline = time.monotonic() + args.hold
    while time.monotonic() < deadline and not (args.until_file and os.path.exists(args.until_file)):
        time.sleep(0.05)
    for i, s in enumerate(open_socks):
        try:
            if args.login_late:
                s.sendall(b"USER %s\n" % args.user.encode())
                print(json.dumps({"conn": i, "local": "%s:%d" % s.getsockname(), "greeting": line(s)}), flush=True)
            s.sendall(b"QUIT\n")
            bye = line(s)
            if args.report_close:
                print(json.dumps({"conn": i, "bye": bye}), flush=True)
        except OSError as e:
            if args.report_close:
                print(json.dumps({"conn": i, "close_error": "%s: %s" % (type(e).__name__, e)}), flush=True)
        s.close()


if __name__ == "__main__":
    main()
