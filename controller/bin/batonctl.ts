#!/usr/bin/env node
// batonctl — operate Baton: the cluster through any node's REST API, the namespace lab, the demo.
import path from 'node:path';
import { Command } from 'commander';
import { repoRoot } from '../paths.js';
import { labProcesses, waitUntilReady } from '../lab/cluster.js';
import { runDemo } from '../lab/demo.js';
import { labDown, labStatus, labUp } from '../lab/lab.js';
import { registerOperatorCommands, registerTokenCommands } from '../cli/commands.js';

const program = new Command().name('batonctl').description('Baton control tool');
registerOperatorCommands(program);
registerTokenCommands(program);
const defaultDir = () => path.join(repoRoot(), 'lab');
/** Every lab command names its lab the same way. */
const labCommand = (parent: Command, name: string, prefix = 'baton') =>
  parent
    .command(name)
    .option('--prefix <p>', 'name prefix (namespaces, pins): two labs need two prefixes', prefix)
    .option('--dir <dir>', 'where lab.json and run/ go', defaultDir());

const lab = program.command('lab').description('a Baton cluster of network namespaces on this machine');
labCommand(lab, 'up')
  .description('build the lab, start batond and the example applications')
  .option('--no-examples', 'start only batond')
  .option('--xdp-mode <mode>', 'native or generic XDP on the distributor', 'native')
  .option('--backup', 'n2 is a backup distributor: keepalived on n1 and n2 decides which one is active')
  .option('--https', 'the examples over TLS too: HTTPS on 443, the line protocol on 7443 (handoffs need kernel TLS)')
  .action(async (o: { prefix: string; dir: string; examples: boolean; xdpMode: 'native' | 'generic'; backup?: boolean; https?: boolean }) => {
    let specs: ReturnType<typeof labProcesses> = [];
    const desc = await labUp({ prefix: o.prefix, dir: o.dir, backup: o.backup, processes: (l) => (specs = labProcesses(l, { examples: o.examples, xdpMode: o.xdpMode, https: o.https })) });
    try {
      await waitUntilReady(desc, specs);
    } catch (err) {
      await labDown({ prefix: o.prefix, dir: o.dir });
      throw err;
    }
    console.log(`lab ${desc.prefix} up: DVIPA ${desc.dvipa.address} and ${desc.dvipa.address6} (ports ${desc.dvipa.ports.join(', ')}), client namespace ${desc.client.ns}`);
    console.log(`description: ${path.join(o.dir, 'lab.json')}; logs: ${desc.runDir}`);
  });
labCommand(lab, 'down')
  .description('remove everything the lab made (also after a crash)')
  .action(async (o: { prefix: string; dir: string }) => {
    await labDown({ prefix: o.prefix, dir: o.dir });
    console.log(`lab ${o.prefix} down`);
  });
labCommand(lab, 'status')
  .description('namespaces and processes of the lab')
  .option('--json', 'machine-readable output')
  .action(async (o: { prefix: string; dir: string; json?: boolean }) => {
    const s = await labStatus({ prefix: o.prefix, dir: o.dir });
    if (o.json) {
      console.log(JSON.stringify(s, null, 2));
      return;
    }
    for (const n of s.namespaces) console.log(`namespace ${n.name.padEnd(24)} ${n.exists ? 'present' : 'absent'}`);
    for (const p of s.processes) console.log(`process   ${p.name.padEnd(24)} pid ${String(p.pid).padEnd(8)} ${p.alive ? 'alive' : 'dead'}`);
  });

labCommand(program, 'demo', 'batondemo')
  .description('lab up, curl and a python client through the examples, a timeline of each handoff, lab down')
  .option('--handoffs <n>', 'handoffs in the series', '50')
  .action(async (o: { prefix: string; dir: string; handoffs: string }) => {
    const ok = await runDemo({ prefix: o.prefix, dir: o.dir, handoffs: Number(o.handoffs) });
    process.exitCode = ok ? 0 : 1;
  });

program.parseAsync().catch((err: Error) => {
  console.error(`batonctl: ${err.message}`);
  process.exit(1);
});
