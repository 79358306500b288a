#!/usr/bin/env python3
"""Many sequential line-protocol connections from one process, each checked by the unmodified
client's own code (examples/clients/line_client.py, one()): HELLO, USER, the handoff, then
verified GET/PUT, QUIT, BYE and a clean close.

A pool of --parallel threads takes connection numbers from a queue, so one connection held up by
retransmissions delays only itself, not a fixed share of the others as with --repeat in separate
processes. Connection i uses --kind number i mod (number of kinds), and user number
(i div kinds) mod (number of users). A kind is NAME=OPTIONS, OPTIONS being line_client.py's own
flags (e.g. "motd=--motd 16384 --get 4096 --put 4096").

Prints one JSON object per connection (line_client's, plus conn, kind, started_ms, ended_ms),
then a summary line; exits non-zero if any connection failed.
"""
import argparse
import concurrent.futures
import json
import os
import shlex
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "clients"))
import line_client  # noqa: E402

# line_client.py's options with its defaults, so a kind is written in the client's own terms.
CLIENT_OPTIONS = argparse.ArgumentParser(add_help=False)
CLIENT_OPTIONS.add_argument("--get", type=int, default=0)
CLIENT_OPTIONS.add_argument("--put", type=int, default=0)
CLIENT_OPTIONS.add_argument("--motd", type=int, default=0)
CLIENT_OPTIONS.add_argument("--move", default="")
CLIENT_OPTIONS.add_argument("--whoami", action="store_true")
CLIENT_OPTIONS.add_argument("--fallback-user", default="")
CLIENT_OPTIONS.add_argument("--probe-for", type=float, default=0)
CLIENT_OPTIONS.add_argument("--probe-every", type=float, default=0.2)
CLIENT_OPTIONS.add_argument("--stream-during-handoff", action="store_true")
CLIENT_OPTIONS.add_argument("--read-while-sending", action="store_true")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=7000)
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--parallel", type=int, default=32)
    p.add_argument("--users", default="alice=n2,bob=n3", help="user=node pairs; the node is the greeting expected")
    p.add_argument("--kind", action="append", required=True, help="NAME=line_client options (repeatable)")
    p.add_argument("--timeout", type=float, default=20.0, help="line_client's per-operation socket timeout")
    args = p.parse_args()

    users = [u.split("=") for u in args.users.split(",")]
    kinds = []
    for k in args.kind:
        name, _, opts = k.partition("=")
        kinds.append((name, CLIENT_OPTIONS.parse_args(shlex.split(opts))))

    def run(i):
        name, opts = kinds[i % len(kinds)]
        user, node = users[(i // len(kinds)) % len(users)]
        a = argparse.Namespace(**vars(opts), host=args.host, port=args.port, user=user, expect_node=node, source_port=0, timeout=args.timeout)
        started = time.time()
        try:
            r = line_client.one(a)
        except Exception as e:  # one() only catches what a network failure raises; anything else is a finding too
            r = {"user": user, "ok": False, "error": "%s: %s" % (type(e).__name__, e)}
        r.update(conn=i, kind=name, started_ms=int(started * 1000), ended_ms=int(time.time() * 1000))
        with out_lock:
            print(json.dumps(r), flush=True)
        return r

    out_lock = threading.Lock()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:
        results = list(pool.map(run, range(args.connections)))
    failed = [r["conn"] for r in results if not r["ok"]]
    print(json.dumps({"summary": True, "connections": len(results), "ok": len(results) - len(failed), "failed": failed}), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
