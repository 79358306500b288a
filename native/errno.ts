// errno numbers as their names (ENOENT), for error messages from every native binding.
import os from 'node:os';

// Some numbers have two names (EAGAIN and EWOULDBLOCK, EOPNOTSUPP and ENOTSUP); the first listed
// is the one the kernel documents each call with, so it wins.
const errnoNames = new Map<number, string>();
for (const [name, num] of Object.entries(os.constants.errno)) if (!errnoNames.has(num)) errnoNames.set(num, name);

export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `errno ${errno}`;
}
