// The kernel's state of one TCP connection (native/diag.c, sock_diag): one FFI call, one netlink
// round trip. The node serving a transferred connection asks it after the application has closed,
// to tell the distributor when TCP itself is finished with the 4-tuple.
import os from 'node:os';
import { BatonError } from '../controller/errors.js';
import { errnoName } from './errno.js';
import { addressToBytes, connectionId, type FlowKey } from '../controller/flow.js';
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
