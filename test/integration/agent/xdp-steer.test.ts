// XDP steering in a namespace lab: a client, a distributor (n1) running baton_steer and a
// target (n2) on one bridge, n1 and n2 holding the DVIPA on lo. Proves, with real
// TCP handshakes from an unmodified client (python sockets), that: no entry → the
// distributor's kernel serves the flow; FORWARD → the target serves it (direct server return);
// FROZEN → the flow's packets vanish and are counted; a SYN steers on a RELEASED entry and
// reclaims only a FINISHED one; removing an entry restores the distributor; pinned maps survive a
// controller restart and steer on; a full table fails loudly; a flow steered on two CPUs at once
// (BPF_PROG_TEST_RUN from two processes) loses no count. Crafted frames (a raw socket on the
// client, a capture on the target) prove what the program does with frames an ordinary client does
// not send: addressed to another MAC, broadcast, multicast, VLAN-tagged once or twice; and ICMP
// errors about a steered connection (a Packet Too Big from a router), which reach the target,
// whose kernel learns the path MTU.
//
// The test process stays in the root namespace. Loading and attaching happen with the calling
// thread switched into n1's network namespace by setns() (see withNetns and docs/datapath.md).
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isBatonError } from '../../../controller/errors.js';
import {
  closeFd,
  closeObject,
  findMap,
  findProgram,
  loadObject,
  mapFd,
  mapUpdate,
  numPossibleCpus,
  objGet,
  openObject,
  programFd,
  xdpTestRun,
} from '../../../native/libbpf.js';
import { RoutingTable } from '../../../controller/agent/routing-table.js';
import {
  CONFIG_MAP_NAME,
  CONFIG_SIZE,
  ROUTES_MAP_NAME,
  STATS_MAP_NAME,
  STAT_COUNT,
  STEER_PROGRAM_NAME,
  encodeConfig,
  type RouteEntry,
  type StatName,
} from '../../../controller/agent/table-layout.js';
import { addressToBytes, type FlowKey } from '../../../controller/flow.js';
import { defaultObjectPath, loadSteering, unpinInstance, type Steering } from '../../../controller/agent/xdp.js';
import { repoRoot } from '../../../controller/paths.js';
import { withNetns } from '../../helpers/netns.js';

const run = promisify(execFile);
const ROOT = repoRoot();

// ---- the lab ------------------------------------------------------------------------------

const prefix = `bt-${randomBytes(3).toString('hex')}`;
const NS = { sw: `${prefix}-sw`, client: `${prefix}-cl`, n1: `${prefix}-n1`, n2: `${prefix}-n2` };
const INSTANCE = prefix;
const SMALL_INSTANCE = `${prefix}-small`;
/** Must never exist: loading on a loopback device is refused before anything is pinned. */
const LO_INSTANCE = `${prefix}-lo`;
const PIN_DIR = `/sys/fs/bpf/baton/${INSTANCE}`;

const NET = {
  client: { v4: '10.77.0.10', v6: 'fd00:77::10', mac: '02:b7:00:00:00:0a', port: 'swcl' },
  n1: { v4: '10.77.0.1', v6: 'fd00:77::1', mac: '02:b7:00:00:00:01', port: 'swn1' },
  n2: { v4: '10.77.0.2', v6: 'fd00:77::2', mac: '02:b7:00:00:00:02', port: 'swn2' },
};
const DVIPA = { v4: '10.77.0.100', v6: 'fd00:77::100' };
/** Unicast, but nobody's: flooded by the bridge to every port, n1's included. */
const OTHER_MAC = '02:b7:00:00:00:99';
const BROADCAST_MAC = 'ff:ff:ff:ff:ff:ff';
const MULTICAST_MAC = '01:00:5e:00:00:fb';
const TPID = { dot1q: 0x8100, dot1ad: 0x88a8 };
const SERVICE_PORT = 8080;
/** Where the servers that keep a connection open listen (SERVER_PY with hold). */
const HOLD_PORT = 8081;
const TARGET_NODE_ID = 2;
/** A router on the path between the DVIPA and the client, as the source of ICMP errors: no host
 * has these addresses, the errors are crafted frames sent from the client's interface. */
const ROUTER = { v4: '10.77.0.254', v6: 'fd00:77::fe' };

// Greets each client with its name; then closes the connection, or with "hold" keeps it open
// until the client closes it: a live socket for the ICMP errors that are about it.
const SERVER_PY = `
import socket, sys, threading
name, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
hold = len(sys.argv) > 4 and sys.argv[4] == 'hold'
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
s.listen(16)
print('listening', flush=True)
def serve(c):
    c.sendall((name + '\\n').encode())
    while hold and c.recv(256):
        pass
    c.close()
while True:
    c, peer = s.accept()
    print('accepted %s %d' % (peer[0], peer[1]), flush=True)
    if hold:
        threading.Thread(target=serve, args=(c,), daemon=True).start()
    else:
        serve(c)
`;

// Connects from the given port, reads the server's greeting and keeps the connection open until
// its stdin closes. Prints, as JSON, the greeting, the sequence number of the segment that carried
// it and the one after it (what the server sends next), read from a capture of its own interface
// opened before the connection.
const HOLD_CLIENT_PY = `
import json, socket, sys
src, sport, dst, dport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
v6 = ':' in dst
cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86dd if v6 else 0x0800))
cap.bind(('eth0', 0))
cap.settimeout(3)
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
s.bind((src, sport))
s.settimeout(3)
s.connect((dst, dport))
greeting = s.recv(256)
while True:
    ip = cap.recv(65535)[14:]
    if v6:
        if ip[6] != 6:
            continue
        tcp, length = ip[40:], int.from_bytes(ip[4:6], 'big')
    else:
        if ip[9] != 6:
            continue
        ihl = (ip[0] & 15) * 4
        tcp, length = ip[ihl:], int.from_bytes(ip[2:4], 'big') - ihl
    payload = length - (tcp[12] >> 4) * 4
    if int.from_bytes(tcp[0:2], 'big') == dport and int.from_bytes(tcp[2:4], 'big') == sport and payload > 0:
        seq = int.from_bytes(tcp[4:8], 'big')
        break
print(json.dumps({'reply': greeting.decode().strip(), 'seq': seq, 'next': (seq + payload) % 2**32}), flush=True)
sys.stdin.read()
s.close()
`;

// Binds the source port explicitly so the test knows the 4-tuple before the SYN leaves.
const CLIENT_PY = `
import json, socket, sys
src, sport, dst, dport, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET6 if ':' in dst else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((src, sport))
s.settimeout(timeout)
try:
    s.connect((dst, dport))
    data = b''
    while True:
        chunk = s.recv(256)
        if not chunk:
            break
        data += chunk
    print(json.dumps({'ok': True, 'reply': data.decode().strip()}))
except OSError as e:
    print(json.dumps({'ok': False, 'error': type(e).__name__}))
finally:
    s.close()
`;

// Sends each hex argument as one raw frame out of the named interface, exactly as given.
const SEND_PY = `
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for frame in sys.argv[2:]:
    s.send(bytes.fromhex(frame))
`;

// Prints, as JSON, the MACs and VLAN tags (outer first) of the first IPv4 TCP frame from the given
// source port seen on the interface, or null after the timeout. The receiving kernel hands the
// outer tag over out of band (PACKET_AUXDATA), as it does to tcpdump.
const CAPTURE_PY = `
import json, select, socket, struct, sys, time
ifname, sport, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
SOL_PACKET, PACKET_AUXDATA, VLAN_VALID, VLAN_TPID_VALID = 263, 8, 0x10, 0x40
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
s.bind((ifname, 0))
print('ready', flush=True)
deadline = time.time() + timeout
while True:
    left = deadline - time.time()
    if left <= 0 or not select.select([s], [], [], left)[0]:
        print(json.dumps(None), flush=True)
        break
    data, anc, _, _ = s.recvmsg(65535, socket.CMSG_SPACE(20))
    tags = []
    for level, kind, value in anc:
        if level == SOL_PACKET and kind == PACKET_AUXDATA:
            status, _, _, _, _, tci, tpid = struct.unpack('IIIHHHH', value[:20])
            if status & VLAN_VALID:
                tags.append({'tpid': tpid if status & VLAN_TPID_VALID else 0x8100, 'vid': tci & 0xfff})
    off = 12
    while data[off:off + 2] in (b'\\x81\\x00', b'\\x88\\xa8'):
        tags.append({'tpid': int.from_bytes(data[off:off + 2], 'big'), 'vid': int.from_bytes(data[off + 2:off + 4], 'big') & 0xfff})
        off += 4
    ip = data[off + 2:]
    if data[off:off + 2] != b'\\x08\\x00' or len(ip) < 24 or ip[9] != 6:
        continue
    if int.from_bytes(ip[(ip[0] & 15) * 4:][:2], 'big') != sport:
        continue
    print(json.dumps({'dst': data[0:6].hex(':'), 'src': data[6:12].hex(':'), 'tags': tags}), flush=True)
    break
`;

interface Server {
  proc: ChildProcess;
  accepted: string[];
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), `${prefix}-`));
const servers: Server[] = [];
const heldClients: ChildProcess[] = [];
const steerings: { ns: string; steering: Steering }[] = [];

function sh(args: string[]): string {
  return execFileSync(args[0]!, args.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}
function ipn(ns: string, ...args: string[]): string {
  return sh(['ip', '-n', ns, ...args]);
}
function inNs(ns: string, ...args: string[]): string {
  return sh(['ip', 'netns', 'exec', ns, ...args]);
}

function buildLab(): void {
  for (const ns of Object.values(NS)) sh(['ip', 'netns', 'add', ns]);
  ipn(NS.sw, 'link', 'add', 'br0', 'type', 'bridge');
  ipn(NS.sw, 'link', 'set', 'br0', 'up');
  for (const [role, ns] of [['client', NS.client], ['n1', NS.n1], ['n2', NS.n2]] as const) {
    const host = NET[role];
    ipn(NS.sw, 'link', 'add', host.port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    ipn(ns, 'link', 'set', 'eth0', 'address', host.mac);
    ipn(ns, 'address', 'add', `${host.v4}/24`, 'dev', 'eth0');
    ipn(ns, 'address', 'add', `${host.v6}/64`, 'dev', 'eth0', 'nodad');
    ipn(ns, 'link', 'set', 'lo', 'up');
    ipn(ns, 'link', 'set', 'eth0', 'up');
    ipn(NS.sw, 'link', 'set', host.port, 'master', 'br0', 'up');
    // veth hands on CHECKSUM_PARTIAL segments that XDP_TX never completes (docs/datapath.md,
    // "Checksums").
    inNs(ns, 'ethtool', '-K', 'eth0', 'tx', 'off');
    inNs(NS.sw, 'ethtool', '-K', host.port, 'tx', 'off');
  }
  // XDP_TX out of n1's veth is only delivered if the bridge-side peer runs an XDP program.
  ipn(NS.sw, 'link', 'set', 'dev', NET.n1.port, 'xdpdrv', 'obj', path.join(ROOT, 'build/bpf/pass.o'), 'sec', 'xdp');
  // The bridge holds a received frame's outer VLAN tag out of band and a veth would pass it on
  // that way: put it back into the frame towards n1, as a NIC without VLAN offload delivers it.
  inNs(NS.sw, 'ethtool', '-K', NET.n1.port, 'txvlan', 'off', 'tx-vlan-stag-hw-insert', 'off');

  // The DVIPA on both nodes; only n1 (the distributor) answers ARP for it.
  for (const ns of [NS.n1, NS.n2]) {
    ipn(ns, 'address', 'add', `${DVIPA.v4}/32`, 'dev', 'lo');
    ipn(ns, 'address', 'add', `${DVIPA.v6}/128`, 'dev', 'lo', 'nodad');
  }
  inNs(NS.n2, 'sysctl', '-qw', 'net.ipv4.conf.all.arp_ignore=1', 'net.ipv4.conf.all.arp_announce=2');
  // Linux answers neighbour solicitations only for addresses on the receiving interface, so
  // the client is told where the IPv6 DVIPA lives, as the distributor's router would.
  ipn(NS.client, 'neigh', 'replace', DVIPA.v6, 'lladdr', NET.n1.mac, 'dev', 'eth0', 'nud', 'permanent');

  fs.writeFileSync(path.join(tmp, 'server.py'), SERVER_PY);
  fs.writeFileSync(path.join(tmp, 'hold-client.py'), HOLD_CLIENT_PY);
  fs.writeFileSync(path.join(tmp, 'client.py'), CLIENT_PY);
  fs.writeFileSync(path.join(tmp, 'send.py'), SEND_PY);
  fs.writeFileSync(path.join(tmp, 'capture.py'), CAPTURE_PY);
}

async function startServer(ns: string, name: string, addr: string, mode: 'close' | 'hold' = 'close', port = SERVICE_PORT): Promise<Server> {
  const proc = spawn('ip', ['netns', 'exec', ns, 'python3', '-u', path.join(tmp, 'server.py'), name, addr, String(port), mode], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const server: Server = { proc, accepted: [] };
  servers.push(server);
  await new Promise<void>((resolve, reject) => {
    let buf = '';
    proc.once('exit', (code) => reject(new Error(`${name} server on ${addr} exited with ${code}`)));
    proc.stdout!.on('data', (chunk: Buffer) => {
      buf += chunk.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line === 'listening') resolve();
        else if (line.startsWith('accepted ')) server.accepted.push(line.slice('accepted '.length));
      }
    });
  });
  return server;
}

interface ConnectResult {
  ok: boolean;
  reply?: string;
  error?: string;
}

async function connect(family: 4 | 6, clientPort: number, timeoutS = 3): Promise<ConnectResult> {
  const src = family === 4 ? NET.client.v4 : NET.client.v6;
  const dst = family === 4 ? DVIPA.v4 : DVIPA.v6;
  const { stdout } = await run('ip', [
    'netns', 'exec', NS.client, 'python3', path.join(tmp, 'client.py'), src, String(clientPort), dst, String(SERVICE_PORT), String(timeoutS),
  ]);
  return JSON.parse(stdout) as ConnectResult;
}

interface HeldConnection {
  reply: string;
  /** The sequence number of the server's greeting segment: acknowledged by the client since. */
  seq: number;
  /** The one after it: the server's next segment's, its snd_una = snd_nxt once the greeting is acknowledged. */
  next: number;
  close(): Promise<void>;
}

/** A connection from the client to the DVIPA's HOLD_PORT, kept open until close(). */
async function holdConnection(family: 4 | 6, clientPort: number): Promise<HeldConnection> {
  const src = family === 4 ? NET.client.v4 : NET.client.v6;
  const dst = family === 4 ? DVIPA.v4 : DVIPA.v6;
  const proc = spawn('ip', ['netns', 'exec', NS.client, 'python3', '-u', path.join(tmp, 'hold-client.py'), src, String(clientPort), dst, String(HOLD_PORT)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  heldClients.push(proc);
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(out.slice(0, nl));
    });
    void exited.then((code) => reject(new Error(`the client holding port ${clientPort} exited with ${code}`)));
  });
  const { reply, seq, next } = JSON.parse(line) as Omit<HeldConnection, 'close'>;
  return {
    reply,
    seq,
    next,
    close: async () => {
      proc.stdin.end();
      await exited;
    },
  };
}

/**
 * The path MTU a node's kernel has learnt for the client's address, if any: a route exception,
 * which `ip route get` shows with its expiry ("expires 599sec mtu 1280"; IPv4 under "cache").
 */
function cachedPathMtu(ns: string, family: 4 | 6): number | undefined {
  const out = ipn(ns, `-${family}`, 'route', 'get', family === 4 ? NET.client.v4 : NET.client.v6);
  const mtu = / expires \d+sec mtu (\d+)/.exec(out);
  return mtu ? Number(mtu[1]) : undefined;
}

/** One of a node's kernel counters (nstat's names), absolute. */
function kernelCounter(ns: string, name: string): number {
  const out = JSON.parse(inNs(ns, 'nstat', '-asz', '-j')) as { kernel: Record<string, number> };
  return out.kernel[name] ?? 0;
}

/** Frames the client sent just before exiting may still be inside veth's NAPI poll. */
function settle(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 100));
}

function flow(family: 4 | 6, clientPort: number): FlowKey {
  return family === 4
    ? { family, clientAddress: NET.client.v4, clientPort, vipAddress: DVIPA.v4, vipPort: SERVICE_PORT }
    : { family, clientAddress: NET.client.v6, clientPort, vipAddress: DVIPA.v6, vipPort: SERVICE_PORT };
}

// ---- crafted frames -------------------------------------------------------------------------

const TCP_SYN = 0x02;
const TCP_ACK = 0x10;

function macBytes(mac: string): Buffer {
  return Buffer.from(mac.replaceAll(':', ''), 'hex');
}

/** The Internet checksum (RFC 1071) over the concatenated parts. */
function inetChecksum(...parts: Buffer[]): number {
  const buf = Buffer.concat(parts);
  let sum = 0;
  for (let i = 0; i < buf.length; i += 2) sum += (buf[i]! << 8) | (buf[i + 1] ?? 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

interface FrameSpec {
  dstMac: string;
  /** Default: the client's MAC. */
  srcMac?: string;
  clientPort: number;
  flags: number;
  /** VLAN tags, outer first. */
  tags?: Array<{ tpid: number; vid: number }>;
}

/** An IPv4 TCP segment from the client to the DVIPA's service port, checksums and all. */
function tcpFrame(spec: FrameSpec): Buffer {
  const src = Buffer.from(NET.client.v4.split('.').map(Number));
  const dst = Buffer.from(DVIPA.v4.split('.').map(Number));
  const tcp = Buffer.alloc(20);
  tcp.writeUInt16BE(spec.clientPort, 0);
  tcp.writeUInt16BE(SERVICE_PORT, 2);
  tcp.writeUInt32BE(randomBytes(4).readUInt32BE(0), 4);
  tcp.writeUInt32BE(spec.flags & TCP_ACK ? 1 : 0, 8);
  tcp[12] = 5 << 4;
  tcp[13] = spec.flags;
  tcp.writeUInt16BE(65535, 14);
  const pseudo = Buffer.concat([src, dst, Buffer.from([0, 6, 0, tcp.length])]);
  tcp.writeUInt16BE(inetChecksum(pseudo, tcp), 16);
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(ip.length + tcp.length, 2);
  ip.writeUInt16BE(0x4000, 6); // DF
  ip[8] = 64;
  ip[9] = 6;
  src.copy(ip, 12);
  dst.copy(ip, 16);
  ip.writeUInt16BE(inetChecksum(ip), 10);
  const tags = (spec.tags ?? []).map((t) => {
    const tag = Buffer.alloc(4);
    tag.writeUInt16BE(t.tpid, 0);
    tag.writeUInt16BE(t.vid, 2);
    return tag;
  });
  return Buffer.concat([macBytes(spec.dstMac), macBytes(spec.srcMac ?? NET.client.mac), ...tags, Buffer.from([0x08, 0x00]), ip, tcp]);
}

function addr(family: 4 | 6, address: string): Buffer {
  return Buffer.from(addressToBytes(family, address)).subarray(0, family === 4 ? 4 : 16);
}

const ICMP = { destUnreachable: 3, fragmentationNeeded: 4, redirect: 5, echoRequest: 8, timeExceeded: 11, parameterProblem: 12 };
const ICMP6 = { destUnreachable: 1, packetTooBig: 2, timeExceeded: 3, parameterProblem: 4, echoRequest: 128, neighbourSolicitation: 135 };
const IPPROTO = { tcp: 6, udp: 17, ipv6Fragment: 44, icmp: 1, icmpv6: 58 };

interface QuoteSpec {
  family: 4 | 6;
  clientPort: number;
  /** Default: SERVICE_PORT. */
  vipPort?: number;
  seq?: number;
  /** How much of the quoted TCP header the error carries: 20 (default), 8 is all RFC 792 guarantees. */
  tcpBytes?: number;
  /** IPv4: option words in the quoted header (NOPs). */
  optionWords?: number;
  /** IPv4: the quoted header's frag_off (default DF). */
  fragOff?: number;
  /** The quoted header's protocol / next header (default TCP). */
  protocol?: number;
}

/** The start of a segment the serving node sent for a flow, DVIPA → client, as an ICMP error quotes it. */
function quotedSegment(q: QuoteSpec): Buffer {
  const client = q.family === 4 ? NET.client.v4 : NET.client.v6;
  const vip = q.family === 4 ? DVIPA.v4 : DVIPA.v6;
  const tcp = Buffer.alloc(20);
  tcp.writeUInt16BE(q.vipPort ?? SERVICE_PORT, 0);
  tcp.writeUInt16BE(q.clientPort, 2);
  tcp.writeUInt32BE(q.seq ?? 1, 4);
  tcp.writeUInt32BE(1, 8);
  tcp[12] = 5 << 4;
  tcp[13] = TCP_ACK | 0x08; // PSH: a data segment, too big for the next hop
  tcp.writeUInt16BE(502, 14);
  const quotedTcp = tcp.subarray(0, q.tcpBytes ?? tcp.length);
  // The segment was 1500 bytes long on the wire; the error quotes its start only.
  if (q.family === 6) {
    const ip = Buffer.alloc(40);
    ip.writeUInt32BE(0x60000000, 0);
    ip.writeUInt16BE(1500 - 40, 4);
    ip[6] = q.protocol ?? IPPROTO.tcp;
    ip[7] = 64;
    addr(6, vip).copy(ip, 8);
    addr(6, client).copy(ip, 24);
    return Buffer.concat([ip, quotedTcp]);
  }
  const words = 5 + (q.optionWords ?? 0);
  const ip = Buffer.alloc(words * 4, 0x01); // option bytes: NOP
  ip[0] = 0x40 | words;
  ip[1] = 0;
  ip.writeUInt16BE(1500, 2);
  ip.writeUInt16BE(0x1234, 4);
  ip.writeUInt16BE(q.fragOff ?? 0x4000, 6);
  ip[8] = 64;
  ip[9] = q.protocol ?? IPPROTO.tcp;
  ip.writeUInt16BE(0, 10);
  addr(4, vip).copy(ip, 12);
  addr(4, client).copy(ip, 16);
  ip.writeUInt16BE(inetChecksum(ip), 10);
  return Buffer.concat([ip, quotedTcp]);
}

interface IcmpSpec {
  family: 4 | 6;
  type: number;
  code?: number;
  /** The 32 bits after the checksum: the MTU of a Packet Too Big, the next-hop MTU (low 16 bits) of a fragmentation needed. */
  info?: number;
  /** What follows: the quoted packet of an error, an echo's data… */
  body: Buffer;
  /** Default: n1's MAC. */
  dstMac?: string;
  /** Default: the client's MAC. */
  srcMac?: string;
  /** Default: the router. */
  src?: string;
  /** Default: the DVIPA. */
  dst?: string;
  /** IPv4: the outer header's frag_off (default 0). */
  fragOff?: number;
  /** Default 64. */
  hopLimit?: number;
}

/** An ICMP or ICMPv6 message in a frame, checksums and all. */
function icmpFrame(spec: IcmpSpec): Buffer {
  const { family } = spec;
  const src = addr(family, spec.src ?? (family === 4 ? ROUTER.v4 : ROUTER.v6));
  const dst = addr(family, spec.dst ?? (family === 4 ? DVIPA.v4 : DVIPA.v6));
  const icmp = Buffer.concat([Buffer.alloc(8), spec.body]);
  icmp[0] = spec.type;
  icmp[1] = spec.code ?? 0;
  icmp.writeUInt32BE(spec.info ?? 0, 4);
  let ip: Buffer;
  if (family === 6) {
    const pseudo = Buffer.alloc(40);
    src.copy(pseudo, 0);
    dst.copy(pseudo, 16);
    pseudo.writeUInt32BE(icmp.length, 32);
    pseudo[39] = IPPROTO.icmpv6;
    icmp.writeUInt16BE(inetChecksum(pseudo, icmp), 2);
    ip = Buffer.alloc(40);
    ip.writeUInt32BE(0x60000000, 0);
    ip.writeUInt16BE(icmp.length, 4);
    ip[6] = IPPROTO.icmpv6;
    ip[7] = spec.hopLimit ?? 64;
    src.copy(ip, 8);
    dst.copy(ip, 24);
  } else {
    icmp.writeUInt16BE(inetChecksum(icmp), 2);
    ip = Buffer.alloc(20);
    ip[0] = 0x45;
    ip.writeUInt16BE(ip.length + icmp.length, 2);
    ip.writeUInt16BE(spec.fragOff ?? 0, 6);
    ip[8] = spec.hopLimit ?? 64;
    ip[9] = IPPROTO.icmp;
    src.copy(ip, 12);
    dst.copy(ip, 16);
    ip.writeUInt16BE(inetChecksum(ip), 10);
  }
  const ethertype = Buffer.from(family === 4 ? [0x08, 0x00] : [0x86, 0xdd]);
  return Buffer.concat([macBytes(spec.dstMac ?? NET.n1.mac), macBytes(spec.srcMac ?? NET.client.mac), ethertype, ip, icmp]);
}

/** A router's error about a segment the serving node sent: IPv6 Packet Too Big, or IPv4 fragmentation needed. */
function tooBig(family: 4 | 6, quote: Omit<QuoteSpec, 'family'>, mtu: number, dstMac?: string): Buffer {
  return family === 6
    ? icmpFrame({ family, type: ICMP6.packetTooBig, info: mtu, body: quotedSegment({ family, ...quote }), dstMac })
    : icmpFrame({ family, type: ICMP.destUnreachable, code: ICMP.fragmentationNeeded, info: mtu, body: quotedSegment({ family, ...quote }), dstMac });
}

// ---- test runs in the kernel ----------------------------------------------------------------

const XDP_PASS = 2;
const XDP_TX = 3;
/** The test process's loopback (ifindex 1 in every namespace): where BPF_PROG_TEST_RUN frames "arrive". */
const LOOPBACK_IFINDEX = 1;
/** The destination of test-run frames, and the MAC the private program's config names. */
const TEST_RUN_MAC = '02:b7:00:00:00:7e';

/**
 * Runs the program `repeat` times on the frame with BPF_PROG_TEST_RUN in each of `count` child
 * processes at once (one process could not: a test run stays on the CPU it started on). Each
 * child gets the program as its fd 3, loads the built native/libbpf.js (as the lab tests run the
 * built batond), says it is ready, and starts when all are: their runs overlap instead of
 * following each other's start-up.
 */
async function concurrentTestRuns(progFd: number, frame: Buffer, repeat: number, count: number): Promise<Array<{ retval: number; durationNs: number }>> {
  const script = [
    'const { xdpTestRun } = await import(process.argv[1]);',
    "process.stdout.write('ready\\n');",
    "process.stdin.once('data', () => {",
    "  const r = xdpTestRun(3, Buffer.from(process.argv[2], 'hex'), { ingressIfindex: Number(process.argv[3]), repeat: Number(process.argv[4]) });",
    '  process.stdout.write(JSON.stringify(r));',
    '  process.stdin.destroy();',
    '});',
  ].join('\n');
  const libbpf = pathToFileURL(path.join(ROOT, 'dist/native/libbpf.js')).href;
  const children = Array.from({ length: count }, () => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script, libbpf, frame.toString('hex'), String(LOOPBACK_IFINDEX), String(repeat)], {
      stdio: ['pipe', 'pipe', 'pipe', progFd],
    });
    let out = '';
    let err = '';
    let ready!: () => void;
    const isReady = new Promise<void>((r) => (ready = r));
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.startsWith('ready\n')) ready();
    });
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const result = new Promise<{ retval: number; durationNs: number }>((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (code) =>
        code === 0 ? resolve(JSON.parse(out.slice('ready\n'.length)) as { retval: number; durationNs: number }) : reject(new Error(`test-run child exited with ${code}: ${err.slice(0, 2000)}`)),
      );
    });
    // A child that dies before it is ready must fail the test, not leave it waiting.
    return { child, ready: Promise.race([isReady, result.then(() => undefined)]), result };
  });
  try {
    await Promise.all(children.map((c) => c.ready));
  } catch (err) {
    // One child failed to start: the others would wait for their go for ever. Their own exit
    // (killed) says nothing more than the error already thrown.
    for (const c of children) {
      c.result.catch(() => undefined);
      c.child.kill();
    }
    throw err;
  }
  for (const { child } of children) child.stdin!.end('go\n');
  return Promise.all(children.map((c) => c.result));
}

async function sendFrames(...frames: Buffer[]): Promise<void> {
  await run('ip', ['netns', 'exec', NS.client, 'python3', path.join(tmp, 'send.py'), 'eth0', ...frames.map((f) => f.toString('hex'))]);
}

interface Captured {
  dst: string;
  src: string;
  tags: Array<{ tpid: number; vid: number }>;
}

/** Starts a capture on n2's eth0 for the client port's next frame; resolves once it listens. */
async function captureOnTarget(clientPort: number, timeoutS = 2): Promise<() => Promise<Captured | null>> {
  const proc = spawn('ip', ['netns', 'exec', NS.n2, 'python3', '-u', path.join(tmp, 'capture.py'), 'eth0', String(clientPort), String(timeoutS)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines: string[] = [];
  let buf = '';
  let wake: () => void = () => {};
  proc.stdout.on('data', (chunk: Buffer) => {
    buf += chunk.toString();
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      lines.push(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
      wake();
    }
  });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const line = async (): Promise<string> => {
    while (lines.length === 0) {
      const more = new Promise<void>((resolve) => (wake = resolve));
      await Promise.race([more, exited]);
      if (lines.length === 0 && proc.exitCode !== null) throw new Error(`capture on n2 exited with ${proc.exitCode}`);
    }
    return lines.shift()!;
  };
  expect(await line()).toBe('ready');
  return async () => JSON.parse(await line()) as Captured | null;
}

/** Verdict counts that changed, but passedNotTcp: the segment's ARP and neighbour discovery go on meanwhile. */
function statDelta(before: Record<StatName, { packets: bigint }>, after: Record<StatName, { packets: bigint }>): Partial<Record<StatName, bigint>> {
  const delta: Partial<Record<StatName, bigint>> = {};
  for (const name of Object.keys(after) as StatName[]) {
    if (name === 'passedNotTcp') continue;
    const d = after[name].packets - (before[name]?.packets ?? 0n);
    if (d !== 0n) delta[name] = d;
  }
  return delta;
}

/** Overwrites the program's config (a zero-filled buffer: none) through the pinned map. */
function writeConfig(value: Buffer): void {
  const fd = objGet(`${PIN_DIR}/${CONFIG_MAP_NAME}`);
  try {
    mapUpdate(fd, Buffer.alloc(4), value);
  } finally {
    closeFd(fd);
  }
}

function attachedXdpId(ns: string, dev: string): number | undefined {
  const [link] = JSON.parse(ipn(ns, '-j', 'link', 'show', 'dev', dev)) as { xdp?: { prog?: { id: number } } }[];
  return link?.xdp?.prog?.id;
}

// ---- the tests ----------------------------------------------------------------------------

// Root only, like every lab test: without it this fails (never skips: .ci/run counts a skip as a failure).
describe('XDP steering on the distributor (namespace lab)', () => {
  let steering: Steering;
  let n1v4: Server;
  let n2v4: Server;
  let n1v6: Server;
  let n2v6: Server;
  const target = { node: TARGET_NODE_ID, mac: NET.n2.mac };

  beforeAll(async () => {
    execFileSync('make', ['-s', 'bpf'], { cwd: ROOT, stdio: 'inherit' });
    buildLab();
    n1v4 = await startServer(NS.n1, 'n1', DVIPA.v4);
    n2v4 = await startServer(NS.n2, 'n2', DVIPA.v4);
    n1v6 = await startServer(NS.n1, 'n1', DVIPA.v6);
    n2v6 = await startServer(NS.n2, 'n2', DVIPA.v6);
    for (const ns of [NS.n1, NS.n2]) {
      for (const vip of [DVIPA.v4, DVIPA.v6]) await startServer(ns, ns === NS.n1 ? 'n1' : 'n2', vip, 'hold', HOLD_PORT);
    }
    steering = withNetns(NS.n1, () => loadSteering({ instance: INSTANCE, ifname: 'eth0', mode: 'native' }));
    steerings.push({ ns: NS.n1, steering });
  });

  afterAll(async () => {
    for (const { ns, steering: s } of steerings.reverse()) {
      try {
        withNetns(ns, () => s.detach());
      } catch (err) {
        process.stderr.write(`teardown: detach in ${ns}: ${(err as Error).message}\n`);
      }
      s.close();
    }
    for (const instance of [INSTANCE, SMALL_INSTANCE, LO_INSTANCE]) unpinInstance(instance);
    for (const s of servers) s.proc.kill();
    for (const c of heldClients) c.kill();
    for (const ns of Object.values(NS)) {
      try {
        sh(['ip', 'netns', 'del', ns]);
      } catch {
        // Already gone (setup failed before creating it).
      }
    }
    fs.rmSync(tmp, { recursive: true, force: true });
    expect(fs.existsSync(PIN_DIR)).toBe(false);
  });

  it('attaches natively to n1 and pins its maps where bpftool can see them, the config naming n1\'s interface and MAC', () => {
    expect(attachedXdpId(NS.n1, 'eth0')).toBe(steering.programId);
    const routes = JSON.parse(sh(['bpftool', '-j', 'map', 'show', 'pinned', `${PIN_DIR}/baton_routes`])) as Record<string, unknown>;
    expect(routes).toMatchObject({ type: 'hash', name: 'baton_routes', flags: 1, bytes_key: 40, bytes_value: 32, max_entries: 262144 });
    const stats = JSON.parse(sh(['bpftool', '-j', 'map', 'show', 'pinned', `${PIN_DIR}/baton_stats`])) as Record<string, unknown>;
    expect(stats).toMatchObject({ type: 'percpu_array', name: 'baton_stats', bytes_key: 4, bytes_value: 16, max_entries: 14 });
    const config = JSON.parse(sh(['bpftool', '-j', 'map', 'show', 'pinned', `${PIN_DIR}/baton_config`])) as Record<string, unknown>;
    expect(config).toMatchObject({ type: 'array', name: 'baton_config', bytes_key: 4, bytes_value: 80, max_entries: 1 });
    // Read through the header's own field names (BTF), not through the TypeScript mirror.
    const [slot] = JSON.parse(sh(['bpftool', '-j', 'map', 'dump', 'pinned', `${PIN_DIR}/baton_config`])) as Array<{ formatted: { value: { ifindex: number; if_mac: number[] } } }>;
    expect(slot!.formatted.value.ifindex).toBe(steering.ifindex);
    expect(slot!.formatted.value.if_mac).toEqual([...macBytes(NET.n1.mac)]);
  });

  it('without an entry, the client SYN reaches the distributor (passed-no-route rises)', async () => {
    const before = steering.routes.stats().passedNoRoute.packets;
    const result = await connect(4, 41001);
    expect(result).toEqual({ ok: true, reply: 'n1' });
    expect(n1v4.accepted).toContain(`${NET.client.v4} 41001`);
    expect(steering.routes.stats().passedNoRoute.packets).toBeGreaterThan(before);
  });

  it('with a FORWARD entry, the same kind of SYN reaches the target and the target answers directly', async () => {
    const key = flow(4, 41002);
    const before = steering.routes.stats();
    steering.routes.forward(key, target);
    const result = await connect(4, 41002);
    expect(result).toEqual({ ok: true, reply: 'n2' });
    expect(n2v4.accepted).toContain(`${NET.client.v4} 41002`);
    expect(n1v4.accepted).not.toContain(`${NET.client.v4} 41002`);

    await settle();
    const entry = steering.routes.get(key) as RouteEntry;
    expect(entry).toMatchObject({ state: 'forward', targetNode: TARGET_NODE_ID, targetMac: NET.n2.mac });
    // SYN, ACK and the client's FIN at least; only client→DVIPA frames cross the distributor.
    expect(entry.packets).toBeGreaterThanOrEqual(3n);
    expect(entry.bytes).toBeGreaterThanOrEqual(entry.packets * 54n);
    const after = steering.routes.stats();
    expect(after.steered.packets - before.steered.packets).toBe(entry.packets);
    expect(after.steered.bytes - before.steered.bytes).toBe(entry.bytes);
  });

  it('with a FROZEN entry, the SYNs are dropped and counted, and reach neither node', async () => {
    const key = flow(4, 41003);
    const before = steering.routes.stats().droppedFrozen.packets;
    const accepted = n1v4.accepted.length + n2v4.accepted.length;
    steering.routes.freeze(key);
    const result = await connect(4, 41003, 1.5);
    expect(result).toEqual({ ok: false, error: 'TimeoutError' });
    expect(n1v4.accepted.length + n2v4.accepted.length).toBe(accepted);
    await settle();
    const entry = steering.routes.get(key) as RouteEntry;
    expect(entry.state).toBe('frozen');
    expect(entry.packets).toBeGreaterThanOrEqual(1n);
    expect(steering.routes.stats().droppedFrozen.packets - before).toBe(entry.packets);
  });

  it('a SYN on a RELEASED entry is steered (entry kept, counted); only on a FINISHED one does it reclaim the tuple', async () => {
    const key = flow(4, 41004);
    // RELEASED: the owner's application closed, but only the client says the tuple is free. The
    // SYN goes to the owner, whose kernel answers it (here its server accepts it).
    steering.routes.release(key, target);
    let before = steering.routes.stats();
    expect(await connect(4, 41004)).toEqual({ ok: true, reply: 'n2' });
    expect(n2v4.accepted).toContain(`${NET.client.v4} 41004`);
    expect(n1v4.accepted).not.toContain(`${NET.client.v4} 41004`);
    await settle();
    expect(steering.routes.get(key)?.state).toBe('released');
    let after = steering.routes.stats();
    expect(after.steeredReleasedSyn.packets - before.steeredReleasedSyn.packets).toBe(1n);
    expect(after.passedReclaimed.packets - before.passedReclaimed.packets).toBe(0n);

    // FINISHED: the owner's kernel is done with the tuple too. A SYN is a new connection, the
    // distributor's: the entry goes and the SYN is passed.
    steering.routes.finish(key, target);
    expect(steering.routes.get(key)?.state).toBe('finished');
    before = steering.routes.stats();
    expect(await connect(4, 41004)).toEqual({ ok: true, reply: 'n1' });
    expect(n1v4.accepted).toContain(`${NET.client.v4} 41004`);
    expect(steering.routes.get(key)).toBeUndefined();
    after = steering.routes.stats();
    expect(after.passedReclaimed.packets - before.passedReclaimed.packets).toBe(1n);

    // The same SYN on a live FORWARD entry is not a reclaim either: it goes to the target.
    steering.routes.forward(key, target);
    expect(await connect(4, 41004)).toEqual({ ok: true, reply: 'n2' });
    expect(steering.routes.get(key)?.state).toBe('forward');
    expect(steering.routes.remove(key)).toBe(true);
  });

  it('a FINISHED entry still steers everything but a SYN (a retransmitted last FIN reaches the owner)', async () => {
    const key = flow(4, 41005);
    steering.routes.finish(key, target);
    const before = steering.routes.stats();
    await sendFrames(tcpFrame({ dstMac: NET.n1.mac, clientPort: 41005, flags: TCP_ACK | 0x01 }));
    await settle();
    expect(statDelta(before, steering.routes.stats())).toEqual({ steered: 1n });
    expect(steering.routes.get(key)).toMatchObject({ state: 'finished', packets: 1n });
    expect(steering.routes.remove(key)).toBe(true);
  });

  it('an entry naming n1 itself (a backup\'s replica of a connection it serves) is passed to n1\'s kernel, counted, not sent back out', async () => {
    const key = flow(4, 41011);
    steering.routes.forward(key, { node: 1, mac: NET.n1.mac });
    const before = steering.routes.stats();
    // Steered, the SYN would leave n1 towards its own MAC and be lost: no answer at all.
    expect(await connect(4, 41011)).toEqual({ ok: true, reply: 'n1' });
    expect(n1v4.accepted).toContain(`${NET.client.v4} 41011`);
    await settle();
    const delta = statDelta(before, steering.routes.stats());
    expect(delta.passedServedHere).toBeGreaterThanOrEqual(1n);
    expect(delta.steered ?? 0n).toBe(0n);
    expect(steering.routes.get(key)!.packets).toBe(delta.passedServedHere);
    expect(steering.routes.remove(key)).toBe(true);
  });

  it('steers only frames addressed to n1\'s own unicast MAC: another MAC, broadcast and multicast are passed and counted', async () => {
    const key = flow(4, 41006);
    steering.routes.forward(key, target);
    const before = steering.routes.stats();
    const captured = await captureOnTarget(41006);
    await sendFrames(tcpFrame({ dstMac: NET.n1.mac, clientPort: 41006, flags: TCP_ACK }));
    expect(await captured()).toEqual({ dst: NET.n2.mac, src: NET.n1.mac, tags: [] });
    await sendFrames(...[OTHER_MAC, BROADCAST_MAC, MULTICAST_MAC].map((dstMac) => tcpFrame({ dstMac, clientPort: 41006, flags: TCP_ACK })));
    await settle();
    // One steered, three passed untouched; only the steered one counts for the flow.
    expect(statDelta(before, steering.routes.stats())).toEqual({ steered: 1n, passedNotForUs: 3n });
    expect(steering.routes.get(key)?.packets).toBe(1n);

    // Not even a SYN on a FINISHED entry changes the table when it was not sent to n1.
    steering.routes.finish(key, target);
    await sendFrames(tcpFrame({ dstMac: OTHER_MAC, clientPort: 41006, flags: TCP_SYN }), tcpFrame({ dstMac: BROADCAST_MAC, clientPort: 41006, flags: TCP_SYN }));
    await settle();
    expect(steering.routes.get(key)?.state).toBe('finished');
    expect(steering.routes.remove(key)).toBe(true);
  });

  it('without a config for its interface the program steers nothing: passed and counted', async () => {
    const configs = [Buffer.alloc(CONFIG_SIZE), encodeConfig({ ifindex: steering.ifindex + 1000, mac: NET.n1.mac })];
    try {
      for (const [i, config] of configs.entries()) {
        const key = flow(4, 41020 + i);
        steering.routes.forward(key, target);
        writeConfig(config);
        const before = steering.routes.stats();
        // The distributor's kernel sees the flow: its own server answers.
        expect(await connect(4, key.clientPort)).toEqual({ ok: true, reply: 'n1' });
        await settle();
        const delta = statDelta(before, steering.routes.stats());
        expect(delta.steered).toBeUndefined();
        expect(delta.passedUnconfigured).toBeGreaterThanOrEqual(3n);
        // A FROZEN flow stays frozen without a config: dropping needs no MAC.
        steering.routes.freeze(key);
        expect(await connect(4, key.clientPort, 1)).toEqual({ ok: false, error: 'TimeoutError' });
        expect(steering.routes.remove(key)).toBe(true);
      }
    } finally {
      writeConfig(encodeConfig({ ifindex: steering.ifindex, mac: NET.n1.mac }));
    }
    steering.routes.forward(flow(4, 41022), target);
    expect(await connect(4, 41022)).toEqual({ ok: true, reply: 'n2' });
    expect(steering.routes.remove(flow(4, 41022))).toBe(true);
  });

  it('steers a frame with one VLAN tag (802.1Q or 802.1ad) with its tag; two tags are passed and counted', async () => {
    const key = flow(4, 43001);
    steering.routes.forward(key, target);
    for (const tag of [{ tpid: TPID.dot1q, vid: 100 }, { tpid: TPID.dot1ad, vid: 200 }]) {
      const before = steering.routes.stats();
      const captured = await captureOnTarget(43001);
      await sendFrames(tcpFrame({ dstMac: NET.n1.mac, clientPort: 43001, flags: TCP_SYN, tags: [tag] }));
      expect(await captured()).toEqual({ dst: NET.n2.mac, src: NET.n1.mac, tags: [tag] });
      expect(statDelta(before, steering.routes.stats())).toEqual({ steered: 1n });
    }
    expect(steering.routes.get(key)?.packets).toBe(2n);

    const before = steering.routes.stats();
    await sendFrames(
      tcpFrame({ dstMac: NET.n1.mac, clientPort: 43001, flags: TCP_ACK, tags: [{ tpid: TPID.dot1q, vid: 100 }, { tpid: TPID.dot1q, vid: 200 }] }),
      tcpFrame({ dstMac: NET.n1.mac, clientPort: 43001, flags: TCP_ACK, tags: [{ tpid: TPID.dot1ad, vid: 100 }, { tpid: TPID.dot1q, vid: 200 }] }),
    );
    await settle();
    expect(statDelta(before, steering.routes.stats())).toEqual({ passedStackedVlan: 2n });
    expect(steering.routes.get(key)?.packets).toBe(2n);
    expect(steering.routes.remove(key)).toBe(true);
  });

  it('removing an entry gives the flow back to the distributor', async () => {
    for (const port of [41002, 41003]) {
      expect(steering.routes.remove(flow(4, port))).toBe(true);
      expect(steering.routes.get(flow(4, port))).toBeUndefined();
      expect(await connect(4, port)).toEqual({ ok: true, reply: 'n1' });
      expect(n1v4.accepted).toContain(`${NET.client.v4} ${port}`);
    }
    expect(steering.routes.remove(flow(4, 41002))).toBe(false);
  });

  it('steers IPv6 flows the same way', async () => {
    expect(await connect(6, 42001)).toEqual({ ok: true, reply: 'n1' });
    steering.routes.forward(flow(6, 42002), target);
    expect(await connect(6, 42002)).toEqual({ ok: true, reply: 'n2' });
    expect(n2v6.accepted).toContain(`${NET.client.v6} 42002`);
    expect(n1v6.accepted).not.toContain(`${NET.client.v6} 42002`);
    expect((steering.routes.get(flow(6, 42002)) as RouteEntry).packets).toBeGreaterThanOrEqual(3n);
    expect(steering.routes.remove(flow(6, 42002))).toBe(true);
  });

  // A router between the DVIPA and the client that cannot forward a segment the target sent (too
  // big) tells the segment's source, the DVIPA: the error arrives at the distributor. Before
  // ICMP errors followed their flow it reached n1's kernel only, which holds no socket for the
  // flow: n2 never learnt the path MTU and went on sending segments the path drops.
  it.each([
    { family: 6 as const, what: 'an ICMPv6 Packet Too Big', clientPort: 44001, mtu: 1280 },
    { family: 4 as const, what: 'an ICMPv4 fragmentation needed', clientPort: 44002, mtu: 1200 },
  ])('$what about a steered connection reaches the target, whose kernel learns the path MTU (n1 learns nothing)', async ({ family, clientPort, mtu }) => {
    const key = { ...flow(family, clientPort), vipPort: HOLD_PORT };
    steering.routes.forward(key, target);
    const held = await holdConnection(family, clientPort);
    try {
      expect(held.reply).toBe('n2');
      // The client's acknowledgement of the greeting reaches n2: its snd_una is then held.next.
      await settle();
      const quote = { clientPort, vipPort: HOLD_PORT };
      const packets = steering.routes.get(key)!.packets;

      // Quoting the greeting's own segment, acknowledged since: steered, but n2's kernel takes an
      // error only for a sequence number between snd_una and snd_nxt (tcp_v4_err, tcp_v6_err).
      let before = steering.routes.stats();
      const outOfWindow = kernelCounter(NS.n2, 'TcpExtOutOfWindowIcmps');
      await sendFrames(tooBig(family, { ...quote, seq: held.seq }, mtu));
      await settle();
      expect(statDelta(before, steering.routes.stats())).toEqual({ steeredIcmp: 1n });
      expect(kernelCounter(NS.n2, 'TcpExtOutOfWindowIcmps') - outOfWindow).toBe(1);
      expect(cachedPathMtu(NS.n2, family)).toBeUndefined();

      // Quoting the segment n2 sends next: n2's socket takes it, its kernel caches the path MTU.
      before = steering.routes.stats();
      await sendFrames(tooBig(family, { ...quote, seq: held.next }, mtu));
      await settle();
      expect(statDelta(before, steering.routes.stats())).toEqual({ steeredIcmp: 1n });
      expect(cachedPathMtu(NS.n2, family)).toBe(mtu);
      expect(cachedPathMtu(NS.n1, family)).toBeUndefined();
      // The entry counts them as frames of its flow.
      expect(steering.routes.get(key)!.packets - packets).toBe(2n);
    } finally {
      await held.close();
    }
    expect(steering.routes.remove(key)).toBe(true);
  });

  it('an ICMP error about a FROZEN flow is dropped and counted; about a flow without an entry it reaches the distributor\'s kernel', async () => {
    // FROZEN: nothing may reach the socket being exported; the router sends another error when
    // the target's next too-big segment arrives.
    for (const [family, clientPort] of [[4, 44004], [6, 44005]] as const) {
      const key = flow(family, clientPort);
      steering.routes.freeze(key);
      const before = steering.routes.stats();
      await sendFrames(tooBig(family, { clientPort }, 1280));
      await settle();
      expect(statDelta(before, steering.routes.stats())).toEqual({ droppedFrozen: 1n });
      expect(steering.routes.get(key)).toMatchObject({ state: 'frozen', packets: 1n });
      expect(steering.routes.remove(key)).toBe(true);
    }

    // No entry: n1 serves the connection, and its kernel gets the error like a segment of it.
    const held = await holdConnection(6, 44003);
    try {
      expect(held.reply).toBe('n1');
      await settle();
      const before = steering.routes.stats();
      await sendFrames(tooBig(6, { clientPort: 44003, vipPort: HOLD_PORT, seq: held.next }, 1400));
      await settle();
      expect(statDelta(before, steering.routes.stats())).toEqual({ passedNoRoute: 1n });
      expect(cachedPathMtu(NS.n1, 6)).toBe(1400);
    } finally {
      await held.close();
    }
  });

  it('informational ICMP is never steered: an echo request carrying a steered flow\'s quote, a neighbour solicitation', async () => {
    const keys = [flow(4, 44006), flow(6, 44006)];
    for (const key of keys) steering.routes.forward(key, target);
    const before = steering.routes.stats();
    await sendFrames(
      // Echo data laid out as an error's quote of the steered flow: only the type tells them apart.
      icmpFrame({ family: 4, type: ICMP.echoRequest, info: 0x00010001, body: quotedSegment({ family: 4, clientPort: 44006 }) }),
      icmpFrame({ family: 6, type: ICMP6.echoRequest, info: 0x00010001, body: quotedSegment({ family: 6, clientPort: 44006 }) }),
      // A unicast neighbour solicitation for n1's address (reachability confirmation).
      icmpFrame({
        family: 6,
        type: ICMP6.neighbourSolicitation,
        src: NET.client.v6,
        dst: NET.n1.v6,
        hopLimit: 255,
        body: Buffer.concat([addr(6, NET.n1.v6), Buffer.from([1, 1]), macBytes(NET.client.mac)]),
      }),
    );
    await settle();
    const after = steering.routes.stats();
    expect(statDelta(before, after)).toEqual({});
    expect(after.passedNotTcp.packets - before.passedNotTcp.packets).toBeGreaterThanOrEqual(3n);
    for (const key of keys) {
      expect(steering.routes.get(key)?.packets).toBe(0n);
      expect(steering.routes.remove(key)).toBe(true);
    }
  });

  it('finds the flow in every ICMP error that quotes TCP, from its first 8 bytes, and in nothing else (BPF_PROG_TEST_RUN)', () => {
    const obj = openObject(defaultObjectPath());
    try {
      loadObject(obj);
      mapUpdate(mapFd(findMap(obj, CONFIG_MAP_NAME)), Buffer.alloc(4), encodeConfig({ ifindex: LOOPBACK_IFINDEX, mac: TEST_RUN_MAC }));
      const table = new RoutingTable(mapFd(findMap(obj, ROUTES_MAP_NAME)), mapFd(findMap(obj, STATS_MAP_NAME)), numPossibleCpus());
      const prog = programFd(findProgram(obj, STEER_PROGRAM_NAME));
      const verdict = (frame: Buffer): { retval: number; delta: Partial<Record<StatName, bigint>>; notTcp: bigint } => {
        const before = table.stats();
        const { retval } = xdpTestRun(prog, frame, { ingressIfindex: LOOPBACK_IFINDEX, repeat: 1 });
        const after = table.stats();
        return { retval, delta: statDelta(before, after), notTcp: after.passedNotTcp.packets - before.passedNotTcp.packets };
      };
      const steered = { retval: XDP_TX, delta: { steeredIcmp: 1n }, notTcp: 0n };
      const notAFlow = { retval: XDP_PASS, delta: {}, notTcp: 1n };
      const clientPort = 44010;
      for (const family of [4, 6] as const) table.forward(flow(family, clientPort), target);
      const error = (family: 4 | 6, type: number, quote: Partial<QuoteSpec> = {}, code = 0) =>
        icmpFrame({ family, type, code, dstMac: TEST_RUN_MAC, body: quotedSegment({ family, clientPort, ...quote }) });

      // Every error type, both families; 8 bytes of the quoted TCP header are enough, 7 are not.
      for (const type of [ICMP.destUnreachable, ICMP.timeExceeded, ICMP.parameterProblem]) expect(verdict(error(4, type))).toEqual(steered);
      for (const type of [ICMP6.destUnreachable, ICMP6.packetTooBig, ICMP6.timeExceeded, ICMP6.parameterProblem]) expect(verdict(error(6, type))).toEqual(steered);
      for (const family of [4, 6] as const) {
        expect(verdict(tooBig(family, { clientPort, tcpBytes: 8 }, 1280, TEST_RUN_MAC))).toEqual(steered);
        expect(verdict(tooBig(family, { clientPort, tcpBytes: 7 }, 1280, TEST_RUN_MAC))).toEqual(notAFlow);
      }
      // A quoted IPv4 header with options is read past by its ihl.
      expect(verdict(tooBig(4, { clientPort, optionWords: 2, tcpBytes: 8 }, 1280, TEST_RUN_MAC))).toEqual(steered);

      // Not about a TCP flow: a quoted later fragment (no ports), UDP, an IPv6 fragment header;
      // a redirect; an outer datagram in fragments.
      expect(verdict(tooBig(4, { clientPort, fragOff: 0x00b9 }, 1280, TEST_RUN_MAC))).toEqual(notAFlow);
      expect(verdict(tooBig(4, { clientPort, protocol: IPPROTO.udp }, 1280, TEST_RUN_MAC))).toEqual(notAFlow);
      expect(verdict(tooBig(6, { clientPort, protocol: IPPROTO.ipv6Fragment }, 1280, TEST_RUN_MAC))).toEqual(notAFlow);
      expect(verdict(error(4, ICMP.redirect))).toEqual(notAFlow);
      for (const fragOff of [0x2000, 0x0010]) {
        expect(verdict(icmpFrame({ family: 4, type: ICMP.destUnreachable, code: ICMP.fragmentationNeeded, info: 1280, fragOff, dstMac: TEST_RUN_MAC, body: quotedSegment({ family: 4, clientPort }) }))).toEqual(notAFlow);
      }

      // The quote is read as the serving node sent it (DVIPA port first): its ports the other way round name no flow.
      const reversed = quotedSegment({ family: 4, clientPort: SERVICE_PORT, vipPort: clientPort });
      expect(verdict(icmpFrame({ family: 4, type: ICMP.destUnreachable, code: ICMP.fragmentationNeeded, info: 1280, dstMac: TEST_RUN_MAC, body: reversed }))).toMatchObject({ retval: XDP_PASS, delta: { passedNoRoute: 1n } });

      // Every state's verdict, the checks of a segment's: steered on RELEASED and FINISHED (never a
      // SYN: the entry stays), passed when it names this node or comes from another distributor.
      const key = flow(4, clientPort);
      table.release(key, target);
      expect(verdict(error(4, ICMP.destUnreachable))).toEqual(steered);
      table.finish(key, target);
      expect(verdict(error(4, ICMP.destUnreachable))).toEqual(steered);
      expect(table.get(key)?.state).toBe('finished');
      table.forward(key, { node: 1, mac: TEST_RUN_MAC });
      expect(verdict(error(4, ICMP.destUnreachable))).toMatchObject({ retval: XDP_PASS, delta: { passedServedHere: 1n } });
      table.forward(key, target);
      expect(verdict(icmpFrame({ family: 4, type: ICMP.destUnreachable, dstMac: OTHER_MAC, body: quotedSegment({ family: 4, clientPort }) }))).toMatchObject({ retval: XDP_PASS, delta: { passedNotForUs: 1n } });
      const peer = '02:b7:00:00:00:01';
      mapUpdate(mapFd(findMap(obj, CONFIG_MAP_NAME)), Buffer.alloc(4), encodeConfig({ ifindex: LOOPBACK_IFINDEX, mac: TEST_RUN_MAC, peers: [peer] }));
      expect(verdict(icmpFrame({ family: 4, type: ICMP.destUnreachable, dstMac: TEST_RUN_MAC, srcMac: peer, body: quotedSegment({ family: 4, clientPort }) }))).toMatchObject({ retval: XDP_PASS, delta: { passedFromDistributor: 1n } });
    } finally {
      closeObject(obj);
    }
  });

  it('counts every frame of a flow that two CPUs steer at the same moment: the entry\'s adds are atomic', async () => {
    // Frames from one receive queue reach the program on one CPU at a time; here two processes
    // run a private copy of it on the same flow at once, which only a flow spread over queues
    // would do in production. Plain adds in the program lost hundreds to tens of thousands of the
    // two million counts here, each run; per-connection counts must stay exact (docs/datapath.md,
    // "Per-flow counters").
    const repeat = 1_000_000;
    const obj = openObject(defaultObjectPath());
    try {
      loadObject(obj);
      // The entry names the configured MAC itself, so every repetition counts the frame on the
      // entry and passes it unchanged (passedServedHere): the same atomic adds a steered frame
      // makes, on the same frame each time.
      mapUpdate(mapFd(findMap(obj, CONFIG_MAP_NAME)), Buffer.alloc(4), encodeConfig({ ifindex: LOOPBACK_IFINDEX, mac: TEST_RUN_MAC }));
      const table = new RoutingTable(mapFd(findMap(obj, ROUTES_MAP_NAME)), mapFd(findMap(obj, STATS_MAP_NAME)), numPossibleCpus());
      const key = flow(4, 41020);
      table.forward(key, { node: TARGET_NODE_ID, mac: TEST_RUN_MAC });
      const frame = tcpFrame({ dstMac: TEST_RUN_MAC, clientPort: key.clientPort, flags: TCP_ACK });
      const prog = programFd(findProgram(obj, STEER_PROGRAM_NAME));
      const runs = await concurrentTestRuns(prog, frame, repeat, 2);
      expect(runs.map((r) => r.retval)).toEqual([XDP_PASS, XDP_PASS]);
      const total = 2n * BigInt(repeat);
      expect(table.get(key)).toMatchObject({ state: 'forward', packets: total, bytes: total * BigInt(frame.length) });
      expect(table.stats().passedServedHere.packets).toBe(total);
    } finally {
      closeObject(obj);
    }
  });

  it('never steers again a frame another distributor steered here: a backup\'s lagging replica cannot send it back to the node it left', () => {
    // A connection moving to the backup (n2 here, its program configured with n1 as the other
    // distributor): n1 already steers the client's frames to n2, while n2's replica still names
    // n3, the node the connection leaves. Steered on, the bytes went back to n3, which reset the
    // connection or acknowledged bytes n2 never got (seen on VMs, docs/datapath.md).
    const obj = openObject(defaultObjectPath());
    try {
      loadObject(obj);
      const self = TEST_RUN_MAC;
      const peer = '02:b7:00:00:00:01';
      const stale = { node: 3, mac: '02:b7:00:00:00:03' };
      const config = mapFd(findMap(obj, CONFIG_MAP_NAME));
      mapUpdate(config, Buffer.alloc(4), encodeConfig({ ifindex: LOOPBACK_IFINDEX, mac: self, peers: ['02:b7:00:00:00:09', peer] }));
      const table = new RoutingTable(mapFd(findMap(obj, ROUTES_MAP_NAME)), mapFd(findMap(obj, STATS_MAP_NAME)), numPossibleCpus());
      const prog = programFd(findProgram(obj, STEER_PROGRAM_NAME));
      const run = (frame: Buffer) => xdpTestRun(prog, frame, { ingressIfindex: LOOPBACK_IFINDEX, repeat: 1 }).retval;
      const key = flow(4, 41030);
      table.forward(key, stale);

      // From the client (a takeover's first frames): the replica steers.
      let before = table.stats();
      expect(run(tcpFrame({ dstMac: self, clientPort: 41030, flags: TCP_ACK }))).toBe(XDP_TX);
      expect(statDelta(before, table.stats())).toEqual({ steered: 1n });
      // From the other distributor: this node's kernel gets it, the entry is left as it is.
      before = table.stats();
      expect(run(tcpFrame({ dstMac: self, srcMac: peer, clientPort: 41030, flags: TCP_ACK }))).toBe(XDP_PASS);
      expect(statDelta(before, table.stats())).toEqual({ passedFromDistributor: 1n });
      expect(table.get(key)).toMatchObject({ state: 'forward', targetNode: 3, packets: 1n });
      // Not even a SYN on a FINISHED entry reclaims it: the other distributor's table decides.
      table.finish(key, stale);
      expect(run(tcpFrame({ dstMac: self, srcMac: peer, clientPort: 41030, flags: TCP_SYN }))).toBe(XDP_PASS);
      expect(table.get(key)?.state).toBe('finished');

      // A config that names no other distributor steers the same frame: the check is the config's.
      mapUpdate(config, Buffer.alloc(4), encodeConfig({ ifindex: LOOPBACK_IFINDEX, mac: self }));
      table.forward(key, stale);
      expect(run(tcpFrame({ dstMac: self, srcMac: peer, clientPort: 41030, flags: TCP_ACK }))).toBe(XDP_TX);
    } finally {
      closeObject(obj);
    }
  });

  it('lists entries and counts only the TCP it could not route as passed-not-tcp', () => {
    steering.routes.forward(flow(4, 41010), target);
    steering.routes.freeze(flow(6, 42010));
    const listed = new Map([...steering.routes.entries()].map(([k, v]) => [`${k.clientAddress}:${k.clientPort}`, v.state]));
    expect(listed).toEqual(new Map([[`${NET.client.v4}:41010`, 'forward'], [`${NET.client.v6}:42010`, 'frozen']]));
    expect(steering.routes.size()).toBe(2);
    // ARP and ICMPv6 neighbour traffic crossed n1 during the tests.
    const stats = steering.routes.stats();
    expect(Object.keys(stats).sort()).toEqual([
      'droppedBadEntry', 'droppedFrozen', 'passedFragment', 'passedFromDistributor', 'passedNoRoute', 'passedNotForUs', 'passedNotTcp', 'passedReclaimed', 'passedServedHere',
      'passedStackedVlan', 'passedUnconfigured', 'steered', 'steeredIcmp', 'steeredReleasedSyn',
    ]);
    expect(Object.keys(stats)).toHaveLength(STAT_COUNT);
    expect(stats.passedNotTcp.packets).toBeGreaterThan(0n);
    expect(stats.droppedBadEntry.packets).toBe(0n);
  });

  it('counts a table of thousands exactly (the walk /metrics does on every scrape)', () => {
    const before = steering.routes.size();
    const many = Array.from({ length: 5000 }, (_, i) => flow(i % 2 ? 4 : 6, 20000 + i));
    for (const f of many) steering.routes.freeze(f);
    expect(steering.routes.size()).toBe(before + 5000);
    for (const f of many.slice(0, 2500)) steering.routes.remove(f);
    expect(steering.routes.size()).toBe(before + 2500);
    for (const f of many.slice(2500)) steering.routes.remove(f);
    expect(steering.routes.size()).toBe(before);
  });

  it('a restarted controller reuses the pinned maps: entries survive and keep steering', async () => {
    const key = flow(4, 41010);
    const oldId = steering.programId;
    const mapIds = () =>
      ['baton_routes', 'baton_stats', 'baton_config'].map((m) => (JSON.parse(sh(['bpftool', '-j', 'map', 'show', 'pinned', `${PIN_DIR}/${m}`])) as { id: number }).id);
    const idsBefore = mapIds();
    // The old controller goes away without detaching, as in a restart or crash.
    const oldRoutes = steering.routes;
    steering.close();
    expect(() => oldRoutes.get(key)).toThrow(/used after close/);
    steerings.splice(steerings.findIndex((s) => s.steering === steering), 1);
    steering = withNetns(NS.n1, () => loadSteering({ instance: INSTANCE, ifname: 'eth0', mode: 'native' }));
    steerings.push({ ns: NS.n1, steering });

    expect(steering.programId).not.toBe(oldId);
    expect(attachedXdpId(NS.n1, 'eth0')).toBe(steering.programId);
    // The same maps, counters and config included: only a changed layout replaces one.
    expect(mapIds()).toEqual(idsBefore);
    expect(steering.routes.get(key)?.state).toBe('forward');
    expect(steering.routes.size()).toBe(2);
    expect(await connect(4, 41010)).toEqual({ ok: true, reply: 'n2' });

    const opened = RoutingTable.openPinned(PIN_DIR);
    try {
      expect(opened.get(key)?.packets).toBeGreaterThanOrEqual(3n);
    } finally {
      opened.close();
    }
  });

  it('upgrading keeps the routing table: a stats map of another size is replaced (counters restart), a missing config map created', async () => {
    // What a build with 7 verdict reasons and no config map left pinned.
    steering.close();
    steerings.splice(steerings.findIndex((s) => s.steering === steering), 1);
    fs.rmSync(`${PIN_DIR}/baton_stats`);
    fs.rmSync(`${PIN_DIR}/baton_config`);
    sh(['bpftool', 'map', 'create', `${PIN_DIR}/baton_stats`, 'type', 'percpu_array', 'key', '4', 'value', '16', 'entries', '7', 'name', 'baton_stats']);

    steering = withNetns(NS.n1, () => loadSteering({ instance: INSTANCE, ifname: 'eth0', mode: 'native' }));
    steerings.push({ ns: NS.n1, steering });
    const stats = JSON.parse(sh(['bpftool', '-j', 'map', 'show', 'pinned', `${PIN_DIR}/baton_stats`])) as Record<string, unknown>;
    expect(stats).toMatchObject({ max_entries: STAT_COUNT });
    expect(fs.existsSync(`${PIN_DIR}/baton_config`)).toBe(true);
    expect(steering.routes.size()).toBe(2);
    expect(await connect(4, 41010)).toEqual({ ok: true, reply: 'n2' });
    expect(steering.routes.stats().steered.packets).toBeGreaterThanOrEqual(3n);
  });

  it('refuses an interface without an Ethernet MAC before creating anything', () => {
    let error: unknown;
    try {
      withNetns(NS.client, () => loadSteering({ instance: LO_INSTANCE, ifname: 'lo', mode: 'generic' }));
    } catch (err) {
      error = err;
    }
    expect(isBatonError(error, 'E_CONFIG')).toBe(true);
    expect((error as Error).message).toMatch(/lo is not an Ethernet interface/);
    expect(fs.existsSync(`/sys/fs/bpf/baton/${LO_INSTANCE}`)).toBe(false);
    expect(attachedXdpId(NS.client, 'lo')).toBeUndefined();
  });

  it('refuses a capacity that does not match the pinned table, saying what to do', () => {
    let error: unknown;
    try {
      withNetns(NS.n1, () => loadSteering({ instance: INSTANCE, ifname: 'eth0', mode: 'native', maxEntries: 1024 }));
    } catch (err) {
      error = err;
    }
    expect(isBatonError(error, 'E_BPF')).toBe(true);
    expect((error as Error).message).toMatch(/holds 262144 entries, 1024 requested/);
    expect(attachedXdpId(NS.n1, 'eth0')).toBe(steering.programId);
  });

  it('a full routing table rejects new flows with "routing table full" but still updates existing ones', () => {
    // Any Ethernet interface will do: a veth pair of the client's own.
    ipn(NS.client, 'link', 'add', 'sm0', 'type', 'veth', 'peer', 'name', 'sm1');
    const small = withNetns(NS.client, () => loadSteering({ instance: SMALL_INSTANCE, ifname: 'sm0', mode: 'generic', maxEntries: 4 }));
    steerings.push({ ns: NS.client, steering: small });
    for (let port = 50001; port <= 50004; port++) small.routes.freeze(flow(4, port));
    let error: unknown;
    try {
      small.routes.freeze(flow(4, 50005));
    } catch (err) {
      error = err;
    }
    expect(isBatonError(error, 'E_BPF')).toBe(true);
    expect((error as Error).message).toMatch(/^routing table full/);
    expect((error as { context: Record<string, unknown> }).context).toMatchObject({ errnoName: 'E2BIG', maxEntries: 4 });
    small.routes.forward(flow(4, 50004), target);
    expect(small.routes.get(flow(4, 50004))?.state).toBe('forward');
    expect(small.routes.size()).toBe(4);

    // Teardown order must not matter: after close() only the program id is left to match.
    small.close();
    expect(attachedXdpId(NS.client, 'sm0')).toBe(small.programId);
    withNetns(NS.client, () => small.detach());
    expect(attachedXdpId(NS.client, 'sm0')).toBeUndefined();
  });

  it('detach stops steering but leaves the maps pinned; unpinInstance removes them', async () => {
    withNetns(NS.n1, () => steering.detach());
    expect(attachedXdpId(NS.n1, 'eth0')).toBeUndefined();
    expect(fs.existsSync(`${PIN_DIR}/baton_routes`)).toBe(true);
    // The entry is still there, but nothing consults it: the distributor serves the flow.
    expect(steering.routes.get(flow(4, 41010))?.state).toBe('forward');
    expect(await connect(4, 41010)).toEqual({ ok: true, reply: 'n1' });
    withNetns(NS.n1, () => steering.detach());

    unpinInstance(INSTANCE);
    expect(fs.existsSync(PIN_DIR)).toBe(false);
    expect(() => sh(['bpftool', 'map', 'show', 'pinned', `${PIN_DIR}/baton_routes`])).toThrow();
  });
});
