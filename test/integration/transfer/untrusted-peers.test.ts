// Trusting peers and applications less (issue 11, items 7 and 9), against real batonds.
//
// A genuine peer is not trusted with every connection: a process holding n3's certificate,
// connecting from n3's address, offers n2 a connection n3 does not serve (the distributor's table
// has no entry for it), one that claims to come from n1, and one to an address that is no DVIPA.
// n2 refuses all three, leaves no socket behind, and logs each with its count; honest transfers
// again (n2 → n3 → n2) still go through the distributor's confirmation.
//
// An application's inbox cannot be filled by another user: a process running as nobody floods the
// inbox of an application about to register on n2; its hello still succeeds, and from then on the
// stranger's datagrams are refused by the kernel (EPERM).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { agentSocket, certsDir } from '../../../controller/lab/cluster.js';
import { inClient, lineClient, readLog } from '../../../controller/lab/demo.js';
import { createLogger } from '../../../controller/log.js';
import { openAgentLink } from '../../../controller/sdk/agent-link.js';
import { LinkInbox } from '../../../controller/transfer/fd-exchange.js';
import { Accepts } from '../../../controller/transfer/messages.js';
import { useLab } from '../../helpers/lab.js';
import { withNetns } from '../../helpers/netns.js';

const running = useLab();
const node = (name: string) => running.lab.nodes.find((n) => n.name === name)!;
const log = createLogger({}, 'silent');

// n3's side, forged: TLS with n3's certificate from n3's address, a hello as n3, three offers.
// Prints every accept or reject n2 sent back, by connection id.
const FORGER = String.raw`
import json, socket, ssl, struct, sys, time
ca, cert, key, host, port, source, dvipa = sys.argv[1:8]

def frame(h, blobs=()):
    if blobs:
        h = dict(h, blobs=[len(b) for b in blobs])
    j = json.dumps(h).encode()
    body = b"".join(blobs)
    return struct.pack(">II", 4 + len(j) + len(body), len(j)) + j + body

def offer(conn_id, sender, local, client_port):
    conn = {"family": 4, "local": {"address": local, "port": 7000}, "remote": {"address": "10.203.0.99", "port": client_port},
            "sendSeq": 1000, "recvSeq": 2000, "unsentLength": 0, "mss": 1400,
            "options": {"timestamps": False, "sack": False, "windowScale": False}, "sndWscale": 0, "rcvWscale": 0, "timestamp": 0,
            "window": {"sndWl1": 2000, "sndWnd": 65535, "maxWindow": 65535, "rcvWnd": 65535, "rcvWup": 2000}}
    return frame({"v": 1, "type": "offer", "connId": conn_id, "from": sender, "target": {"node": "n2", "port": 7000},
                  "conn": conn, "appState": None}, [b"", b"", b"", b""])

ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
ctx.load_cert_chain(cert, key)
s = ctx.wrap_socket(socket.create_connection((host, int(port)), source_address=(source, 0), timeout=10), server_hostname="n2")
s.sendall(frame({"v": 1, "type": "hello", "role": "peer", "name": "n3"}))
s.sendall(offer("forged.owner", "n3", dvipa, 4444) + offer("forged.sender", "n1", dvipa, 4445) + offer("forged.vip", "n3", source, 4446))
buf, replies, deadline = b"", {}, time.time() + 10
while len(replies) < 3 and time.time() < deadline:
    data = s.recv(65536)
    if not data:
        break
    buf += data
    while len(buf) >= 8:
        n, hl = struct.unpack(">II", buf[:8])
        if len(buf) < 4 + n:
            break
        h = json.loads(buf[8:8 + hl])
        buf = buf[4 + n:]
        if h.get("type") in ("accept", "reject"):
            replies[h["connId"]] = {"type": h["type"], "reason": h.get("reason")}
print(json.dumps(replies))
`;

// A stranger: datagrams to an abstract address until the kernel refuses one; prints how many got
// in and the refusal's errno name.
const FLOODER = String.raw`
import errno, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setblocking(False)
sent = 0
while sent < 1000:
    try:
        s.sendto(b"baton-link", b"\0" + sys.argv[1].encode())
        sent += 1
    except OSError as e:
        print(sent, errno.errorcode[e.errno])
        break
`;

function flood(ns: string, address: string): { sent: number; refusal: string } {
  // The system's interpreter: a per-user one (pyenv under /root) is out of nobody's reach.
  const out = execFileSync('ip', ['netns', 'exec', ns, 'setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '/usr/bin/python3', '-c', FLOODER, address], { encoding: 'utf8', timeout: 10_000 });
  const [sent, refusal] = out.trim().split(' ');
  return { sent: Number(sent), refusal: refusal ?? 'none' };
}

describe('a target trusts a genuine peer with the connections it serves, no more', () => {
  it('offers n3 may not make are refused by n2, counted, and leave no socket', async () => {
    const certs = certsDir(running.lab);
    const script = path.join(running.lab.runDir, 'forger.py');
    fs.writeFileSync(script, FORGER);
    const n3 = node('n3');
    const out = execFileSync(
      'ip',
      ['netns', 'exec', n3.ns, 'python3', script, path.join(certs, 'ca.crt'), path.join(certs, 'n3.crt'), path.join(certs, 'n3.key'), node('n2').address, '4700', n3.address, running.lab.dvipa.address],
      { encoding: 'utf8', timeout: 30_000 },
    );
    const replies = JSON.parse(out) as Record<string, { type: string; reason?: string }>;
    expect(replies['forged.owner']).toMatchObject({ type: 'reject', reason: expect.stringMatching(/distributor does not confirm n3 serves this connection/) });
    expect(replies['forged.sender']).toMatchObject({ type: 'reject', reason: expect.stringMatching(/says it comes from n1 but arrived on n3's link/) });
    expect(replies['forged.vip']).toMatchObject({ type: 'reject', reason: expect.stringMatching(/not a DVIPA/) });

    // No socket for the forged client on n2, not even one in repair mode.
    const sockets = execFileSync('ip', ['netns', 'exec', node('n2').ns, 'ss', '-tanH'], { encoding: 'utf8' });
    expect(sockets).not.toContain('10.203.0.99');
    // Each refusal logged with its kind and the running count (baton_offers_refused_total).
    const refused = readLog(running.lab, 'n2-batond').filter((l) => l.msg === 'offer refused');
    expect(refused.map((l) => [l.connId, l.refusal])).toEqual(
      expect.arrayContaining([
        ['forged.owner', 'not-owner'],
        ['forged.sender', 'wrong-sender'],
        ['forged.vip', 'not-dvipa'],
      ]),
    );
    expect(refused.every((l) => typeof l.refused === 'number' && l.refused >= 1)).toBe(true);
    // The distributor was asked about n3, and said no.
    expect(readLog(running.lab, 'n1-batond').some((l) => l.msg === 'route request refused' && l.op === 'owner' && l.connId === 'forged.owner')).toBe(true);

    // Honest transfers again still pass the same check: n2 → n3 → n2, confirmed by n1 each time.
    const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'alice', '--expect-node', 'n2', '--move', 'n3,n2', '--get', '1000']), 30_000);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, moves: ['OK n3', 'OK n2'], moves_ok: true, get_ok: true });
  });
});

describe("an application's inbox is no other user's to fill", () => {
  it('flooded by nobody before its hello, the application still registers; afterwards the kernel refuses the stranger', async () => {
    const ns = node('n2').ns;
    const inbox = withNetns(ns, () => new LinkInbox(log));
    try {
      // Until the hello the inbox takes anyone's datagrams: the stranger fills it.
      const before = flood(ns, inbox.address);
      expect(before.sent).toBeGreaterThan(0);
      expect(before.refusal).toBe('EAGAIN');

      const link = await openAgentLink({ socketPath: agentSocket(running.lab, 'n2'), name: 'flooded-target', logger: log }, Accepts.target, { role: 'target', ports: [7000], instance: 'flooded' }, inbox);
      try {
        expect(link.node).toBe('n2');
        // Connected to n2's batond now: nothing from anyone else gets in.
        expect(flood(ns, inbox.address)).toEqual({ sent: 0, refusal: 'EPERM' });
      } finally {
        link.channel.close();
      }
    } finally {
      inbox.close();
    }
  });
});
