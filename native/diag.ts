// The kernel's state of one TCP connection (native/diag.c, sock_diag): one FFI call, one netlink
// round trip. The node serving a transferred connection asks it after the application has closed,
// to tell the distributor when TCP itself is finished with the 4-tuple. servedFlows lists every
// connection on one local address (a DVIPA) the same way, with one netlink dump.
import os from 'node:os';
import koffi from 'koffi';
import { BatonError } from '../controller/errors.js';
import { errnoName } from './errno.js';
import { addressToBytes, bytesToAddress, canonicalAddress, connectionId, type Family, type FlowKey } from '../controller/flow.js';
import { libbaton } from './repair.js';

/** The kernel's TCP states (include/net/tcp_states.h), as sock_diag reports them. */
export const TCP_STATES = {
  1: 'ESTABLISHED',
  2: 'SYN_SENT',
  3: 'SYN_RECV',
  4: 'FIN_WAIT1',
  5: 'FIN_WAIT2',
  6: 'TIME_WAIT',
  7: 'CLOSE',
  8: 'CLOSE_WAIT',
  9: 'LAST_ACK',
  10: 'LISTEN',
  11: 'CLOSING',
  12: 'NEW_SYN_RECV',
} as const;
export type TcpStateName = (typeof TCP_STATES)[keyof typeof TCP_STATES];

let tcpStateFn: ((family: number, local: Uint8Array, lport: number, remote: Uint8Array, rport: number) => number) | undefined;

/**
 * The state of the socket holding the flow (local: the DVIPA, remote: the client) in this
 * process's network namespace, or 'GONE' when no socket does (not even in TIME_WAIT). Throws
 * E_NATIVE for anything else.
 */
export function tcpState(flow: FlowKey): TcpStateName | 'GONE' {
  tcpStateFn ??= libbaton().func('baton_tcp_state', 'int', ['uint8_t', 'const uint8_t *', 'uint16_t', 'const uint8_t *', 'uint16_t']);
  const { family } = flow;
  const ret = tcpStateFn(family, addressToBytes(family, flow.vipAddress, 'vipAddress'), flow.vipPort, addressToBytes(family, flow.clientAddress, 'clientAddress'), flow.clientPort);
  if (ret === -os.constants.errno.ENOENT) return 'GONE';
  if (ret < 0) {
    throw new BatonError('E_NATIVE', `sock_diag lookup failed: ${errnoName(-ret)}`, { step: 'sock_diag', errno: -ret, flow: connectionId(flow) });
  }
  const name = TCP_STATES[ret as keyof typeof TCP_STATES];
  if (!name) throw new BatonError('E_NATIVE', `sock_diag reported unknown TCP state ${ret}`, { step: 'sock_diag', flow: connectionId(flow) });
  return name;
}

/** A connection on a local address, as servedFlows finds it: the DVIPA is the flow's vipAddress. */
export interface ServedFlow {
  flow: FlowKey;
  state: TcpStateName;
}

// struct baton_served (native/diag.h), read at koffi-computed offsets as repair.ts reads its state
// struct; anonymous, since koffi's type names are process-wide.
const SERVED = koffi.struct({ remote_addr: koffi.array('uint8_t', 16), local_port: 'uint16_t', remote_port: 'uint16_t', state: 'uint8_t', pad: koffi.array('uint8_t', 3) });
const SERVED_SIZE = koffi.sizeof(SERVED);
const SERVED_AT = { remoteAddr: koffi.offsetof(SERVED, 'remote_addr'), localPort: koffi.offsetof(SERVED, 'local_port'), remotePort: koffi.offsetof(SERVED, 'remote_port'), state: koffi.offsetof(SERVED, 'state') };

let tcpDumpFn: ((family: number, local: Uint8Array, out: Buffer, max: number) => number) | undefined;

/** Records of the first dump: enough for most nodes, 96 KiB. */
const INITIAL_RECORDS = 4096;

/**
 * Every TCP connection in this thread's network namespace whose local address is localAddress,
 * in any state but LISTEN (request sockets report SYN_RECV; TIME_WAIT included); for family 4,
 * also IPv4 connections accepted by dual-stack (AF_INET6) listeners. vipAddress is localAddress
 * in its canonical form. Not a snapshot: a connection opened or closed meanwhile may be missed,
 * or in rare cases listed twice. Throws E_NATIVE if more than limit connections match, or if the
 * kernel's answer fails; E_CONFIG if localAddress is not an address of the family.
 * initialRecords: the first buffer's size in records (tests make it small to force the retry).
 */
export function servedFlows(family: Family, localAddress: string, limit = 1_000_000, initialRecords = INITIAL_RECORDS): ServedFlow[] {
  tcpDumpFn ??= libbaton().func('baton_tcp_dump', 'int', ['uint8_t', 'const uint8_t *', 'uint8_t *', 'uint32_t']);
  const vipAddress = canonicalAddress(family, localAddress, 'localAddress');
  const local = addressToBytes(family, vipAddress, 'localAddress');
  const context = { step: 'sock_diag', family, localAddress: vipAddress, limit };
  const dump = (records: number): { out: Buffer; total: number } => {
    const out = Buffer.alloc(records * SERVED_SIZE);
    const total = tcpDumpFn!(family, local, out, records);
    if (total < 0) throw new BatonError('E_NATIVE', `sock_diag dump of ${vipAddress} failed: ${errnoName(-total)}`, { ...context, errno: -total });
    if (total > limit) throw new BatonError('E_NATIVE', `sock_diag dump of ${vipAddress}: ${total} connections, more than the limit of ${limit}`, { ...context, total });
    return { out, total };
  };

  const capacity = Math.min(initialRecords, limit);
  let { out, total } = dump(capacity);
  if (total > capacity) {
    // Once: between the two dumps the count grows only by the connections opened meanwhile,
    // which the headroom covers.
    const first = total;
    const records = Math.min(limit, first + Math.max(1024, first >> 3));
    ({ out, total } = dump(records));
    if (total > records) {
      throw new BatonError('E_NATIVE', `sock_diag dump of ${vipAddress}: ${total} connections, more than the ${records} records allotted after a first dump counted ${first}`, { ...context, total, first });
    }
  }

  // Ports in host order: little-endian on every platform Baton runs on, as repair.ts assumes.
  const flows: ServedFlow[] = [];
  for (let at = 0; at < total * SERVED_SIZE; at += SERVED_SIZE) {
    const code = out.readUInt8(at + SERVED_AT.state);
    const state = TCP_STATES[code as keyof typeof TCP_STATES];
    const flow: FlowKey = {
      family,
      clientAddress: bytesToAddress(family, out.subarray(at + SERVED_AT.remoteAddr, at + SERVED_AT.remoteAddr + 16)),
      clientPort: out.readUInt16LE(at + SERVED_AT.remotePort),
      vipAddress,
      vipPort: out.readUInt16LE(at + SERVED_AT.localPort),
    };
    if (!state) throw new BatonError('E_NATIVE', `sock_diag reported unknown TCP state ${code}`, { step: 'sock_diag', flow: connectionId(flow) });
    flows.push({ flow, state });
  }
  return flows;
}
