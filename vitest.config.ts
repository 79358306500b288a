import { defineConfig } from 'vitest/config';

// Integration and end-to-end tests build network-namespace clusters and move real sockets:
// run files one at a time so two labs never compete for the machine's two cores.
// BATON_TEST_REPORT (set by .ci/run) adds a JSON report the CI summary line is taken from.
// test/setup/commands.ts stops the run before any test if a program the tests run is missing.
const report = process.env.BATON_TEST_REPORT;

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Kernel TLS: in a VM (test/ktls/vitest.config.ts, make vagrant-test).
    exclude: ['test/ktls/**', '**/node_modules/**'],
    globalSetup: ['test/setup/commands.ts'],
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: report ? ['default', ['json', { outputFile: report }]] : ['default'],
  },
});
