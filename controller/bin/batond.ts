#!/usr/bin/env node
// batond — the Baton node agent. Run one per node, inside the node's network namespace.
import { Command } from 'commander';
import { NodeAgent } from '../agent/node-agent.js';
import { readClusterConfig } from '../config/cluster.js';
import { createLogger } from '../log.js';

const program = new Command()
  .name('batond')
  .description('Baton node agent: DVIPA, XDP steering, connection transfers')
  .requiredOption('-c, --config <file>', 'cluster config (JSON)')
  .requiredOption('-n, --node <name>', 'this node\'s name in the cluster config')
  .parse();

const opts = program.opts<{ config: string; node: string }>();
const log = createLogger({ node: opts.node, svc: 'batond' });

async function main(): Promise<void> {
  const agent = new NodeAgent(readClusterConfig(opts.config), opts.node, log);
  await agent.start();
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    agent.stop().then(
      () => process.exit(0),
      (err) => {
        log.error({ err: (err as Error).message }, 'unclean stop');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((err: Error) => {
  log.fatal({ err: err.message, code: (err as { code?: string }).code }, 'batond failed to start');
  process.exit(1);
});
