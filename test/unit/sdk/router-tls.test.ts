// A TLS connection handed to handoff() that cannot go: refused at once with the reason (not
// accepted with acceptTls(); no kernel TLS here), before anything changes: batond is never asked,
// and the application's TLS session carries on.
// Whether the kernel has kernel TLS is read from /proc and the module lists (native/kernel-tls.ts),
// shown here on fake roots for both answers. Loopback only.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../../controller/log.js';
import { RouterClient } from '../../../controller/sdk/router.js';
import { acceptTls } from '../../../controller/sdk/tls-session.js';
import { Accepts } from '../../../controller/transfer/messages.js';
import { kernelTls } from '../../../native/kernel-tls.js';
import { scriptedAgent } from '../../helpers/scripted-agent.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-router-tls-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('kernel TLS, as a node has it or not', () => {
  const root = (files: Record<string, string>) => {
    const dir = fs.mkdtempSync(path.join(tmp, 'root-'));
    for (const [file, text] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
      fs.writeFileSync(path.join(dir, file), text);
    }
    return `${dir}/`;
  };
  const modules = `lib/modules/${os.release()}`;

  it('is there when the tls ULP is registered or its module is installed, absent otherwise', () => {
    expect(kernelTls(root({ 'proc/sys/net/ipv4/tcp_available_ulp': 'espintcp mptcp tls\n' }))).toMatchObject({ available: true });
    expect(kernelTls(root({ 'proc/sys/net/ipv4/tcp_available_ulp': 'mptcp\n', [`${modules}/modules.dep`]: 'kernel/net/tls/tls.ko: \nkernel/net/ipv4/udp_tunnel.ko:\n' }))).toMatchObject({ available: true });
    expect(kernelTls(root({ [`${modules}/modules.builtin`]: 'kernel/net/tls/tls.ko\n' }))).toMatchObject({ available: true });
    // Compressed, with its dependencies listed after it.
    expect(kernelTls(root({ [`${modules}/modules.dep`]: 'kernel/net/tls/tls.ko.xz: kernel/net/core/x.ko.xz\n' }))).toMatchObject({ available: true });
    const none = kernelTls(root({ 'proc/sys/net/ipv4/tcp_available_ulp': 'mptcp\n', [`${modules}/modules.dep`]: 'kernel/net/tlsx/other.ko:\nkernel/net/tls/tls.kox:\n' }));
    expect(none).toEqual({ available: false, how: `kernel ${os.release()} has no kernel TLS (CONFIG_TLS): no tls ULP registered, no tls module` });
  });
});

describe('handoff() of a TLS connection refused before anything changes', () => {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', '/CN=router', '-days', '1',
    '-keyout', path.join(tmp, 'k.pem'), '-out', path.join(tmp, 'c.pem')], { stdio: 'ignore' });
  const material = { key: fs.readFileSync(path.join(tmp, 'k.pem')), cert: fs.readFileSync(path.join(tmp, 'c.pem')) };

  /** A routing application serving TLS, its client, and a handoff() that must be refused: batond is never asked, the session goes on. */
  async function refused(accept: (port: (p: number) => void) => Promise<tls.TLSSocket>, why: string): Promise<void> {
    let asked = 0;
    const agent = await scriptedAgent(Accepts.agentFromRouter, { node: 'n1', handoffStepTimeoutMs: 100 }, () => asked++);
    const router = await RouterClient.connect({ socketPath: agent.socketPath, name: 'tls-test', logger: createLogger({}, 'silent') });
    let client: tls.TLSSocket | undefined;
    const accepted = accept((port) => (client = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false })));
    try {
      const socket = await accepted;
      socket.on('data', (b) => socket.write(`echo ${b.toString()}`));
      const err = await router.handoff(socket, { node: 'n2', port: 443 }).then(() => undefined, (e: unknown) => e);
      expect(err).toMatchObject({ code: 'E_HANDOFF_STATE', context: { step: 'prepare' } });
      expect((err as Error).message).toContain('a TLS connection cannot be handed off');
      expect((err as Error).message).toContain(why);
      expect(asked).toBe(0);
      const reply = new Promise<string>((resolve) => client!.once('data', (b) => resolve(b.toString())));
      client!.write('ping');
      expect(await reply).toBe('echo ping');
    } finally {
      client?.destroy();
      router.close();
      await agent.close();
    }
  }

  it("a TLSSocket from tls.Server: its record sequence numbers are OpenSSL's alone", async () => {
    const server = tls.createServer(material);
    try {
      await refused(async (connect) => {
        const accepted = new Promise<tls.TLSSocket>((resolve) => server.once('secureConnection', resolve));
        await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
        connect((server.address() as { port: number }).port);
        return accepted;
      }, 'it was not accepted with acceptTls()');
    } finally {
      server.close();
    }
  });

  // Defined only where it holds (no skip: .ci/run counts one as a failure); on a kernel with kernel
  // TLS the handoff goes ahead (test/ktls/).
  if (!kernelTls().available) it('accepted with acceptTls() on a kernel without kernel TLS (this one): says what the kernel lacks', async () => {
    const server = net.createServer();
    try {
      await refused(async (connect) => {
        const accepted = new Promise<tls.TLSSocket>((resolve) => server.once('connection', (raw) => {
          const socket = acceptTls(raw, material);
          socket.once('secure', () => resolve(socket));
        }));
        await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
        connect((server.address() as { port: number }).port);
        return accepted;
      }, kernelTls().how);
    } finally {
      server.close();
    }
  });
});
