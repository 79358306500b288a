// errno numbers as their names (ENOENT), for error messages from every native binding.
import os from 'node:os';

const errnoNames = new Map<number, string>(Object.entries(os.constants.errno).map(([name, num]) => [num, name]));

export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `errno ${errno}`;
}
