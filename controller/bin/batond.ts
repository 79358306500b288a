#!/usr/bin/env node
// batond — the Baton node agent. Run one per node, inside the node's network namespace.
import { Command } from 'commander';
import { NodeAgent } from '../agent/node-agent.js';
import { readClusterConfig } from '../config/cluster.js';
import { BatonError, isBatonError } from '../errors.js';
import { createLogger } from '../log.js';

/**
 * Exit statuses a supervisor can act on (sysexits.h numbers; deploy/systemd/batond.service and
 * docs/operations.md): restart after a temporary failure, not after one only an operator can fix.
 */
const EXIT = {
  /** Something failed that a restart may cure: restarted. */
  failure: 1,
  /** The command line is wrong: not restarted. */
  usage: 64,
  /** An address or socket path batond listens on is held by another process (E_IN_USE): restarted, the holder may be a batond still exiting. */
  inUse: 75,
  /** The cluster config, a file it names, or this node's setup is wrong (E_CONFIG): not restarted. */
  config: 78,
} as const;

function exitStatus(err: unknown): number {
  if (isBatonError(err, 'E_IN_USE')) return EXIT.inUse;
  if (isBatonError(err, 'E_CONFIG')) return EXIT.config;
  return EXIT.failure;
}

const program = new Command()
  .name('batond')
  .description('Baton node agent: DVIPA, XDP steering, connection transfers')
  .requiredOption('-c, --config <file>', 'cluster config (YAML or JSON)')
  .requiredOption('-n, --node <name>', 'this node\'s name in the cluster config')
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : EXIT.usage))
  .parse();

const opts = program.opts<{ config: string; node: string }>();
const log = createLogger({ node: opts.node, svc: 'batond' });

async function main(): Promise<void> {
  const agent = new NodeAgent(readClusterConfig(opts.config), opts.node, log);
  try {
    await agent.start();
  } catch (err) {
    // Close whatever this start opened before it failed; the checks that run before the node is
    // touched (ports.ts) make a refused start leave the DVIPA and XDP as they were.
    await agent.stop().catch((stopErr: unknown) => log.error({ err: (stopErr as Error).message }, 'cleanup after a failed start'));
    throw err;
  }
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    agent.stop().then(
      () => process.exit(0),
      (err) => {
        log.error({ err: (err as Error).message }, 'unclean stop');
        process.exit(EXIT.failure);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((err: unknown) => {
  const status = exitStatus(err);
  const context = err instanceof BatonError ? err.context : undefined;
  log.fatal({ err: (err as Error).message, code: (err as { code?: string }).code, context, exitStatus: status }, 'batond failed to start');
  process.exit(status);
});
