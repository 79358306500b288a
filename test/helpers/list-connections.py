#!/usr/bin/env python3
"""Lists a node's connections through its REST API, every page of them, --parallel times at once,
over HTTPS (the cluster CA) with a read token; --metrics-every n also scrapes /metrics and
/v1/stats every n pages. Prints one JSON line: for each listing the pages and entries it saw, its
slowest page in milliseconds, and when it started and ended (epoch milliseconds, the clock the
nodes' logs use, so a test can tell what happened while the listings ran). Bounded: every
request has --timeout.
"""
import argparse
import concurrent.futures
import json
import ssl
import time
import urllib.request


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--api", required=True, help="https://<node address>:<port>")
    p.add_argument("--cafile", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--parallel", type=int, default=20)
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--metrics-every", type=int, default=0, help="also scrape /metrics and /v1/stats after every n-th page (0: never)")
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.check_hostname = False  # the certificate names the node; we connect by address
    token = open(args.token_file).read().strip()

    def get(path):
        req = urllib.request.Request(args.api + path, headers={"Authorization": "Bearer " + token})
        t = time.monotonic()
        with urllib.request.urlopen(req, context=ctx, timeout=args.timeout) as r:
            body = r.read()
        return body, (time.monotonic() - t) * 1000

    def listing(i):
        pages, entries, slowest, ids, cursor = 0, 0, 0.0, set(), None
        start_ms = time.time() * 1000
        while True:
            body, ms = get("/v1/connections?limit=%d%s" % (args.limit, "&cursor=" + cursor if cursor else ""))
            page = json.loads(body)
            pages += 1
            entries += len(page["connections"])
            ids.update(c["id"] for c in page["connections"])
            slowest = max(slowest, ms)
            if args.metrics_every and pages % args.metrics_every == 0:
                for path in ("/metrics", "/v1/stats"):
                    _, ms = get(path)
                    slowest = max(slowest, ms)
            cursor = page.get("next")
            if not cursor:
                return {"pages": pages, "entries": entries, "distinct": len(ids), "slowest_ms": round(slowest, 1),
                        "start_ms": round(start_ms), "end_ms": round(time.time() * 1000)}

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:
        results = list(pool.map(listing, range(args.parallel)))
    print(json.dumps({"results": results, "seconds": round(time.monotonic() - t0, 1)}))


if __name__ == "__main__":
    main()
