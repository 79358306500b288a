// Runs the plain-Python control-socket client inside a node's namespace and parses what it heard.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { CONTROL_PORT, controlSecretFile } from '../../controller/lab/cluster.js';
import type { LabDescription } from '../../controller/lab/description.js';
import { repoRoot } from '../../controller/paths.js';

const run = promisify(execFile);

export interface Heard {
  ms: number;
  type?: string;
  targets?: Array<{ node: string; app: string; instance: string; port: number; capacity: number; load: number; weight: number; draining: boolean }>;
  [k: string]: unknown;
}

export async function controlClient(lab: LabDescription, node: string, args: string[], seconds: number): Promise<Heard[]> {
  const ns = lab.nodes.find((n) => n.name === node)!.ns;
  const argv = [
    'netns', 'exec', ns, 'python3', path.join(repoRoot(), 'examples/clients/control_client.py'),
    '--port', String(CONTROL_PORT), '--secret', controlSecretFile(lab, node), '--seconds', String(seconds), ...args,
  ];
  const { stdout } = await run('ip', argv, { timeout: (seconds + 10) * 1000 });
  return stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Heard);
}

/** "node/app@port load/capacity" for each target in a targets datagram, sorted. */
export function summary(h: Heard | undefined): string[] {
  return (h?.targets ?? []).map((t) => `${t.node}/${t.instance}@${t.port} ${t.load}/${t.capacity}`).sort();
}
