// A whole lab per test file: unique prefix and directory, torn down even when the test fails.
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { RoutingTable } from '../../controller/agent/routing-table.js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type LabProcessOptions, labProcesses, waitUntilReady } from '../../controller/lab/cluster.js';
import { HOST, type LabDescription, parseSubnet6, subnet6Host } from '../../controller/lab/description.js';
import { labDown, labUp } from '../../controller/lab/lab.js';
import { inClient } from '../../controller/lab/demo.js';

export interface RunningLab {
  lab: LabDescription;
  dir: string;
  down(): Promise<void>;
}

/** What a test's lab runs (LabProcessOptions), and whether n2 is a backup distributor. */
export type TestLabOptions = LabProcessOptions & { backup?: boolean };

export async function startLab(opts: TestLabOptions = {}): Promise<RunningLab> {
  const prefix = `bt${randomBytes(3).toString('hex')}`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${prefix}-`));
  let specs: ReturnType<typeof labProcesses> = [];
  const down = async () => {
    await labDown({ prefix, dir });
    fs.rmSync(dir, { recursive: true, force: true });
  };
  try {
    const lab = await labUp({ prefix, dir, backup: opts.backup, processes: (l) => (specs = labProcesses(l, opts)) });
    await waitUntilReady(lab, specs);
    return { lab, dir, down };
  } catch (err) {
    // Keep the logs of a lab that failed to start: they are the only explanation.
    printLogTails(path.join(dir, 'run'));
    await down();
    throw err;
  }
}

export interface LabFixture {
  readonly lab: LabDescription;
  /** The distributor's pinned routing table, opened from the test process. */
  readonly routes: RoutingTable;
}

/** The end of every process log of a lab: a failure in CI leaves nothing else behind. */
function printLogTails(runDir: string, chars = 3000): void {
  for (const f of fs.existsSync(runDir) ? fs.readdirSync(runDir).sort() : []) {
    if (f.endsWith('.log')) console.error(`--- ${f}\n${fs.readFileSync(path.join(runDir, f), 'utf8').slice(-chars)}`);
  }
}

/** One lab for the calling test file: built before its tests, torn down after them, whatever happened. */
export function useLab(opts: TestLabOptions = {}): LabFixture {
  // Tests read a process's log as soon as a client has its answer: the lab's processes (which
  // inherit this environment) must have written the line before they sent the bytes.
  process.env.BATON_LOG_SYNC = '1';
  let running: RunningLab | undefined;
  let routes: RoutingTable | undefined;
  beforeAll(async () => {
    running = await startLab(opts);
    routes = RoutingTable.openPinned(`/sys/fs/bpf/baton/${running.lab.prefix}-${running.lab.distributor}`);
  });
  afterEach((ctx) => {
    if (running && ctx.task.result?.state === 'fail') printLogTails(running.lab.runDir);
  });
  afterAll(async () => {
    routes?.close();
    await running?.down();
  });
  return {
    get lab() {
      return running!.lab;
    },
    get routes() {
      return routes!;
    },
  };
}

/** The IPv6 twin of the n-th free client address (same /64 as the lab's client), added to the client namespace's interface. */
export async function extraClientAddress6(lab: LabDescription, n: number): Promise<string> {
  const address = subnet6Host(parseSubnet6(lab.subnet6), HOST.freeFirst + n);
  const r = await inClient(lab, ['ip', '-6', 'addr', 'replace', `${address}/64`, 'dev', lab.client.interface, 'nodad']);
  if (r.code !== 0) throw new Error(`cannot add ${address} to ${lab.client.ns}: ${r.stderr}`);
  return address;
}

/** The n-th free client address of the lab (0-based), added to the client namespace's interface: a second client host. */
export async function extraClientAddress(lab: LabDescription, n: number): Promise<string> {
  const parts = lab.freeClientAddresses.first.split('.').map(Number);
  parts[3]! += n;
  const address = parts.join('.');
  const r = await inClient(lab, ['ip', 'addr', 'replace', `${address}/${lab.subnet.split('/')[1]}`, 'dev', lab.client.interface]);
  if (r.code !== 0) throw new Error(`cannot add ${address} to ${lab.client.ns}: ${r.stderr}`);
  return address;
}
