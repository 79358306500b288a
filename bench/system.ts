// What the suite reads from the kernel about the machine while it measures: CPU time of a set of
// processes, the machine's softirq time, a process's resident memory, interface counters.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';

/** USER_HZ: the unit of /proc/stat. */
const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    // No getconf: Linux's USER_HZ is 100 on every architecture the project builds for.
    return 100;
  }
})();

/**
 * CPU time of the processes, in ns, from every thread's schedstat (nanosecond run time, where
 * /proc/<pid>/stat counts 10 ms ticks). Threads that exit between two readings take their time
 * with them: measure long-lived processes.
 */
export function processCpuNs(pids: number[]): number {
  let total = 0;
  for (const pid of pids) {
    let tasks: string[];
    try {
      tasks = fs.readdirSync(`/proc/${pid}/task`);
    } catch {
      continue;
    }
    for (const tid of tasks) {
      try {
        total += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
      } catch {
        // exited meanwhile
      }
    }
  }
  return total;
}

export interface StatSnapshot {
  /** softirq time of all CPUs, ns (tick-sampled by the kernel: 1/CLK_TCK resolution). */
  softirqNs: number;
  /** everything but idle and iowait, ns. */
  busyNs: number;
  /** time the hypervisor ran something else while this machine's CPUs wanted to run, ns. */
  stealNs: number;
}

export function procStat(): StatSnapshot {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
  const [, user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = line.trim().split(/\s+/).map(Number);
  const tick = 1e9 / CLK_TCK;
  return { softirqNs: softirq * tick, busyNs: (user + nice + system + irq + softirq + steal) * tick, stealNs: steal * tick };
}

export function rssMiB(pid: number): number {
  const kb = Number(/^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
  return kb / 1024;
}

export function machine(haproxyVersion: string) {
  return {
    kernel: os.release(),
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memoryMiB: Math.round(os.totalmem() / 1048576),
    node: process.version,
    haproxy: haproxyVersion,
  };
}
