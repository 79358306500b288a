#!/usr/bin/env python3
"""How long the streams of one line_streams.py run stalled: reads its output (one JSON object per
connection, then a summary line) and prints one line: the typical round, and over the connections
the longest round each had (its stall while something happened to the cluster), p50 / p99 / max.
A round is one GET and one PUT of a connection, start to end on the client's clock.

Used by scripts/vagrant/test.sh for the checks that restart batond and destroy the distributor.
Reads at most 4 MB and 1000 lines: the file comes from a VM.
"""
import json
import sys


def pct(sorted_values, q):
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main():
    longest, every = [], []
    with open(sys.argv[1], "rb") as f:
        text = f.read(4 << 20).decode("utf-8", "replace")
    for line in text.splitlines()[:1000]:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if not isinstance(r, dict) or r.get("summary"):
            continue
        rounds = [e - s for s, e in r.get("round_ms") or [] if isinstance(s, (int, float)) and isinstance(e, (int, float))]
        if rounds:
            longest.append(max(rounds))
            every.extend(rounds)
    longest.sort()
    every.sort()
    print("%d connections, round p50 %d ms; longest round per connection: p50 %d ms, p99 %d ms, max %d ms"
          % (len(longest), pct(every, 0.5), pct(longest, 0.5), pct(longest, 0.99), longest[-1] if longest else 0))


if __name__ == "__main__":
    main()
