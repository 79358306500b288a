// A throwaway cluster CA and node certificates made by the same script the lab and operators use.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { repoRoot } from '../../controller/paths.js';

export interface TestCertificates {
  dir: string;
  caFile: string;
  certFile(node: string): string;
  keyFile(node: string): string;
  /** ca/cert/key buffers for a node, as tls.createServer/connect take them. */
  material(node: string): { ca: Buffer; cert: Buffer; key: Buffer };
  /** Deletes the directory: every caller does, when it is done. */
  dispose(): void;
}

export function makeCertificates(nodes: Array<{ name: string; address: string }>, dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-certs-'))): TestCertificates {
  const script = path.join(repoRoot(), 'scripts/certs.sh');
  execFileSync(script, ['ca', dir]);
  for (const n of nodes) execFileSync(script, ['node', dir, n.name, n.address]);
  const certs: TestCertificates = {
    dir,
    caFile: path.join(dir, 'ca.crt'),
    certFile: (node) => path.join(dir, `${node}.crt`),
    keyFile: (node) => path.join(dir, `${node}.key`),
    material: (node) => ({ ca: fs.readFileSync(certs.caFile), cert: fs.readFileSync(certs.certFile(node)), key: fs.readFileSync(certs.keyFile(node)) }),
    dispose: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
  return certs;
}
