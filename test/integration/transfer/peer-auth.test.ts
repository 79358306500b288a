// Node↔node links are mutual TLS with the cluster CA (security, issue 6). A transfer message that
// is not authentic never creates a socket or a route: a plaintext (forged) link, a certificate from
// another CA, a genuine certificate used from another node's address, a hello naming another node,
// a replayed session and a tampered record are each refused at n2, counted, and logged — and the
// cluster still hands off afterwards.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { certsDir } from '../../../controller/lab/cluster.js';
import { metricsOf, sampleOf } from '../../helpers/api.js';
import { inClient, lineClient, readLog } from '../../../controller/lab/demo.js';
import { makeCertificates } from '../../helpers/certs.js';
import { useLab } from '../../helpers/lab.js';

const running = useLab();
const node = (name: string) => running.lab.nodes.find((n) => n.name === name)!;

// One Python program, the attacker's side: speaks TLS through memory BIOs so it can record,
// replay and tamper with the raw records. Prints what the server did.
const ATTACKER = String.raw`
import json, socket, ssl, struct, sys
mode, ca, cert, key, host, port, source, claim = sys.argv[1:9]

def frame(h):
    j = json.dumps(h).encode()
    return struct.pack(">II", 4 + len(j), len(j)) + j

HELLO = frame({"v": 1, "type": "hello", "role": "peer", "name": claim})
OFFER = frame({"v": 1, "type": "route", "connId": "forged", "op": "freeze",
               "flow": {"family": 4, "clientAddress": "10.203.0.99", "clientPort": 4444, "vipAddress": "10.203.0.10", "vipPort": 7000}})

def connect():
    return socket.create_connection((host, int(port)), source_address=(source, 0), timeout=3)

def outcome(sock):
    try:
        data = sock.recv(65536)
        while data:
            data = sock.recv(65536)
        return "closed"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except socket.timeout:
        return "open"

def tls_session(sock, record=None, tamper=False):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    if cert != "-":
        ctx.load_cert_chain(cert, key)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out)
    def send():
        data = out.read()
        if data:
            if record is not None:
                record.append(data)
            sock.sendall(data)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            send()
            data = sock.recv(65536)
            if not data:
                return "closed during handshake"
            inc.write(data)
    send()
    tls.write(HELLO + OFFER)
    data = out.read()
    if tamper:
        data = data[:-3] + bytes([data[-3] ^ 0x40]) + data[-2:]
    if record is not None:
        record.append(data)
    sock.sendall(data)
    return outcome(sock)

if mode == "plain":
    s = connect(); s.sendall(HELLO + OFFER); print(outcome(s))
elif mode == "tls":
    print(tls_session(connect()))
elif mode == "tamper":
    print(tls_session(connect(), tamper=True))
elif mode == "replay":
    recorded = []
    first = tls_session(connect(), record=recorded)
    s = connect()
    try:
        for chunk in recorded:
            s.sendall(chunk)
        print(first, outcome(s))
    except (ConnectionResetError, BrokenPipeError):
        print(first, "reset")
`;

function attack(mode: string, opts: { from: string; cert?: { ca: string; cert: string; key: string }; claim?: string }): string {
  const certs = certsDir(running.lab);
  const c = opts.cert ?? { ca: path.join(certs, 'ca.crt'), cert: '-', key: '-' };
  const script = path.join(running.lab.runDir, 'attacker.py');
  fs.writeFileSync(script, ATTACKER);
  return execFileSync('ip', ['netns', 'exec', node(opts.from).ns, 'python3', script, mode, c.ca, c.cert, c.key, node('n2').address, '4700', node(opts.from).address, opts.claim ?? opts.from], { encoding: 'utf8', timeout: 20_000 }).trim();
}

const labCert = (name: string) => {
  const dir = certsDir(running.lab);
  return { ca: path.join(dir, 'ca.crt'), cert: path.join(dir, `${name}.crt`), key: path.join(dir, `${name}.key`) };
};

const refusals = () => readLog(running.lab, 'n2-batond').filter((l) => l.msg === 'peer connection refused').map((l) => String(l.reason));

const refusedTotal = (metrics: string, reason: string) => sampleOf(metrics, 'baton_peer_refused_total', { reason, node: 'n2' });

async function n2Metrics(): Promise<string> {
  return metricsOf(running.lab, 'n2');
}

describe('authenticated peer links', () => {
  it('refuses forged, foreign, misplaced, replayed and tampered links; nothing reaches the routing table', async () => {
    const frozenBefore = running.routes.size();

    expect(attack('plain', { from: 'n1' })).not.toBe('open');
    const otherCa = makeCertificates([{ name: 'n1', address: node('n1').address }]);
    try {
      expect(attack('tls', { from: 'n1', cert: { ca: labCert('n1').ca, cert: otherCa.certFile('n1'), key: otherCa.keyFile('n1') } })).not.toBe('open');
    } finally {
      otherCa.dispose();
    }
    // n3's genuine certificate, but the connection comes from n1's address.
    expect(attack('tls', { from: 'n1', cert: labCert('n3'), claim: 'n3' })).not.toBe('open');
    // n1's genuine certificate and address, but the hello claims to be n3.
    expect(attack('tls', { from: 'n1', cert: labCert('n1'), claim: 'n3' })).not.toBe('open');
    // A recorded genuine session, replayed byte for byte on a new connection.
    const [, replayed] = attack('replay', { from: 'n1', cert: labCert('n1') }).split(' ');
    expect(replayed).not.toBe('open');
    // One bit flipped in the record that carries the frames.
    expect(attack('tamper', { from: 'n1', cert: labCert('n1') })).not.toBe('open');
    await sleep(300);

    const reasons = refusals();
    expect(reasons.some((r) => /wrong version number|http request|unexpected|record/i.test(r)), 'plaintext refused in the handshake').toBe(true);
    expect(reasons.some((r) => /certificate/i.test(r) && !/names/.test(r)), 'foreign CA refused').toBe(true);
    expect(reasons.some((r) => r.includes(`certificate names n3 but the connection comes from ${node('n1').address}`))).toBe(true);
    const n2log = readLog(running.lab, 'n2-batond');
    expect(n2log.some((l) => l.msg === 'peer hello refused' && l.claimed === 'n3')).toBe(true);
    expect(n2log.some((l) => l.msg === 'channel closed on error' && /decrypt|bad record mac|bad_record_mac/i.test(String(l.err))), 'tampered record').toBe(true);
    // The only authentic link (n1's certificate, genuine hello) carried a forged freeze: no
    // message from any of these links was acted on.
    expect(n2log.some((l) => l.connId === 'forged' && l.msg !== 'message rejected' && l.msg !== 'route request refused')).toBe(false);
    expect(running.routes.size()).toBe(frozenBefore);

    const metrics = await n2Metrics();
    expect(refusedTotal(metrics, 'handshake') + refusedTotal(metrics, 'untrusted-certificate')).toBeGreaterThanOrEqual(3);
    expect(refusedTotal(metrics, 'wrong-address')).toBe(1);

    // The cluster still hands off over its genuine links.
    const r = await inClient(running.lab, lineClient(running.lab, ['--user', 'alice', '--expect-node', 'n2', '--get', '1000', '--move', 'n3']), 30_000);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, moves: ['OK n3'] });
  });
});
