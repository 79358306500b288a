// A libbaton.so older than the TypeScript (the sources changed, `make native` not run) is
// refused where the library is loaded, whichever module binds it first: the error says what to
// do, instead of koffi's "Cannot find function" from whatever function the old library lacks.
// The library is a stand-in that reports an older ABI and has no other function.
import { describe, expect, it, vi } from 'vitest';

vi.mock('koffi', async (importOriginal) => {
  const real = ((await importOriginal()) as { default: Record<string, unknown> }).default;
  const stale = {
    func: (name: string) => {
      if (name === 'baton_abi_version') return () => 1;
      if (name === 'baton_state_size') return () => 0;
      throw new Error(`Cannot find function '${name}' in shared library`);
    },
  };
  return { default: { ...real, load: () => stale } };
});

const { servedFlows, tcpState } = await import('../../../native/diag.js');
const { FdSocket } = await import('../../../native/fdpass.js');
const { loadNative } = await import('../../../native/repair.js');
const { ktlsState } = await import('../../../native/ktls.js');

const stale = expect.objectContaining({ code: 'E_NATIVE', message: expect.stringMatching(/libbaton\.so does not match this build \(ABI 1, state 0 bytes; expected \d+, \d+\): run `make native`/) });

describe('a stale libbaton.so', () => {
  it.each([
    ['sock_diag (diag.ts)', () => tcpState({ family: 4, clientAddress: '10.0.0.1', clientPort: 40000, vipAddress: '10.0.0.10', vipPort: 7000 })],
    ['the sock_diag dump (diag.ts)', () => servedFlows(4, '10.0.0.10')],
    ['descriptor passing (fdpass.ts)', () => FdSocket.pair()],
    ['TCP_REPAIR (repair.ts)', () => loadNative()],
    ['kernel TLS (ktls.ts)', () => ktlsState(0)],
  ])('is refused by the first call of %s, with what to do', (_what, call) => {
    expect(call).toThrow(stale);
  });
});
