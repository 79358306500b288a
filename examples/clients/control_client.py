#!/usr/bin/env python3
"""A control-socket client in plain Python (docs/protocol.md, "Control socket", version 2): asks
the node's batond for a challenge, registers with its nonce, heartbeats while it listens, and
unregisters at the end. Every datagram it sends carries an HMAC-SHA256 tag made with the node's
control secret (the secret itself is never sent); every answer must carry batond's tag and echo
what it answers, or it is dropped. It prints every answer it takes after the challenge as one JSON
line (with the time it came, in ms since start), and every one it drops as {"ms", "dropped": reason}.

Run it inside a node's network namespace. --token uses another secret than the file's (a forger's
guess); --body sends one literal JSON body, tagged with the secret, instead of registering; --raw
sends literal bytes, untagged, and needs no secret (what any local user can do).
"""
import argparse
import hashlib
import hmac
import json
import secrets
import socket
import sys
import time

VERSION = 2
TAG_BYTES = 32
TO_BATOND = b"baton control v2: application to batond\n"
TO_APPLICATION = b"baton control v2: batond to application\n"


def dumps(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def counter(msg):
    """A datagram's counter n, or 0 if it has none that is a number."""
    n = msg.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) else 0


class Link:
    def __init__(self, key, port):
        self.key = key
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.connect(("127.0.0.1", port))
        self.t0 = time.monotonic()

    def ms(self):
        return round((time.monotonic() - self.t0) * 1000)

    def send_body(self, body):
        tag = hmac.new(self.key, TO_BATOND + body, hashlib.sha256).digest()
        self.s.send(tag + body)

    def send(self, msg):
        self.send_body(dumps({"v": VERSION, **msg}))

    def opened(self, datagram):
        """The answer's body if batond tagged it for an application, else None."""
        if self.key is None or len(datagram) <= TAG_BYTES:
            return None
        tag, body = datagram[:TAG_BYTES], datagram[TAG_BYTES:]
        want = hmac.new(self.key, TO_APPLICATION + body, hashlib.sha256).digest()
        if not hmac.compare_digest(tag, want):
            return None
        try:
            msg = json.loads(body)
        except ValueError:
            return None
        return msg if isinstance(msg, dict) else None

    def print(self, obj):
        print(json.dumps({**obj, "ms": self.ms()}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=4701)
    p.add_argument("--secret", help="the node's control secret file")
    p.add_argument("--token", help="use these 64 hex digits as the secret instead of the file's")
    p.add_argument("--role", default="router")
    p.add_argument("--app", default="py-router")
    p.add_argument("--ports", default="80,7000")
    p.add_argument("--body", help="send this JSON body, tagged, instead of registering, and listen")
    p.add_argument("--raw", help="send these bytes as they are (no tag, no secret needed) and listen")
    p.add_argument("--seconds", type=float, default=1.0, help="how long to listen")
    args = p.parse_args()

    if args.raw is not None:
        link = Link(None, args.port)
        link.s.send(args.raw.encode())
    else:
        secret = args.token or open(args.secret).read().strip()
        link = Link(secret.encode(), args.port)
        if args.body is not None:
            link.send_body(args.body.encode())
    cnonce = secrets.token_hex(16)
    if args.raw is None and args.body is None:
        # The one untagged datagram: 32 zero bytes, then exactly this JSON.
        link.s.send(bytes(TAG_BYTES) + dumps({"v": VERSION, "type": "challenge-request", "cnonce": cnonce}))

    nonce = None  # batond's nonce our register carried
    reg_id = None
    sent = acked = pushed = 0
    next_beat = None
    end = link.t0 + args.seconds
    while time.monotonic() < end:
        wait = (min(next_beat, end) if next_beat else end) - time.monotonic()
        link.s.settimeout(max(0.01, wait))
        try:
            datagram = link.s.recv(65536)
        except socket.timeout:
            if reg_id and time.monotonic() >= next_beat:
                sent += 1
                link.send({"type": "heartbeat", "id": reg_id, "n": sent})
                next_beat += 1.0
            continue
        except ConnectionRefusedError:
            link.print({"error": "refused"})
            return 1
        msg = link.opened(datagram)
        if msg is None:
            link.print({"dropped": "bad-mac", "bytes": len(datagram)})
            continue
        kind = msg.get("type")
        if args.body is not None:
            pass  # one literal datagram sent: whatever batond answers to it is shown as it is
        elif kind == "challenge" and msg.get("cnonce") == cnonce and nonce is None:
            nonce = msg.get("nonce")
            link.send({"type": "register", "nonce": nonce, "role": args.role, "app": args.app,
                       "ports": [int(x) for x in args.ports.split(",")]})
            continue  # the handshake: what is printed starts with the registration
        elif kind == "registered" and nonce is not None and msg.get("nonce") == nonce and reg_id is None:
            reg_id = msg.get("id")
            next_beat = time.monotonic() + msg.get("heartbeatMs", 1000) / 1000
        elif kind == "ack" and reg_id is not None and msg.get("id") == reg_id and acked < counter(msg) <= sent:
            acked = counter(msg)
        elif kind == "targets" and reg_id is not None and msg.get("id") == reg_id and counter(msg) > pushed:
            pushed = counter(msg)
        else:
            # Tagged by batond, but answering nothing we asked, or older than what we have.
            link.print({"dropped": "stale", "type": kind})
            continue
        link.print(msg)
    if reg_id:
        sent += 1
        link.send({"type": "unregister", "id": reg_id, "n": sent})
    return 0


if __name__ == "__main__":
    sys.exit(main())
