// Runs synchronous work with this thread in a network namespace the test made (setns through
// libc): sockets created meanwhile belong to it, and a BPF program loaded meanwhile attaches there.
import fs from 'node:fs';
import koffi from 'koffi';

const CLONE_NEWNET = 0x40000000;
const libc = koffi.load('libc.so.6');
const setns = libc.func('int setns(int fd, int nstype)');

/**
 * Runs fn with this thread in the named network namespace (and only the network namespace:
 * the mount namespace, hence /sys/fs/bpf, stays the root one). fn must be synchronous:
 * anything awaited would run after the switch back.
 */
export function withNetns<T>(ns: string, fn: () => T): T {
  const home = fs.openSync('/proc/thread-self/ns/net', 'r');
  const target = fs.openSync(`/run/netns/${ns}`, 'r');
  try {
    if (setns(target, CLONE_NEWNET) !== 0) throw new Error(`setns(${ns}) failed: errno ${koffi.errno()}`);
    try {
      return fn();
    } finally {
      // Staying in the wrong namespace would silently corrupt every later test: die instead.
      if (setns(home, CLONE_NEWNET) !== 0) {
        process.stderr.write(`cannot return to the root network namespace (errno ${koffi.errno()})\n`);
        process.exit(70);
      }
    }
  } finally {
    fs.closeSync(target);
    fs.closeSync(home);
  }
}
