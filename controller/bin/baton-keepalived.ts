#!/usr/bin/env node
// baton-keepalived — makes ready one distributor's keepalived from the cluster file (its config,
// notify FIFO and track file in batond's state directory; stale pidfiles cleared) and prints the
// command that runs it, for a shell to exec, so that the supervisor's process is keepalived itself:
//
//   set -e; argv=$(node baton-keepalived.js --config cluster.yaml --node n1); exec $argv
//
// (deploy/systemd/baton-keepalived.service, and the lab, controller/lab/cluster.ts). Every path in
// it is checked to hold no blank (controller/ha/keepalived.ts), so the shell's word splitting is
// safe. Exit 78: this node runs no keepalived (not a distributor, or the only one); 64: usage.
import { Command } from 'commander';
import { readClusterConfig, stateDirOf } from '../config/cluster.js';
import { isBatonError } from '../errors.js';
import { prepareKeepalived } from '../ha/keepalived-start.js';
import { errorText } from '../input.js';

const program = new Command()
  .name('baton-keepalived')
  .description("prepare this distributor's keepalived and print the command that runs it")
  .requiredOption('-c, --config <file>', 'cluster config (YAML or JSON)')
  .requiredOption('-n, --node <name>', "this node's name in the cluster config")
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 64))
  .parse();
const opts = program.opts<{ config: string; node: string }>();

try {
  const config = readClusterConfig(opts.config);
  const argv = await prepareKeepalived(config, opts.node, stateDirOf(config));
  console.log(argv.join(' '));
} catch (err) {
  console.error(`baton-keepalived: ${errorText(err)}`);
  process.exit(isBatonError(err, 'E_CONFIG') ? 78 : 1);
}
