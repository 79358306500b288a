#!/usr/bin/env python3
"""A control-socket client in plain Python (docs/protocol.md, "Control socket"): registers with the
node's batond over UDP, prints every datagram it gets back as one JSON line (with the time it came,
in ms since start), heartbeats while it listens, and unregisters at the end. Run it inside a node's
network namespace; --token overrides the secret read from --secret (to show a forged one is dropped)
and --raw sends a literal datagram instead of a registration.
"""
import argparse
import json
import socket
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=4701)
    p.add_argument("--secret", help="the node's control secret file")
    p.add_argument("--token", help="send this token instead of the secret")
    p.add_argument("--role", default="router")
    p.add_argument("--app", default="py-router")
    p.add_argument("--ports", default="80,7000")
    p.add_argument("--raw", help="send this datagram as is and listen")
    p.add_argument("--seconds", type=float, default=1.0, help="how long to listen")
    args = p.parse_args()

    token = args.token or open(args.secret).read().strip()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", args.port))
    if args.raw is not None:
        s.send(args.raw.encode())
    else:
        s.send(json.dumps({"v": 1, "type": "register", "token": token, "role": args.role, "app": args.app,
                           "ports": [int(x) for x in args.ports.split(",")]}).encode())
    t0 = time.monotonic()
    reg_id = None
    next_beat = t0 + 1.0
    while time.monotonic() - t0 < args.seconds:
        s.settimeout(max(0.01, min(next_beat, t0 + args.seconds) - time.monotonic()))
        try:
            msg = json.loads(s.recv(65536))
        except socket.timeout:
            if reg_id and time.monotonic() >= next_beat:
                s.send(json.dumps({"v": 1, "type": "heartbeat", "token": token, "id": reg_id}).encode())
                next_beat += 1.0
            continue
        except ConnectionRefusedError:
            print(json.dumps({"ms": round((time.monotonic() - t0) * 1000), "error": "refused"}), flush=True)
            return 1
        if msg.get("type") == "registered":
            reg_id = msg["id"]
        msg["ms"] = round((time.monotonic() - t0) * 1000)
        print(json.dumps(msg), flush=True)
    if reg_id:
        s.send(json.dumps({"v": 1, "type": "unregister", "token": token, "id": reg_id}).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
