// The routing SDK refuses, before it hands anything to batond, the application state batond would
// refuse at its decoder (issue 11, item 7): nested deeper than MAX_JSON_DEPTH, or over 32 KiB once
// serialised (bytes, not UTF-16 units). The handoff fails at 'prepare' and the socket carries on
// with the application; batond hears nothing. Loopback only.
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { MAX_JSON_DEPTH } from '../../../controller/input.js';
import { createLogger } from '../../../controller/log.js';
import { RouterClient } from '../../../controller/sdk/router.js';
import { Accepts } from '../../../controller/transfer/messages.js';
import { scriptedAgent } from '../../helpers/scripted-agent.js';

const log = createLogger({}, 'silent');
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function connection(): Promise<{ app: net.Socket; client: net.Socket }> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const app = await accepted;
  cleanups.push(() => client.destroy(), () => app.destroy(), () => server.close());
  return { app, client };
}

describe('RouterClient.handoff: application state batond would refuse', () => {
  it('too deep, or over 32 KiB in UTF-8: E_HANDOFF_STATE at prepare, nothing sent, the socket still the application\'s', async () => {
    const seen: string[] = [];
    const agent = await scriptedAgent(Accepts.agentFromRouter, { node: 'n1', handoffStepTimeoutMs: 100 }, ({ msg }) => void seen.push(msg.type));
    cleanups.push(() => agent.close());
    const router = await RouterClient.connect({ socketPath: agent.socketPath, name: 'limits-test', logger: log });
    cleanups.push(() => router.close());
    const { app, client } = await connection();
    app.on('data', (b) => app.write(`echo ${b.toString()}`));

    let deep: unknown = 'leaf';
    for (let i = 0; i < MAX_JSON_DEPTH + 1; i++) deep = [deep];
    await expect(router.handoff(app, { node: 'n2', port: 7000 }, { appState: deep })).rejects.toMatchObject({ code: 'E_HANDOFF_STATE', context: { step: 'prepare' } });
    // 17,000 characters, 34,000 bytes: over the limit although .length is not.
    await expect(router.handoff(app, { node: 'n2', port: 7000 }, { appState: 'é'.repeat(17_000) })).rejects.toMatchObject({
      code: 'E_HANDOFF_STATE',
      message: expect.stringMatching(/34002 bytes exceeds 32 KiB/),
    });
    await new Promise((r) => setTimeout(r, 50));
    expect(seen).toEqual([]);
    const reply = new Promise<string>((resolve) => client.once('data', (b) => resolve(b.toString())));
    client.write('ping');
    expect(await reply).toBe('echo ping');
  });
});
