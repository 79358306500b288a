// The target directory gathers bursts of changes: the first is published at once, the rest of a
// burst once at the end of the window, with the state as it is then; nothing for no change.
import { afterEach, describe, expect, it } from 'vitest';
import { TargetDirectory } from '../../../controller/control/directory.js';
import type { TargetInfo } from '../../../controller/control/messages.js';

const target = (load: number): TargetInfo => ({ node: 'n2', app: 'line-target', instance: 'line-target', port: 7000, capacity: 1000, load, weight: 100, draining: false });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const dirs: TargetDirectory[] = [];
afterEach(() => dirs.splice(0).forEach((d) => d.close()));

function setup(coalesceMs: number) {
  const d = new TargetDirectory(60_000, coalesceMs);
  dirs.push(d);
  const seen: number[][] = [];
  d.on('change', (all) => seen.push(all.map((t) => t.load)));
  return { d, seen };
}

describe('target directory', () => {
  it('publishes the first change at once and a burst once, with its last state, at the end of the window', async () => {
    const { d, seen } = setup(100);
    d.setLocal([target(1)]);
    expect(seen).toEqual([[1]]);
    for (let load = 2; load <= 500; load++) d.setLocal([target(load)]);
    expect(seen).toEqual([[1]]);
    expect(d.all()[0]!.load).toBe(500); // readers see the present at once
    await sleep(150);
    expect(seen).toEqual([[1], [500]]);
    expect(d.seq).toBe(2);
  });

  it('a burst that ends where it began publishes nothing; a change after a quiet window goes at once', async () => {
    const { d, seen } = setup(50);
    d.setLocal([target(1)]);
    d.setLocal([target(2)]);
    d.setLocal([target(1)]);
    await sleep(80);
    expect(seen).toEqual([[1]]);
    d.setLocal([target(3)]);
    expect(seen).toEqual([[1], [3]]);
    d.setRemote('n3', [{ ...target(7), node: 'n3' }]);
    await sleep(80);
    expect(seen).toEqual([[1], [3], [3, 7]]);
  });
});
