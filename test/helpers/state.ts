// A plausible exported connection for tests that need one; override what the test is about.
import type { TcpConnectionState } from '../../native/repair.js';

export function sampleState(over: Partial<TcpConnectionState> = {}): TcpConnectionState {
  return {
    family: 4,
    local: { address: '10.203.0.10', port: 7000 },
    remote: { address: '10.203.0.100', port: 40000 },
    sendSeq: 0xfffffff0,
    recvSeq: 12345,
    sendQueue: Buffer.from('already sent|not yet sent'),
    unsentLength: 12,
    recvQueue: Buffer.from('GET 10\n'),
    mss: 1448,
    options: { timestamps: true, sack: true, windowScale: true },
    sndWscale: 7,
    rcvWscale: 7,
    timestamp: 987654,
    window: { sndWl1: 1, sndWnd: 65535, maxWindow: 65535, rcvWnd: 65535, rcvWup: 12345 },
    ...over,
  };
}
