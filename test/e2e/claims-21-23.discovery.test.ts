// Claims 21–23: a routing application gets the list of target applications listening on the DVIPA
// across the cluster when it registers, and every change after: an instance's load, an instance
// that stops, one that dies without a word, a whole node that goes away. Bounds (docs/protocol.md):
// a clean stop is seen at once; a dead process within the 3 s registration expiry plus one 1 s
// report; a dead node within the 3 s report expiry.
import { describe, expect, it } from 'vitest';
import { curlDigest, inClient } from '../../controller/lab/demo.js';
import { isAlive, readPidFile, pidFileOf } from '../../controller/lab/processes.js';
import { stopProcess } from '../../controller/lab/processes.js';
import { useLab } from '../helpers/lab.js';
import { controlClient, type Heard, summary } from '../helpers/control.js';

const running = useLab();

/** Listens on n1 while `act` runs; returns the targets pushes with their arrival times (ms). */
async function watch(seconds: number, act: () => Promise<unknown>): Promise<Heard[]> {
  const heard = controlClient(running.lab, 'n1', ['--app', `watcher${Date.now() % 100000}`], seconds);
  await new Promise((r) => setTimeout(r, 300));
  const t = Date.now();
  await act();
  const acted = Date.now() - t;
  return (await heard).filter((h) => h.type === 'targets').map((h) => ({ ...h, acted }));
}

const firstWithout = (heard: Heard[], entry: string) => heard.find((h) => !summary(h).some((s) => s.startsWith(entry)));

describe('target discovery', () => {
  it('on registration: every target application of every node', async () => {
    const [, targets] = await controlClient(running.lab, 'n1', [], 0.5);
    expect(summary(targets)).toEqual(['n2/http-target@80 0/1000', 'n2/line-target@7000 0/1000', 'n3/http-target@80 0/1000', 'n3/line-target@7000 0/1000']);
  });

  it('load changes are pushed: a connection held on n3 shows as load 1', async () => {
    const heard = await watch(2.5, () => inClient(running.lab, curlDigest(running.lab, 'bob', 'builder', ['/hold?ms=1000'])));
    expect(heard.some((h) => summary(h).includes('n3/http-target@80 1/1000'))).toBe(true);
    expect(summary(heard.at(-1))).toContain('n3/http-target@80 0/1000');
  });

  it('an instance that stops cleanly leaves the list at once', async () => {
    const heard = await watch(2, () => stopProcess(running.lab.runDir, 'n2-http-target', running.lab.prefix));
    const gone = firstWithout(heard, 'n2/http-target');
    expect(gone).toBeDefined();
    expect(gone!.ms).toBeLessThan(300 + 1500);
  });

  it('an instance that dies without a word leaves within the registration expiry', async () => {
    const pid = readPidFile(pidFileOf(running.lab.runDir, 'n2-line-target'))!;
    const heard = await watch(6, async () => process.kill(pid, 'SIGKILL'));
    expect(isAlive(pid)).toBe(false);
    const gone = firstWithout(heard, 'n2/line-target');
    expect(gone, JSON.stringify(heard.map((h) => [h.ms, summary(h)]))).toBeDefined();
    expect(gone!.ms).toBeLessThan(300 + 3000 + 1000 + 1000);
  });

  it('a node whose batond is gone leaves within the report expiry', async () => {
    const heard = await watch(6, () => stopProcess(running.lab.runDir, 'n3-batond', running.lab.prefix, 500));
    const gone = heard.find((h) => !summary(h).some((s) => s.startsWith('n3/')));
    expect(gone, JSON.stringify(heard.map((h) => [h.ms, summary(h)]))).toBeDefined();
    expect(gone!.ms).toBeLessThan(300 + 3000 + 1000);
  });
});
