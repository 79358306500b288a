// native/ktls: the crypto_info structs kernel TLS takes, checked byte for byte against the
// kernel's own header (offsets printed by gcc from /usr/include/linux/tls.h, not copied from the
// code under test), and the calls on real loopback TCP connections.
//
// Which socket tests run depends on the kernel: one without the tls ULP (no CONFIG_TLS, or the
// module not loaded: /proc/sys/net/ipv4/tcp_available_ulp) checks that installKtls refuses at the
// ULP step and says there is no kernel TLS; with it, test/ktls/native.test.ts (in a VM: make
// vagrant-test) installs keys on real sockets. Nothing here loads the module, and nothing is skipped.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BatonError } from '../../../controller/errors.js';
import type { TlsCipher, TlsVersion } from '../../../controller/transfer/tls-keys.js';
import { cryptoInfo, installKtls, ktlsState, parseCryptoInfo, recvRecord, tcpQueues, type KtlsDirection, type KtlsState } from '../../../native/ktls.js';
import { until } from '../../helpers/wait.js';
import { record, usePausedPairs } from '../../helpers/paused-pairs.js';

const VERSIONS: TlsVersion[] = ['1.2', '1.3'];
const CIPHERS: TlsCipher[] = ['aes-128-gcm', 'aes-256-gcm', 'chacha20-poly1305'];
const COMBOS = VERSIONS.flatMap((version) => CIPHERS.map((cipher) => [version, cipher] as const));

// ---- the layout, as the kernel header defines it ----------------------------------------------

interface Layout {
  id: number;
  size: number;
  iv: [offset: number, size: number];
  key: [offset: number, size: number];
  salt: [offset: number, size: number];
  recSeq: [offset: number, size: number];
}

const HEADER = '/usr/include/linux/tls.h';
const STRUCTS: Record<TlsCipher, [struct: string, id: string]> = {
  'aes-128-gcm': ['tls12_crypto_info_aes_gcm_128', 'TLS_CIPHER_AES_GCM_128'],
  'aes-256-gcm': ['tls12_crypto_info_aes_gcm_256', 'TLS_CIPHER_AES_GCM_256'],
  'chacha20-poly1305': ['tls12_crypto_info_chacha20_poly1305', 'TLS_CIPHER_CHACHA20_POLY1305'],
};

/** sizeof, offsetof and the constants, compiled from the kernel's header. */
function layoutFromHeader(): { versions: Record<TlsVersion, number>; ciphers: Record<TlsCipher, Layout> } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-ktls-'));
  try {
    const field = (s: string, f: string) => `(int)offsetof(struct ${s}, ${f}), (int)sizeof(((struct ${s} *)0)->${f})`;
    const lines = Object.entries(STRUCTS).map(
      ([cipher, [s, id]]) =>
        `printf("${cipher} %d %d %d %d %d %d %d %d %d %d\\n", ${id}, (int)sizeof(struct ${s}), ${field(s, 'iv')}, ${field(s, 'key')}, ${field(s, 'salt')}, ${field(s, 'rec_seq')});`,
    );
    fs.writeFileSync(
      path.join(dir, 'layout.c'),
      `#include <stddef.h>\n#include <stdio.h>\n#include <linux/tls.h>\nint main(void) {\n` +
        `printf("versions %d %d\\n", TLS_1_2_VERSION, TLS_1_3_VERSION);\n${lines.join('\n')}\nreturn 0;\n}\n`,
    );
    execFileSync('gcc', ['-o', path.join(dir, 'layout'), path.join(dir, 'layout.c')]);
    const out = execFileSync(path.join(dir, 'layout'), { encoding: 'utf8' });
    const rows = new Map<string, number[]>();
    for (const line of out.trim().split('\n')) {
      const [name, ...values] = line.split(' ');
      rows.set(name!, values.map(Number));
    }
    const [v12, v13] = rows.get('versions')!;
    const ciphers = {} as Record<TlsCipher, Layout>;
    for (const cipher of CIPHERS) {
      const [id, size, ivO, ivS, keyO, keyS, saltO, saltS, seqO, seqS] = rows.get(cipher)!;
      ciphers[cipher] = { id: id!, size: size!, iv: [ivO!, ivS!], key: [keyO!, keyS!], salt: [saltO!, saltS!], recSeq: [seqO!, seqS!] };
    }
    return { versions: { '1.2': v12!, '1.3': v13! }, ciphers };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// chacha20-poly1305 has a zero-length salt; gcc gives sizeof 0 for it and offsetof = rec_seq's.
const kernel = layoutFromHeader();

function direction(cipher: TlsCipher, recSeq = 0x0000_0001_0000_00ffn): KtlsDirection {
  const l = kernel.ciphers[cipher];
  return { key: crypto.randomBytes(l.key[1]), salt: crypto.randomBytes(l.salt[1]), iv: crypto.randomBytes(l.iv[1]), recSeq };
}

/** Whether a message carries any 6-byte run of the secret, in hex or raw. */
function leaks(message: string, ...secrets: Buffer[]): boolean {
  return secrets.some((s) => {
    for (let i = 0; i + 6 <= s.length; i++) {
      const run = s.subarray(i, i + 6);
      if (message.toLowerCase().includes(run.toString('hex')) || message.includes(run.toString('latin1'))) return true;
    }
    return false;
  });
}

describe('the crypto_info struct setsockopt(TLS_TX / TLS_RX) takes', () => {
  it('is 40 bytes for AES-128-GCM and 56 for AES-256-GCM and ChaCha20-Poly1305, as the kernel header says', () => {
    expect(CIPHERS.map((c) => kernel.ciphers[c].size)).toEqual([40, 56, 56]);
    for (const cipher of CIPHERS) expect(cryptoInfo('1.3', cipher, direction(cipher)).length).toBe(kernel.ciphers[cipher].size);
  });

  it.each(COMBOS)('TLS %s %s: version, cipher, iv, key, salt at the header offsets, rec_seq big-endian', (version, cipher) => {
    const l = kernel.ciphers[cipher];
    const dir = direction(cipher, 0x0102_0304_0506_0708n);
    const buf = cryptoInfo(version, cipher, dir);
    expect(buf.readUInt16LE(0)).toBe(kernel.versions[version]);
    expect(buf.readUInt16LE(2)).toBe(l.id);
    const at = ([o, n]: [number, number]) => buf.subarray(o, o + n);
    expect(at(l.iv)).toEqual(dir.iv);
    expect(at(l.key)).toEqual(dir.key);
    expect(at(l.salt)).toEqual(dir.salt);
    expect([...at(l.recSeq)]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it.each(COMBOS)('TLS %s %s: parseCryptoInfo gives back what cryptoInfo took, in buffers of its own', (version, cipher) => {
    const dir = direction(cipher, 0xffff_ffff_ffff_fffen);
    const buf = cryptoInfo(version, cipher, dir);
    const parsed = parseCryptoInfo(buf);
    expect(parsed).toEqual({ version, cipher, dir });
    buf.fill(0);
    expect(parsed.dir.key).toEqual(dir.key);
  });

  it('refuses a key, salt or iv of the wrong length, naming the field and never its bytes', () => {
    const dir = direction('aes-256-gcm');
    const cases: Array<[TlsCipher, KtlsDirection, RegExp]> = [
      ['aes-128-gcm', dir, /aes-128-gcm needs a 16-byte key, got 32 bytes/],
      ['aes-256-gcm', { ...dir, salt: Buffer.alloc(0) }, /aes-256-gcm needs a 4-byte salt, got 0 bytes/],
      ['chacha20-poly1305', { ...dir, iv: Buffer.alloc(12) }, /chacha20-poly1305 needs a 0-byte salt, got 4 bytes/],
      ['chacha20-poly1305', { ...dir, salt: Buffer.alloc(0) }, /chacha20-poly1305 needs a 12-byte iv, got 8 bytes/],
    ];
    for (const [cipher, d, message] of cases) {
      let err: unknown;
      try {
        cryptoInfo('1.3', cipher, d);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(BatonError);
      expect(err).toMatchObject({ code: 'E_HANDOFF_STATE', message });
      expect(leaks((err as Error).message, dir.key, dir.salt, dir.iv)).toBe(false);
      expect(leaks(JSON.stringify((err as BatonError).context), dir.key, dir.salt, dir.iv)).toBe(false);
    }
  });

  it('refuses a record sequence number outside 0 … 2^64 - 1, an unknown version or cipher', () => {
    const dir = direction('aes-128-gcm');
    const refused = (f: () => unknown, message: RegExp) => expect(f).toThrow(expect.objectContaining({ code: 'E_HANDOFF_STATE', message: expect.stringMatching(message) }));
    refused(() => cryptoInfo('1.2', 'aes-128-gcm', { ...dir, recSeq: -1n }), /recSeq must be a bigint/);
    refused(() => cryptoInfo('1.2', 'aes-128-gcm', { ...dir, recSeq: 1n << 64n }), /recSeq must be a bigint/);
    refused(() => cryptoInfo('1.2', 'aes-128-gcm', { ...dir, recSeq: 5 as unknown as bigint }), /recSeq must be a bigint/);
    refused(() => cryptoInfo('1.1' as TlsVersion, 'aes-128-gcm', dir), /TLS 1\.2 or 1\.3, not "1\.1"/);
    refused(() => cryptoInfo('1.3', 'aes-128-ccm' as TlsCipher, dir), /not "aes-128-ccm"/);
    refused(() => cryptoInfo('1.3', 'toString' as TlsCipher, dir), /not "toString"/);
  });

  it('parseCryptoInfo refuses an unknown version or cipher, and a length other than the cipher\'s struct', () => {
    const good = cryptoInfo('1.2', 'aes-128-gcm', direction('aes-128-gcm'));
    const refused = (buf: Buffer, message: RegExp) => expect(() => parseCryptoInfo(buf)).toThrow(expect.objectContaining({ code: 'E_HANDOFF_STATE', message: expect.stringMatching(message) }));
    const withHeader = (version: number, cipher: number) => {
      const b = Buffer.from(good);
      b.writeUInt16LE(version, 0);
      b.writeUInt16LE(cipher, 2);
      return b;
    };
    refused(withHeader(0x0302, 51), /version 0x0302 is neither/); // TLS 1.1
    refused(withHeader(0x0303, 53), /cipher type 53 is not one Baton moves/); // AES-CCM-128: same size, not supported
    refused(good.subarray(0, 39), /aes-128-gcm crypto_info is 40 bytes, got 39/);
    refused(Buffer.concat([good, Buffer.alloc(16)]), /is 40 bytes, got 56/);
    refused(good.subarray(0, 2), /shorter than its 4-byte header/);
  });
});

// ---- real sockets -----------------------------------------------------------------------------

const tlsUlp = (() => {
  try {
    return fs.readFileSync('/proc/sys/net/ipv4/tcp_available_ulp', 'utf8').split(/\s+/).includes('tls');
  } catch {
    return false;
  }
})();

const pair = usePausedPairs();

describe('tcpQueues: what a kernel TLS socket must have empty before it moves', () => {
  it('counts bytes received and not read, and bytes sent and not yet acknowledged (none once acked)', async () => {
    const p = await pair();
    expect(tcpQueues(p.serverFd)).toEqual({ inq: 0, outq: 0 });
    p.client.write('twelve bytes');
    await until('the bytes to arrive', () => tcpQueues(p.serverFd).inq === 12);
    expect(tcpQueues(p.clientFd).outq).toBe(0);
    expect(() => tcpQueues(-1)).toThrow(expect.objectContaining({ code: 'E_NATIVE', context: expect.objectContaining({ step: 'ktls-queues' }) }));
  });
});

describe('recvRecord and ktlsState on a TCP socket without kernel TLS', () => {
  it('recvRecord: undefined while nothing is queued, the bytes as application data, then end of stream', async () => {
    const p = await pair();
    expect(recvRecord(p.serverFd)).toBeUndefined();
    p.client.write('plain bytes');
    expect(await record(p.serverFd)).toEqual({ type: 23, data: Buffer.from('plain bytes') });
    p.client.end();
    expect(await record(p.serverFd)).toEqual({ type: 23, data: Buffer.alloc(0) });
  });

  // The errno depends on the kernel: ENOPROTOOPT from the IP layer, or EOPNOTSUPP (named ENOTSUP
  // by Node: the same number), which kernel 6.18 gives.
  it('ktlsState fails naming getsockopt and the errno of a socket that has no TLS state', async () => {
    const p = await pair();
    expect(() => ktlsState(p.serverFd)).toThrow(
      expect.objectContaining({ code: 'E_NATIVE', message: expect.stringMatching(/^getsockopt\(TLS_TX, header\) failed: (ENOPROTOOPT|ENOTSUP|EOPNOTSUPP)/), context: expect.objectContaining({ step: 'ktls-get' }) }),
    );
  });
});

// Defined by the kernel's answer rather than skipped: .ci/run counts a skipped test as failed, and
// each kind can run on one kind of kernel only (this file never loads the tls module).
if (!tlsUlp) describe('installKtls on a kernel without the tls ULP (tcp_available_ulp has no "tls")', () => {
  it('fails at the ULP step, says there is no kernel TLS, quotes no key, and leaves the socket as it was', async () => {
    const p = await pair();
    const state: KtlsState = { version: '1.3', cipher: 'aes-256-gcm', tx: direction('aes-256-gcm'), rx: direction('aes-256-gcm') };
    let err: unknown;
    try {
      installKtls(p.serverFd, state);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(BatonError);
    expect(err).toMatchObject({ code: 'E_NATIVE', message: expect.stringMatching(/setsockopt\(TCP_ULP, "tls"\) failed: ENOENT: no kernel TLS/), context: { step: 'ktls-ulp', errnoName: 'ENOENT' } });
    for (const d of [state.tx, state.rx]) expect(leaks((err as Error).message + JSON.stringify((err as BatonError).context), d.key, d.salt, d.iv)).toBe(false);
    // Nothing was installed: plain bytes still pass both ways.
    p.server.write('still plain');
    expect(await record(p.clientFd)).toEqual({ type: 23, data: Buffer.from('still plain') });
  });
});
