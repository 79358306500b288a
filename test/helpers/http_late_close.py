#!/usr/bin/env python3
"""An HTTP/1.1 client that closes late: one connection, digest authentication (what the HTTP
example's router asks for), one request with "Connection: close", the response read to the
server's FIN, then --linger seconds before this side closes. Prints the HTTP status line and the
local port, then "closed". Used to check that a connection the server has closed keeps its route
until the client's own FIN is through."""
import argparse
import hashlib
import os
import re
import socket
import time


def md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


def read_response(f):
    status = f.readline().decode().strip()
    headers = {}
    for line in iter(f.readline, b"\r\n"):
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    body = f.read(int(headers.get("content-length", "0")))
    return status, headers, body


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--linger", type=float, default=6.0)
    a = p.parse_args()
    s = socket.create_connection((a.host, a.port), timeout=15)
    f = s.makefile("rb")
    s.sendall(f"GET {a.path} HTTP/1.1\r\nHost: {a.host}\r\n\r\n".encode())
    status, headers, _ = read_response(f)
    chal = dict(re.findall(r'(\w+)="?([^",]+)"?', headers["www-authenticate"]))
    cnonce, nc = os.urandom(8).hex(), "00000001"
    ha1 = md5(f"{a.user}:{chal['realm']}:{a.password}")
    ha2 = md5(f"GET:{a.path}")
    resp = md5(f"{ha1}:{chal['nonce']}:{nc}:{cnonce}:auth:{ha2}")
    auth = (f'Digest username="{a.user}", realm="{chal["realm"]}", nonce="{chal["nonce"]}", uri="{a.path}", '
            f'qop=auth, nc={nc}, cnonce="{cnonce}", response="{resp}", algorithm=MD5')
    s.sendall(f"GET {a.path} HTTP/1.1\r\nHost: {a.host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n".encode())
    status, _, _ = read_response(f)
    while f.read(65536):
        pass
    print(status, s.getsockname()[1], flush=True)
    time.sleep(a.linger)
    s.close()
    print("closed", flush=True)


if __name__ == "__main__":
    main()
