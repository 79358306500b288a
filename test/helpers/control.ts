// The control socket in tests: a real ControlServer on a free loopback port, and the plain-Python
// control-socket client run inside a lab node's namespace (as root, or as an unprivileged user).
import { execFile } from 'node:child_process';
import dgram from 'node:dgram';
import path from 'node:path';
import { promisify } from 'node:util';
import type { TargetDirectory } from '../../controller/control/directory.js';
import { ControlServer } from '../../controller/control/server.js';
import { CONTROL_PORT, controlSecretFile } from '../../controller/lab/cluster.js';
import type { LabDescription } from '../../controller/lab/description.js';
import type { Logger } from '../../controller/log.js';
import { repoRoot } from '../../controller/paths.js';

type ServerOptions = ConstructorParameters<typeof ControlServer>[0];

/** A free UDP port on 127.0.0.1, as the kernel hands one out (it may be taken again before use). */
export async function freeUdpPort(): Promise<number> {
  const probe = dgram.createSocket('udp4');
  const port = await new Promise<number>((r) => probe.bind(0, '127.0.0.1', () => r(probe.address().port)));
  await new Promise<void>((r) => probe.close(() => r()));
  return port;
}

/**
 * A started ControlServer. It binds the port it is given: on `port` if named, else on a free one
 * from the kernel, retrying the rare race with another process taking it first.
 */
export async function startControlServer(opts: { secret: Buffer; directory: TargetDirectory; log: Logger; port?: number; dvipaPorts?: number[]; metrics?: ServerOptions['metrics']; applications?: ServerOptions['applications'] }): Promise<{ server: ControlServer; port: number }> {
  for (let attempt = 0; ; attempt++) {
    const port = opts.port ?? (await freeUdpPort());
    const server = new ControlServer({ node: 'n1', port, secret: opts.secret, dvipaPorts: () => opts.dvipaPorts ?? [7000], directory: opts.directory, log: opts.log, metrics: opts.metrics, applications: opts.applications });
    try {
      await server.start();
      return { server, port };
    } catch (err) {
      if (opts.port !== undefined || attempt >= 4) throw err;
    }
  }
}

const run = promisify(execFile);

export interface Heard {
  ms: number;
  type?: string;
  targets?: Array<{ node: string; app: string; instance: string; port: number; capacity: number; load: number; weight: number; draining: boolean }>;
  [k: string]: unknown;
}

/**
 * Runs examples/clients/control_client.py in a node's namespace for `seconds`; with `uid`, as that
 * unprivileged user (no groups, no capabilities), who cannot read the secret file: only --raw works.
 */
export async function controlClient(lab: LabDescription, node: string, args: string[], seconds: number, opts: { uid?: number } = {}): Promise<Heard[]> {
  const ns = lab.nodes.find((n) => n.name === node)!.ns;
  const as = opts.uid === undefined ? [] : ['setpriv', `--reuid=${opts.uid}`, `--regid=${opts.uid}`, '--clear-groups', '--inh-caps=-all', '--bounding-set=-all'];
  const argv = [
    'netns', 'exec', ns, ...as, 'python3', path.join(repoRoot(), 'examples/clients/control_client.py'),
    '--port', String(CONTROL_PORT), '--secret', controlSecretFile(lab, node), '--seconds', String(seconds), ...args,
  ];
  // An unprivileged user's PATH: root's may lead through directories that user cannot enter.
  const env = opts.uid === undefined ? process.env : { ...process.env, PATH: '/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin' };
  const { stdout } = await run('ip', argv, { timeout: (seconds + 10) * 1000, env, maxBuffer: 16 * 1024 * 1024 });
  return stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Heard);
}

/** "node/app@port load/capacity" for each target in a targets datagram, sorted. */
export function summary(h: Heard | undefined): string[] {
  return (h?.targets ?? []).map((t) => `${t.node}/${t.instance}@${t.port} ${t.load}/${t.capacity}`).sort();
}
