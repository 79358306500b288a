// How long RouterClient.handoff() waits for batond's verdict: derived from the step timeout batond
// announces, so that the application never resumes reading a socket batond may still move; and what
// happens when the verdict never comes (a scripted batond that takes the socket into repair mode and
// falls silent): the SDK gives up, leaves repair mode itself (this test runs privileged) and the
// connection carries on with the application. Loopback only.
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../../controller/log.js';
import { RouterClient, verdictTimeoutMs } from '../../../controller/sdk/router.js';
import { Accepts } from '../../../controller/transfer/messages.js';
import { nativeSockets } from '../../../controller/transfer/sockets.js';
import { scriptedAgent } from '../../helpers/scripted-agent.js';

const log = createLogger({}, 'silent');
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

describe('verdictTimeoutMs', () => {
  it('outlasts batond: five step timeouts and a second; 10 s from a batond that does not say', () => {
    expect(verdictTimeoutMs(2000)).toBe(11_000);
    expect(verdictTimeoutMs(100)).toBe(1500);
    expect(verdictTimeoutMs(undefined)).toBe(10_000);
  });
});

describe('a batond that never answers the handoff', () => {
  it('times out after the derived bound, leaves repair mode and gives the application its socket back, reading', async () => {
    let repaired = 0;
    const agent = await scriptedAgent(Accepts.agentFromRouter, { node: 'n1', handoffStepTimeoutMs: 100 }, ({ msg }, _ch, descriptors) => {
      if (msg.type !== 'handoff') return;
      const fd = descriptors.take(msg.connId)!;
      // What batond does first, then silence; its duplicate closed as a dying batond's would be.
      nativeSockets.snapshot(fd);
      repaired++;
      nativeSockets.release(fd);
    });
    cleanups.push(() => agent.close());
    const { socketPath } = agent;

    const router = await RouterClient.connect({ socketPath, name: 'verdict-test', logger: log });
    cleanups.push(() => router.close());

    // The application's connection: it echoes what it reads.
    const accepted = new Promise<net.Socket>((resolve) => {
      const server = net.createServer((s) => resolve(s));
      server.listen(0, '127.0.0.1', () => {
        const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
        cleanups.push(() => client.destroy(), () => server.close());
        clientSide = client;
      });
    });
    let clientSide: net.Socket | undefined;
    const appSocket = await accepted;
    appSocket.on('data', (b) => appSocket.write(`echo ${b.toString()}`));
    cleanups.push(() => appSocket.destroy());

    const t0 = performance.now();
    await expect(router.handoff(appSocket, { node: 'n2', port: 7000 })).rejects.toMatchObject({ code: 'E_TIMEOUT' });
    const waited = performance.now() - t0;
    expect(repaired).toBe(1);
    // Not before the derived bound (1.5 s for a 100 ms step), and well short of the old fixed
    // 10 s: what is checked is which bound applied, not how fast anything ran.
    expect(waited).toBeGreaterThanOrEqual(1400);
    expect(waited).toBeLessThan(9000);
    // Out of repair mode and reading again: the client's bytes reach the application and back.
    const reply = new Promise<string>((resolve) => clientSide!.once('data', (b) => resolve(b.toString())));
    clientSide!.write('ping');
    expect(await reply).toBe('echo ping');
    expect(appSocket.destroyed).toBe(false);
  });
});
