// Before the kernel-TLS suite (test/ktls/vitest.config.ts), in the VM that runs it: kernel TLS
// there (the tls module installed; nothing loads it beforehand: the kernel does at the first
// setsockopt(TCP_ULP, "tls") of a process with CAP_NET_ADMIN, batond's or a test's), and every
// program the lab and the tests run (scripts/commands.txt's runtime set). The VM is Baton's box,
// where Baton is installed as an operator installs it: no compiler, no git.
import { kernelTls } from '../../native/kernel-tls.js';
import { checkRequirements, readCommandList } from '../setup/commands.js';

export default function setup(): void {
  checkRequirements(readCommandList(), ['runtime'], process.env.PATH ?? '');
  const ktls = kernelTls();
  if (!ktls.available) throw new Error(`the kernel-TLS suite needs kernel TLS: ${ktls.how}`);
}
