// Routing-phase limits, against both example routers, from the client namespace with plain Python
// sockets: a silent client is closed after the idle bound, a trickling one at the deadline, a
// flood past the byte bound, connections past the per-address bound are refused while the first
// ones still work; curl and the line client are served all along. Each abusive client comes from
// its own address (added to the client namespace), so the per-address bound of one scenario never
// touches another, and ordinary clients keep the lab's client address. IPv6 clients are counted by
// their /64: several addresses of one /64 share the bound.
import { describe, expect, it } from 'vitest';
import { HTTP_PORT, LINE_PORT } from '../../controller/lab/cluster.js';
import { curlDigest, inClient, lineClient, readLog } from '../../controller/lab/demo.js';
import type { LabDescription } from '../../controller/lab/description.js';
import { extraClientAddress, extraClientAddress6, useLab } from '../helpers/lab.js';

const IDLE_MS = 600;
const DEADLINE_MS = 2000;
const MAX_BYTES = 4096;
const PER_SOURCE = 3;
const limits = ['--routing-idle-ms', String(IDLE_MS), '--routing-deadline-ms', String(DEADLINE_MS), '--routing-max-bytes', String(MAX_BYTES),
  '--routing-max-per-source', String(PER_SOURCE), '--routing-max-total', '64'];
const running = useLab({ extraArgs: { 'n1-line-router': limits, 'n1-http-router': limits } });

// One client per scenario. Every outcome is one JSON line; `how` says how the connection ended:
// eof (the server closed cleanly), reset, or open (still open when the client gave up).
const CLIENT = String.raw`
import json, select, socket, sys, time
mode, host, port, src = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def conn(source=None):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.bind((source or src, 0))
    s.connect((host, port))
    return s

def until_closed(s, t0, limit):
    """Reads until the server ends the connection or limit seconds have passed."""
    got = b""
    while True:
        left = limit - (time.monotonic() - t0)
        if left <= 0:
            return "open", got
        if not select.select([s], [], [], left)[0]:
            continue
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return "reset", got
        if not chunk:
            return "eof", got
        got += chunk

def read_some(s, wait):
    """What arrives within wait seconds: (how, bytes); how is open while the connection stays up."""
    s.settimeout(wait)
    got = b""
    try:
        while not got.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                return "eof", got
            got += chunk
    except socket.timeout:
        pass
    except ConnectionResetError:
        return "reset", got
    return "open", got

def report(**kw):
    for k, v in kw.items():
        if isinstance(v, bytes):
            kw[k] = v.decode("latin1")
    print(json.dumps(kw), flush=True)

if mode == "silent":
    s = conn(); t0 = time.monotonic()
    how, got = until_closed(s, t0, 6)
    report(how=how, ms=round((time.monotonic() - t0) * 1000), received=got)

elif mode == "trickle":
    # One byte every 100 ms: never idle, never done.
    payload = sys.argv[5].encode()
    s = conn(); t0 = time.monotonic(); sent = 0; got = b""; how = "open"
    while time.monotonic() - t0 < 6 and how == "open":
        if select.select([s], [], [], 0.1)[0]:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                how = "reset"; break
            if not chunk:
                how = "eof"; break
            got += chunk
            continue
        try:
            s.send(payload[sent % len(payload):sent % len(payload) + 1]); sent += 1
        except (BrokenPipeError, ConnectionResetError):
            how = "reset"
    if how != "open":
        rest = until_closed(s, time.monotonic(), 1)[1] if how == "eof" else b""
        got += rest
    report(how=how, ms=round((time.monotonic() - t0) * 1000), sent=sent, received=got)

elif mode == "flood":
    # Streams size bytes in 1 KiB pieces, 10 ms apart, reading whatever comes back, until the
    # server ends the connection or everything is sent.
    head, size = sys.argv[5].encode().decode("unicode_escape").encode("latin1"), int(sys.argv[6])
    filler = sys.argv[7].encode().decode("unicode_escape").encode("latin1")
    data = head + filler * ((size - len(head)) // len(filler))
    s = conn(); t0 = time.monotonic(); sent = 0; got = b""; how = "open"
    while sent < len(data) and how == "open":
        if select.select([s], [], [], 0)[0]:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                how = "reset"; break
            if not chunk:
                how = "eof"; break
            got += chunk
        try:
            sent += s.send(data[sent:sent + 1024])
        except (BrokenPipeError, ConnectionResetError):
            how = "reset"; break
        time.sleep(0.01)
    if how == "open":
        how, rest = until_closed(s, t0, 6); got += rest
    report(how=how, ms=round((time.monotonic() - t0) * 1000), sent=sent, received=got)

elif mode == "line-per-source":
    # Three connections in the middle of their routing phase (greeted, no USER yet), then two more.
    n = int(sys.argv[5]); held = []; extra = []
    for i in range(n):
        s = conn(); s.sendall(b"HELLO\n"); held.append((s, read_some(s, 1)))
    for i in range(2):
        s = conn(); extra.append(until_closed(s, time.monotonic(), 2)); s.close()
    # The first ones still work: they log in and are handed off.
    logins = []
    for s, _ in held:
        s.sendall(b"USER alice\n"); logins.append(read_some(s, 5))
    # Handed off, they no longer count: a new connection from the same address is admitted.
    after = ("none", b"")
    for attempt in range(20):
        s = conn(); s.sendall(b"HELLO\n"); after = read_some(s, 1); s.close()
        if after[1] == b"WHO?\n":
            break
        time.sleep(0.1)
    report(held=[[h, g.decode()] for _, (h, g) in held], extra=[[h, g.decode()] for h, g in extra],
           logins=[[h, g.decode("latin1")] for h, g in logins], after=[after[0], after[1].decode()])

elif mode == "line-per-prefix":
    # IPv6: one connection in its routing phase from each of n addresses of one /64, then two more
    # from yet another address of it.
    srcs = src.split(","); n = int(sys.argv[5]); held = []; extra = []
    for a in srcs[:n]:
        s = conn(a); s.sendall(b"HELLO\n"); held.append((s, read_some(s, 1)))
    for i in range(2):
        s = conn(srcs[n]); extra.append(until_closed(s, time.monotonic(), 2)); s.close()
    logins = []
    for s, _ in held:
        s.sendall(b"USER alice\n"); logins.append(read_some(s, 5))
    report(held=[[h, g.decode()] for _, (h, g) in held], extra=[[h, g.decode()] for h, g in extra], logins=[[h, g.decode("latin1")] for h, g in logins])

elif mode == "http-per-source":
    # Three connections with half a request head each, then two more.
    n = int(sys.argv[5]); held = []; extra = []
    for i in range(n):
        s = conn(); s.sendall(b"GET / HTTP/1.1\r\n"); held.append(s)
    for i in range(2):
        s = conn(); s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"); extra.append(until_closed(s, time.monotonic(), 2)); s.close()
    answers = []
    for s in held:
        s.sendall(b"Host: x\r\n\r\n"); answers.append(read_some(s, 2))
    report(extra=[[h, g.decode()] for h, g in extra], answers=[[h, g.decode()] for h, g in answers])
`;

type Outcome = { how: 'eof' | 'reset' | 'open'; ms: number; received: string; sent?: number };

async function client<T = Outcome>(lab: LabDescription, mode: string, port: number, src: string, ...args: string[]): Promise<T> {
  // A source of the IPv6 client addresses goes to the IPv6 DVIPA.
  const r = await inClient(lab, ['python3', '-c', CLIENT, mode, src.includes(':') ? lab.dvipa.address6 : lab.dvipa.address, String(port), src, ...args], 30_000);
  if (r.code !== 0) throw new Error(`python client ${mode} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim()) as T;
}

/** Ordinary clients, from the lab's own client address, alongside every scenario. */
async function ordinaryClients(lab: LabDescription): Promise<void> {
  const [curl, line] = await Promise.all([
    inClient(lab, curlDigest(lab, 'alice', 'wonderland', ['/meanwhile'])),
    inClient(lab, lineClient(lab, ['--user', 'bob', '--expect-node', 'n3', '--get', '1000', '--put', '1000'])),
  ]);
  expect(curl.stdout).toContain('hello alice, served by n2 for GET /meanwhile');
  expect(JSON.parse(line.stdout.trim())).toMatchObject({ ok: true, served_by: 'n3' });
}

describe('routing-phase limits', () => {
  it('a client that sends nothing is closed after the idle bound, with a reason', async () => {
    const { lab } = running;
    const src = await extraClientAddress(lab, 0);
    const [line, http] = await Promise.all([client(lab, 'silent', LINE_PORT, src), client(lab, 'silent', HTTP_PORT, src), ordinaryClients(lab)]);
    expect(line).toMatchObject({ how: 'eof', received: `ERR nothing received for ${IDLE_MS} ms\n` });
    expect(http.how).toBe('eof');
    expect(http.received).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n[\s\S]*Connection: close\r\n/);
    for (const r of [line, http]) {
      expect(r.ms).toBeGreaterThanOrEqual(IDLE_MS - 50);
      expect(r.ms).toBeLessThan(IDLE_MS + 1000);
    }
  });

  it('a client that trickles bytes (slowloris) is closed at the deadline', async () => {
    const { lab } = running;
    const src = await extraClientAddress(lab, 1);
    const [line, http] = await Promise.all([
      client(lab, 'trickle', LINE_PORT, src, 'x'),
      client(lab, 'trickle', HTTP_PORT, src, 'GET / HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'),
      ordinaryClients(lab),
    ]);
    expect(line).toMatchObject({ how: 'eof', received: `ERR no USER within ${DEADLINE_MS} ms\n` });
    expect(http.how).toBe('eof');
    expect(http.received).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
    for (const r of [line, http]) {
      // It was sending all along (about ten bytes a second), so only the deadline can have closed it.
      expect(r.sent).toBeGreaterThanOrEqual(10);
      expect(r.ms).toBeGreaterThanOrEqual(DEADLINE_MS - 50);
      expect(r.ms).toBeLessThan(DEADLINE_MS + 1500);
    }
  });

  it('a flood past the byte bound is answered and closed', async () => {
    const { lab } = running;
    const src = await extraClientAddress(lab, 2);
    const [line, http] = await Promise.all([
      // Greeted, then empty MOTD requests: valid lines the router answers with nothing.
      client(lab, 'flood', LINE_PORT, src, 'HELLO\\n', String(256 * 1024), 'MOTD 0\\n'),
      // A request head that never ends: the guard's bound comes before the router's own 16 KiB
      // head limit (which would answer 400).
      client(lab, 'flood', HTTP_PORT, src, 'GET / HTTP/1.1\\r\\nX-Pad: ', String(256 * 1024), 'a'),
      ordinaryClients(lab),
    ]);
    expect(line.how).toBe('eof');
    expect(line.received).toBe(`WHO?\nERR more than ${MAX_BYTES} bytes before USER\n`);
    expect(http.how).toBe('eof');
    expect(http.received).toMatch(/^HTTP\/1\.1 413 Content Too Large\r\n/);
    for (const r of [line, http]) expect(r.ms).toBeLessThan(1500);
  });

  it('connections past the per-address bound are refused while the first ones still work', async () => {
    const { lab } = running;
    const [lineSrc, httpSrc] = [await extraClientAddress(lab, 3), await extraClientAddress(lab, 4)];
    const [line, http] = await Promise.all([
      client<{ held: string[][]; extra: string[][]; logins: string[][]; after: string[] }>(lab, 'line-per-source', LINE_PORT, lineSrc, String(PER_SOURCE)),
      client<{ extra: string[][]; answers: string[][] }>(lab, 'http-per-source', HTTP_PORT, httpSrc, String(PER_SOURCE)),
      ordinaryClients(lab),
    ]);
    expect(line.held).toEqual(Array(PER_SOURCE).fill(['open', 'WHO?\n']));
    expect(line.extra).toEqual(Array(2).fill(['eof', 'ERR too many connections from your address\n']));
    expect(line.logins).toEqual(Array(PER_SOURCE).fill(['open', 'OK n2\n']));
    expect(line.after).toEqual(['open', 'WHO?\n']);

    for (const [how, text] of http.extra) {
      expect(how).toBe('eof');
      expect(text).toMatch(/^HTTP\/1\.1 429 Too Many Requests\r\n[\s\S]*Retry-After: 1\r\n/);
    }
    for (const [how, text] of http.answers) {
      expect(how).toBe('open');
      expect(text).toMatch(/^HTTP\/1\.1 401 Unauthorized\r\n/);
    }
    // The router says why, without a line per connection.
    const summaries = readLog(lab, 'n1-line-router').filter((l) => l.event === 'routing-limits');
    expect(summaries.length).toBeGreaterThanOrEqual(1);
    expect(summaries.length).toBeLessThanOrEqual(2);
  });

  it('IPv6 clients count by their /64: different addresses of one /64 share the per-source bound', async () => {
    const { lab } = running;
    const sources = [];
    for (let i = 0; i <= PER_SOURCE; i++) sources.push(await extraClientAddress6(lab, i));
    const line = await client<{ held: string[][]; extra: string[][]; logins: string[][] }>(lab, 'line-per-prefix', LINE_PORT, sources.join(','), String(PER_SOURCE));
    // Each address holds one connection only; counted per address, the next two would be admitted.
    expect(line.held).toEqual(Array(PER_SOURCE).fill(['open', 'WHO?\n']));
    expect(line.extra).toEqual(Array(2).fill(['eof', 'ERR too many connections from your address\n']));
    expect(line.logins).toEqual(Array(PER_SOURCE).fill(['open', 'OK n2\n']));
  });
});
