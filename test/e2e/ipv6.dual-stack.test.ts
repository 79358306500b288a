// IPv6 end to end with unmodified clients, in the dual-stack lab (docs/lab.md): the cluster file's
// DVIPA has an IPv4 and an IPv6 address, the routing applications listen on both, and a connection
// to the IPv6 one is handed off, served, moved and reported exactly as an IPv4 one. Only the
// distributor answers neighbour solicitations for the IPv6 DVIPA (the counterpart of ARP), and a
// target answers the client itself, from the DVIPA (direct server return).
import { execFile, execFileSync } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { curlDigest, inClient, lineClient, readLog } from '../../controller/lab/demo.js';
import type { LabDescription } from '../../controller/lab/description.js';
import { repoRoot } from '../../controller/paths.js';
import { useLab } from '../helpers/lab.js';

const run = promisify(execFile);

function parseCurl(stdout: string) {
  return {
    bodies: stdout.split('\n').filter((l) => l.startsWith('hello')),
    statuses: [...stdout.matchAll(/^(\d{3}) connects=(\d+)$/gm)].map((m) => ({ code: m[1], newConnections: Number(m[2]) })),
  };
}

/** The line client's one JSON line (its last one with --repeat). */
function lineResult(r: { stdout: string; stderr: string }): Record<string, unknown> {
  const last = r.stdout.trim().split('\n').pop();
  return last ? (JSON.parse(last) as Record<string, unknown>) : { ok: false, error: r.stderr };
}

/** Bytes the node's segment interface has sent so far. */
function txBytes(lab: LabDescription, node: string): number {
  const n = lab.nodes.find((x) => x.name === node)!;
  const out = execFileSync('ip', ['-n', n.ns, '-s', '-j', 'link', 'show', 'dev', n.interface], { encoding: 'utf8' });
  return (JSON.parse(out) as Array<{ stats64: { tx: { bytes: number } } }>)[0]!.stats64.tx.bytes;
}

// Neighbour solicitations for the DVIPA from the client namespace, over a raw ICMPv6 socket (the
// kernel fills in the checksum): one to the solicited-node multicast group, one unicast to each
// node. Prints every neighbour advertisement for the DVIPA heard within the wait: its source and
// the link-layer address it names.
const SOLICIT = String.raw`
import json, select, socket, struct, sys, time
target, mac, dev = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), sys.argv[3]
nodes = sys.argv[4].split(",")
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
# Neighbour discovery is only valid with a hop limit of 255 (RFC 4861 7.1.1).
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
t = socket.inet_pton(socket.AF_INET6, target)
ns = struct.pack("!BBHI", 135, 0, 0, 0) + t + struct.pack("!BB", 1, 1) + mac
group = socket.inet_ntop(socket.AF_INET6, b"\xff\x02" + b"\x00" * 9 + b"\x01\xff" + t[13:])
ifindex = socket.if_nametoindex(dev)
for dst in [group] + nodes:
    s.sendto(ns, (dst, 0, 0, ifindex))
heard = []
end = time.monotonic() + 1.0
while time.monotonic() < end:
    if not select.select([s], [], [], end - time.monotonic())[0]:
        continue
    data, src = s.recvfrom(2048)
    if len(data) < 24 or data[0] != 136 or data[8:24] != t:
        continue
    lladdr = None
    opts = data[24:]
    while len(opts) >= 8 and opts[1] > 0:
        if opts[0] == 2:
            lladdr = ":".join("%02x" % b for b in opts[2:8])
        opts = opts[opts[1] * 8:]
    heard.append({"from": src[0], "lladdr": lladdr})
print(json.dumps(heard))
`;

describe('IPv6: the dual-stack DVIPA', () => {
  const running = useLab();

  it('curl -6 authenticates with the routing application, is handed off to n2, and both requests ride the one connection', async () => {
    const { lab } = running;
    const r = await inClient(lab, curlDigest(lab, 'alice', 'wonderland', ['/first', '/second'], 6));
    expect(r.stderr).toBe('');
    const { bodies, statuses } = parseCurl(r.stdout);
    expect(bodies).toEqual(['hello alice, served by n2 for GET /first', 'hello alice, served by n2 for GET /second']);
    // The Digest challenge, then the authenticated request on the same connection: one connect.
    expect(statuses).toEqual([{ code: '200', newConnections: 1 }, { code: '200', newConnections: 0 }]);
    const handed = readLog(lab, 'n1-http-router').filter((l) => l.event === 'handed-off' && l.user === 'alice').pop();
    // The router names its client in the bracket form.
    expect(String(handed?.client)).toMatch(new RegExp(`^\\[${lab.client.address6}\\]:\\d+$`));
  });

  it('the python line client: GET and PUT of 10 MB byte-exact after the handoff, served by n2 straight to the client', async () => {
    const { lab } = running;
    const before = txBytes(lab, 'n1');
    const res = lineResult(await inClient(lab, lineClient(lab, ['--user', 'alice', '--expect-node', 'n2', '--get', '10000000', '--put', '10000000'], 6), 120_000));
    expect(res).toMatchObject({ ok: true, served_by: 'n2', get_ok: true, put_ok: true, clean_close: true });
    expect(String(res.local)).toMatch(new RegExp(`^\\[${lab.client.address6}\\]:\\d+$`));
    // Direct server return: the 10 MB the client fetched never passed through the distributor,
    // which only steered the client's own segments (acknowledgements and the 10 MB upload leave n1
    // towards n2, so its transmit count grows by the upload, not by the download too).
    const sent = txBytes(lab, 'n1') - before;
    expect(sent).toBeGreaterThan(10_000_000);
    expect(sent).toBeLessThan(16_000_000);
  });

  it('moved n2 → n3 → n2 on one connection, GET and PUT byte-exact after every move', async () => {
    const { lab } = running;
    const res = lineResult(await inClient(lab, lineClient(lab, ['--user', 'alice', '--expect-node', 'n2', '--move', 'n3,n2', '--get', '100000', '--put', '100000'], 6), 60_000));
    expect(res).toMatchObject({ ok: true, moves_ok: true });
    expect((res.moves as string[]).map((m) => /n\d/.exec(m)?.[0])).toEqual(['n3', 'n2']);
  });

  it('batonctl lists the IPv6 connection in the bracket form and moves it by that id; its client never notices', async () => {
    const { lab } = running;
    const batonctl = async (...args: string[]) =>
      (await run(process.execPath, [path.join(repoRoot(), 'dist/controller/bin/batonctl.js'), ...args, '--lab', lab.prefix, '--dir', path.dirname(lab.runDir)], { timeout: 30_000 })).stdout;
    const probing = inClient(lab, lineClient(lab, ['--user', 'alice', '--expect-node', 'n2', '--probe-for', '4'], 6), 60_000);
    type Row = { id: string; node: string; state: string };
    const mine = async () => (JSON.parse(await batonctl('connections', '--state', 'forward', '--json')) as { connections: Row[] }).connections.filter((c) => c.id.startsWith(`[${lab.client.address6}]:`));
    let rows: Row[] = [];
    for (let waited = 0; rows.length === 0 && waited < 10_000; waited += 200) {
      rows = await mine();
      if (rows.length === 0) await new Promise((r) => setTimeout(r, 200));
    }
    expect(rows).toHaveLength(1);
    const id = rows[0]!.id;
    expect(id).toMatch(new RegExp(`^\\[${lab.client.address6}\\]:\\d+_\\[${lab.dvipa.address6}\\]:7000$`));
    // The table's entry is an IPv6 flow.
    const entry = [...running.routes.entries()].find(([k]) => k.family === 6 && k.clientAddress === lab.client.address6 && `[${k.clientAddress}]:${k.clientPort}_[${k.vipAddress}]:${k.vipPort}` === id);
    expect(entry?.[1].state).toBe('forward');
    expect(await batonctl('move', id, 'n3')).toContain(`moved ${id} from n2 to n3`);
    const res = lineResult(await probing);
    expect(res).toMatchObject({ ok: true, probes_ok: true });
    expect(res.probe_nodes).toEqual(['n2', 'n3']);
  });

  it('only the distributor answers neighbour solicitations for the IPv6 DVIPA, naming its own MAC', async () => {
    const { lab } = running;
    const n1 = lab.nodes.find((n) => n.name === 'n1')!;
    const r = await inClient(lab, ['python3', '-c', SOLICIT, lab.dvipa.address6, lab.client.mac, lab.client.interface, lab.nodes.map((n) => n.address6).join(',')], 20_000);
    expect(r.code, r.stderr).toBe(0);
    const heard = JSON.parse(r.stdout) as Array<{ from: string; lladdr: string | null }>;
    // Two answers, both n1's: to the multicast solicitation (naming n1's MAC, as an answer to a
    // multicast one must) and to the unicast one sent to n1 (which may leave the MAC out); the
    // unicast ones to n2 and n3 get none. An advertisement's source is the DVIPA itself, so the MAC
    // is what tells who answered.
    expect(heard).toHaveLength(2);
    expect(heard.filter((h) => h.lladdr !== null).map((h) => h.lladdr)).toEqual([n1.mac]);
    // How: n1 holds the DVIPA on its segment interface too, deprecated (never its own connections'
    // source) and without duplicate address detection; n2 and n3 hold it on lo only.
    const on = (node: string, dev: string) =>
      (JSON.parse(execFileSync('ip', ['-n', lab.nodes.find((n) => n.name === node)!.ns, '-6', '-j', 'address', 'show', 'dev', dev], { encoding: 'utf8' })) as Array<{ addr_info: Array<{ local: string; preferred_life_time?: number; nodad?: boolean }> }>)
        .flatMap((l) => l.addr_info)
        .find((a) => a.local === lab.dvipa.address6);
    expect(on('n1', n1.interface)).toMatchObject({ preferred_life_time: 0, nodad: true });
    for (const node of ['n1', 'n2', 'n3']) expect(on(node, 'lo'), node).toBeDefined();
    for (const node of ['n2', 'n3']) expect(on(node, 'eth0'), node).toBeUndefined();
  });
});

/**
 * A client behind a router whose link towards it has a smaller MTU than the lab's segment (1280,
 * IPv6's minimum): the client's own interface says 1500, so it announces an MSS the path cannot
 * carry, and the router answers the first full-size segment with a Packet Too Big (IPv6) or a
 * "fragmentation needed" (IPv4) sent to the segment's source, the DVIPA. The lab's client
 * namespace is that router; the client is a namespace behind it (`<prefix>-far`, removed with the
 * lab). Returns the far client's addresses.
 */
function clientBehindNarrowLink(lab: LabDescription): { ns: string; v4: string; v6: string } {
  const ns = `${lab.prefix}-far`;
  const sh = (argv: string[]) => execFileSync(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  const far = { ns, v4: '10.204.0.2', v6: 'fd62:6174:6f6f::2' };
  sh(['ip', 'netns', 'add', ns]);
  sh(['ip', '-n', lab.client.ns, 'link', 'add', 'narrow0', 'mtu', '1280', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
  // Complete checksums on the far client's segments: the distributor's XDP program sends them on
  // as they are (docs/datapath.md, "Checksums").
  sh(['ip', 'netns', 'exec', ns, 'ethtool', '-K', 'eth0', 'tx', 'off']);
  sh(['ip', 'netns', 'exec', ns, 'sysctl', '-q', '-w', 'net.ipv6.conf.eth0.accept_dad=0']);
  sh(['ip', 'netns', 'exec', lab.client.ns, 'sysctl', '-q', '-w', 'net.ipv6.conf.narrow0.accept_dad=0', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
  sh(['ip', '-n', lab.client.ns, 'address', 'add', '10.204.0.1/24', 'dev', 'narrow0']);
  sh(['ip', '-n', lab.client.ns, 'address', 'add', 'fd62:6174:6f6f::1/64', 'dev', 'narrow0', 'nodad']);
  sh(['ip', '-n', lab.client.ns, 'link', 'set', 'narrow0', 'up']);
  sh(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
  sh(['ip', '-n', ns, 'address', 'add', `${far.v4}/24`, 'dev', 'eth0']);
  sh(['ip', '-n', ns, 'address', 'add', `${far.v6}/64`, 'dev', 'eth0', 'nodad']);
  sh(['ip', '-n', ns, 'link', 'set', 'eth0', 'up']);
  sh(['ip', '-n', ns, 'route', 'add', 'default', 'via', '10.204.0.1']);
  sh(['ip', '-n', ns, '-6', 'route', 'add', 'default', 'via', 'fd62:6174:6f6f::1']);
  for (const n of lab.nodes) {
    sh(['ip', '-n', n.ns, 'route', 'add', '10.204.0.0/24', 'via', lab.client.address]);
    sh(['ip', '-n', n.ns, '-6', 'route', 'add', 'fd62:6174:6f6f::/64', 'via', lab.client.address6]);
  }
  return far;
}

describe('path MTU discovery after a handoff', () => {
  const running = useLab();

  it('a Packet Too Big (IPv6) or fragmentation needed (IPv4) reaches the serving node, which lowers its segments: the download completes', async () => {
    const { lab } = running;
    const far = clientBehindNarrowLink(lab);
    const n2 = lab.nodes.find((n) => n.name === 'n2')!;
    for (const [family, dvipa, client] of [[6, lab.dvipa.address6, far.v6], [4, lab.dvipa.address, far.v4]] as const) {
      const steered = running.routes.stats().steeredIcmp.packets;
      const r = await run('ip', ['netns', 'exec', far.ns, 'python3', path.join(repoRoot(), 'examples/clients/line_client.py'), '--host', dvipa, '--port', '7000',
        '--user', 'alice', '--expect-node', 'n2', '--get', '1000000', '--timeout', '10'], { timeout: 30_000 }).catch((err: { stdout?: string; stderr?: string }) => ({ stdout: err.stdout ?? '', stderr: err.stderr ?? String(err) }));
      // A download: the full-size segments are n2's. (The far client's own full-size segments would
      // be dropped at the narrow link's near end, not answered with an error: its path, not Baton's.)
      expect(lineResult(r), `IPv${family}`).toMatchObject({ ok: true, served_by: 'n2', get_ok: true });
      // The router's error went to the DVIPA, and the distributor sent it on to n2...
      expect(running.routes.stats().steeredIcmp.packets, `IPv${family}`).toBeGreaterThan(steered);
      // ...whose kernel now keeps the path's MTU for the client.
      const route = execFileSync('ip', ['-n', n2.ns, `-${family}`, 'route', 'get', client], { encoding: 'utf8' });
      expect(route, `IPv${family}`).toMatch(/mtu 1280/);
    }
  });
});

describe('IPv6: a refusal is retried elsewhere', () => {
  // n2's HTTP target takes nothing: alice's connection is offered to n2, refused, and handed to n3.
  const running = useLab({ extraArgs: { 'n2-http-target': ['--capacity', '0'] } });

  it('curl -6: refused by n2, served by n3 on the same connection', async () => {
    const { lab } = running;
    const r = await inClient(lab, curlDigest(lab, 'alice', 'wonderland', ['/', '/again'], 6));
    const { bodies, statuses } = parseCurl(r.stdout);
    expect(bodies).toEqual(['hello alice, served by n3 for GET /', 'hello alice, served by n3 for GET /again']);
    expect(statuses).toEqual([{ code: '200', newConnections: 1 }, { code: '200', newConnections: 0 }]);
    const handed = readLog(lab, 'n1-http-router').filter((l) => l.event === 'handed-off' && l.user === 'alice').pop();
    const attempts = (handed?.attempts as Array<{ target: { node: string }; outcome: string; code?: string }> | undefined) ?? [];
    expect(attempts.map((a) => `${a.target.node}:${a.code ?? a.outcome}`)).toEqual(['n2:E_REJECTED', 'n3:done']);
    expect(String(handed?.client)).toMatch(/^\[fd/);
  });
});
