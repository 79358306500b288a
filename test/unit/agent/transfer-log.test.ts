import { describe, expect, it } from 'vitest';
import { TransferLog } from '../../../controller/agent/transfer-log.js';
import type { HandoffRecord } from '../../../controller/transfer/handoff.js';

const record = (n: number): HandoffRecord => ({
  connId: `c${n}`,
  flow: { family: 4, clientAddress: '10.0.0.1', clientPort: 1000 + n, vipAddress: '10.0.0.100', vipPort: 80 },
  from: 'router',
  target: 'n2',
  client: `10.0.0.1:${1000 + n}`,
  outcome: 'done',
});

describe('TransferLog', () => {
  it('returns the newest first, limited', () => {
    const log = new TransferLog(10);
    for (let i = 0; i < 4; i++) log.add(record(i));
    expect(log.recent().map((r) => r.connId)).toEqual(['c3', 'c2', 'c1', 'c0']);
    expect(log.recent(2).map((r) => r.connId)).toEqual(['c3', 'c2']);
    expect(log.recent(1)[0]!.at).toMatch(/^\d{4}-\d\d-\d\dT/);
  });

  it('keeps only the last `capacity` records once it wraps', () => {
    const log = new TransferLog(3);
    for (let i = 0; i < 8; i++) log.add(record(i));
    expect(log.recent().map((r) => r.connId)).toEqual(['c7', 'c6', 'c5']);
  });
});
