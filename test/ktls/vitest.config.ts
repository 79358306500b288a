import { defineConfig } from 'vitest/config';

// The tests that need kernel TLS (CONFIG_TLS), which this project's own machine lacks: `make
// vagrant-test` runs them in a Debian 12 VM from the box (scripts/vagrant/vm-run.sh), whose kernel
// has the tls module; the main suite leaves this directory out. One file at a time, as in the
// main suite: the lab takes the VM's two cores.
export default defineConfig({
  test: {
    root: new URL('../..', import.meta.url).pathname,
    include: ['test/ktls/**/*.test.ts'],
    globalSetup: ['test/ktls/setup.ts'],
    fileParallelism: false,
    testTimeout: 180_000,
    hookTimeout: 600_000,
  },
});
