#!/usr/bin/env python3
"""A steady handoff load: a new line-protocol connection every 1/--rate seconds for --seconds, each
in its own thread: HELLO, USER <user>, the greeting (OK <node> once handed off), GET --get bytes
checked against the pattern, QUIT, BYE. Every socket operation has --timeout.

Prints one JSON line per connection: {"conn", "start_ms", "end_ms", "outcome", "node"?, "error"?}
where outcome is ok, reset (ECONNRESET), refused (ECONNREFUSED), closed (EOF before the answer),
timeout, or error (anything else); then a summary line {"summary": true, outcome: count, ...}.
"""
import argparse
import json
import os
import socket
import sys
import threading
import time

# The pattern the line targets serve, from the example client beside the examples.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "clients"))
from line_client import BLOCK, PERIOD  # noqa: E402


def now_ms():
    return int(time.time() * 1000)


def line(sock):
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise EOFError("closed by the server")
        buf += chunk
    return buf.decode(errors="replace").rstrip("\n")


def read_exactly(sock, n):
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(65536, n - len(data)))
        if not chunk:
            raise EOFError("closed by the server")
        data += chunk
    return bytes(data)


def one(i, args, results):
    r = {"conn": i, "start_ms": now_ms()}
    try:
        with socket.create_connection((args.host, args.port), timeout=args.timeout) as s:
            s.sendall(b"HELLO\n")
            line(s)
            s.sendall(b"USER %s\n" % args.user.encode())
            greeting = line(s)
            if not greeting.startswith("OK "):
                raise RuntimeError("greeting %r" % greeting[:80])
            r["node"] = greeting[3:]
            s.sendall(b"GET %d\n" % args.get)
            if read_exactly(s, args.get) != BLOCK[: args.get]:
                raise RuntimeError("GET bytes differ from the pattern")
            s.sendall(b"QUIT\n")
            if line(s) != "BYE":
                raise RuntimeError("no BYE")
        r["outcome"] = "ok"
    except ConnectionResetError as e:
        r.update(outcome="reset", error=str(e))
    except ConnectionRefusedError as e:
        r.update(outcome="refused", error=str(e))
    except EOFError as e:
        r.update(outcome="closed", error=str(e))
    except socket.timeout as e:
        r.update(outcome="timeout", error=str(e) or "timed out")
    except Exception as e:  # noqa: BLE001 - every other failure is reported, not raised
        r.update(outcome="error", error="%s: %s" % (type(e).__name__, e))
    r["end_ms"] = now_ms()
    results.append(r)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=7000)
    p.add_argument("--user", default="bob")
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--get", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args()
    if args.get > len(BLOCK) - PERIOD:
        p.error("--get too large for the pattern")
    results, threads = [], []
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < args.seconds:
        t = threading.Thread(target=one, args=(i, args, results), daemon=True)
        t.start()
        threads.append(t)
        i += 1
        time.sleep(max(0.0, start + i / args.rate - time.monotonic()))
    for t in threads:
        t.join(args.timeout * 4 + 5)
    summary = {"summary": True, "connections": i}
    for r in sorted(results, key=lambda r: r["conn"]):
        print(json.dumps(r))
        summary[r["outcome"]] = summary.get(r["outcome"], 0) + 1
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
