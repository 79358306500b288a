// The close watcher in isolation: a scripted kernel state per flow stands in for sock_diag (the
// lab tests use the real one). Asked soon, then less often; done on GONE, CLOSE or TIME_WAIT
// only; a new connection on the tuple cancels the watch; a close that never ends is given up.
import { afterEach, describe, expect, it } from 'vitest';
import { CloseWatcher, type KernelTcpState } from '../../../controller/agent/close-watcher.js';
import type { FlowKey } from '../../../controller/flow.js';
import { createLogger } from '../../../controller/log.js';

const log = createLogger({}, 'silent');
const flow = (port: number): FlowKey => ({ family: 4, clientAddress: '10.0.0.100', clientPort: port, vipAddress: '10.0.0.10', vipPort: 7000 });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const watchers: CloseWatcher[] = [];
afterEach(() => watchers.splice(0).forEach((w) => w.close()));

function setup(opts: { giveUpAfterMs?: number } = {}) {
  const kernel = new Map<number, KernelTcpState>();
  const asked: number[] = [];
  const done: Array<{ port: number; connId: string; state: KernelTcpState; finished: boolean }> = [];
  const closing: Array<[number, KernelTcpState]> = [];
  const w = new CloseWatcher(
    (f) => {
      asked.push(f.clientPort);
      const s = kernel.get(f.clientPort);
      if (s === 'UNKNOWN') throw new Error('netlink said no');
      return s ?? 'GONE';
    },
    (f, connId, how) => done.push({ port: f.clientPort, connId, state: how.state, finished: how.finished }),
    log,
    { firstCheckMs: 20, maxIntervalMs: 80, giveUpAfterMs: opts.giveUpAfterMs ?? 10_000, onStillClosing: (f, _connId, state) => closing.push([f.clientPort, state]) },
  );
  watchers.push(w);
  return { w, kernel, asked, done, closing };
}

describe('close watcher', () => {
  it('reports a flow once its kernel socket is gone, in TIME_WAIT or CLOSE, and not before', async () => {
    const { w, kernel, done } = setup();
    for (const [port, state] of [[1, 'FIN_WAIT2'], [2, 'LAST_ACK'], [3, 'CLOSING'], [4, 'FIN_WAIT1']] as const) {
      kernel.set(port, state);
      w.watch(flow(port), `c${port}`);
    }
    await sleep(200);
    expect(done).toEqual([]);
    expect(w.size()).toBe(4);
    kernel.set(1, 'TIME_WAIT');
    kernel.delete(2);
    kernel.set(3, 'CLOSE');
    await sleep(200);
    expect(done.map((d) => [d.port, d.state, d.finished]).sort()).toEqual([[1, 'TIME_WAIT', true], [2, 'GONE', true], [3, 'CLOSE', true]]);
    expect(w.size()).toBe(1);
  });

  it('a close TCP is done with by the first look reports only its end; one still in progress is reported closing once, at the first look, then its end', async () => {
    const { w, kernel, done, closing } = setup();
    kernel.set(2, 'LAST_ACK');
    w.watch(flow(1), 'quick');
    w.watch(flow(2), 'slow');
    await sleep(150);
    expect(done.map((d) => [d.port, d.state])).toEqual([[1, 'GONE']]);
    expect(closing).toEqual([[2, 'LAST_ACK']]);
    kernel.set(2, 'TIME_WAIT');
    await sleep(200);
    expect(done.map((d) => [d.port, d.state])).toEqual([[1, 'GONE'], [2, 'TIME_WAIT']]);
    expect(closing).toEqual([[2, 'LAST_ACK']]);
  });

  it('asks less and less often (doubling up to the cap), not on every tick', async () => {
    const { w, kernel, asked } = setup();
    kernel.set(1, 'FIN_WAIT2');
    w.watch(flow(1), 'c1');
    await sleep(500);
    // 20, 40, 80, 80, ... ms apart: about 7 asks in 500 ms, where a 10 ms tick would ask ~50 times.
    expect(asked.length).toBeGreaterThanOrEqual(4);
    expect(asked.length).toBeLessThanOrEqual(9);
  });

  it('forget: a new connection on the tuple is not reported as the old one finishing', async () => {
    const { w, kernel, done } = setup();
    kernel.set(1, 'FIN_WAIT2');
    w.watch(flow(1), 'old');
    w.forget(flow(1));
    kernel.delete(1);
    await sleep(150);
    expect(done).toEqual([]);
  });

  it('gives up after the bound; a lookup that fails lets the flow go at once (the grace starts, as before the kernel was asked)', async () => {
    const { w, kernel, done } = setup({ giveUpAfterMs: 150 });
    kernel.set(1, 'UNKNOWN');
    kernel.set(2, 'FIN_WAIT2');
    w.watch(flow(1), 'c1');
    w.watch(flow(2), 'c2');
    await sleep(100);
    expect(done.map((d) => [d.port, d.state, d.finished])).toEqual([[1, 'UNKNOWN', true]]);
    await sleep(250);
    expect(done.map((d) => [d.port, d.state, d.finished])).toEqual([[1, 'UNKNOWN', true], [2, 'FIN_WAIT2', false]]);
  });
});
