// native/ktls on a kernel with kernel TLS (run in a VM: test/ktls/vitest.config.ts): matching keys
// installed on the two ends of a loopback connection, for TLS 1.2 and 1.3 with each cipher;
// plaintext through Node both ways, an alert record read with its type and alone, and the
// record sequence numbers read back (advanced by one record each, carried into the upper half).
import crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { TlsCipher, TlsVersion } from '../../controller/transfer/tls-keys.js';
import { installKtls, ktlsState, sendRecord, type KtlsDirection } from '../../native/ktls.js';
import { record, usePausedPairs } from '../helpers/paused-pairs.js';

const pair = usePausedPairs();
const SIZES: Record<TlsCipher, { key: number; salt: number; iv: number }> = {
  'aes-128-gcm': { key: 16, salt: 4, iv: 8 },
  'aes-256-gcm': { key: 32, salt: 4, iv: 8 },
  'chacha20-poly1305': { key: 32, salt: 0, iv: 12 },
};
const COMBOS = (['1.2', '1.3'] as TlsVersion[]).flatMap((version) => (Object.keys(SIZES) as TlsCipher[]).map((cipher) => [version, cipher] as const));

function direction(cipher: TlsCipher, recSeq: bigint): KtlsDirection {
  const l = SIZES[cipher];
  return { key: crypto.randomBytes(l.key), salt: crypto.randomBytes(l.salt), iv: crypto.randomBytes(l.iv), recSeq };
}

describe('kernel TLS between the two ends of a loopback connection (the tls ULP is registered)', () => {
  it.each(COMBOS)('TLS %s %s: plaintext both ways, an alert with its type, the record sequence numbers read back', async (version, cipher) => {
    const p = await pair();
    const c2s = direction(cipher, 41n);
    const s2c = direction(cipher, 0x0000_0001_ffff_ffffn); // carries into the upper 32 bits on the next record
    const copy = (d: KtlsDirection): KtlsDirection => ({ key: Buffer.from(d.key), salt: Buffer.from(d.salt), iv: Buffer.from(d.iv), recSeq: d.recSeq });
    installKtls(p.clientFd, { version, cipher, tx: copy(c2s), rx: copy(s2c) });
    installKtls(p.serverFd, { version, cipher, tx: copy(s2c), rx: copy(c2s) });

    const before = ktlsState(p.clientFd);
    expect(before).toMatchObject({ version, cipher, tx: { key: c2s.key, salt: c2s.salt, recSeq: 41n }, rx: { key: s2c.key, salt: s2c.salt, recSeq: s2c.recSeq } });

    // A plain write through Node: the kernel makes it one record.
    p.client.write('hello over kernel TLS');
    expect(await record(p.serverFd)).toEqual({ type: 23, data: Buffer.from('hello over kernel TLS') });
    expect(ktlsState(p.clientFd).tx.recSeq).toBe(42n);
    expect(ktlsState(p.serverFd).rx.recSeq).toBe(42n);

    p.server.write('and back');
    expect(await record(p.clientFd)).toEqual({ type: 23, data: Buffer.from('and back') });
    const server = ktlsState(p.serverFd);
    expect(server.tx.recSeq).toBe(0x0000_0002_0000_0000n);
    expect(server.tx.key).toEqual(s2c.key);
    // TLS 1.3 (and ChaCha20-Poly1305 in 1.2) derive each nonce from the record number: the iv
    // never changes. TLS 1.2 AES-GCM's explicit nonce advances with each record.
    if (version === '1.3' || cipher === 'chacha20-poly1305') expect(server.tx.iv).toEqual(s2c.iv);

    // close_notify: an alert record, read with its type and alone.
    expect(sendRecord(p.clientFd, 21, Buffer.from([1, 0]))).toBe(2);
    expect(await record(p.serverFd)).toEqual({ type: 21, data: Buffer.from([1, 0]) });
    expect(ktlsState(p.serverFd).rx.recSeq).toBe(43n);
  });
});
