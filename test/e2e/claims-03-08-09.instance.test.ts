// Claims 3, 8, 9: the decision is the routing application's (9), and it picks a target application
// *instance* (3), not only a node. n2 runs two instances of the HTTP target; the router knows both
// from the control socket, with their load, and sends alice's connection to the less loaded one.
// (Claim 8, routing and target application being instances of one application: the line target,
// which moves connections on, in claims-10.transfer-again.test.ts.)
import { describe, expect, it } from 'vitest';
import { inClient, readLog } from '../../controller/lab/demo.js';
import { useLab } from '../helpers/lab.js';

const running = useLab({ moreHttpTargets: { n2: ['http-b'] } });

const curl = (path: string) =>
  inClient(running.lab, ['curl', '-sS', '--max-time', '10', '--digest', '-u', 'alice:wonderland', '-D', '-', `http://${running.lab.dvipa.address}${path}`]);
const instanceOf = (stdout: string) => /^X-Instance: (\S+)\r?$/im.exec(stdout)?.[1];

describe('the routing application selects a target application instance', () => {
  it('knows both instances on n2, and sends a new connection to the one not busy', async () => {
    const listed = readLog(running.lab, 'n1-http-router').filter((l) => l.event === 'targets').pop();
    expect(JSON.stringify(listed?.targets)).toContain('"node":"n2","app":"http-target","instance":"http-b"');
    // Keep one instance busy, then connect again: the router must pick the other instance.
    const busy = curl('/hold?ms=1500');
    await new Promise((r) => setTimeout(r, 500));
    const second = await curl('/');
    const first = await busy;
    const busyInstance = instanceOf(first.stdout);
    const chosen = instanceOf(second.stdout);
    expect([busyInstance, chosen].sort()).toEqual(['http-b', 'http-target']);
    const handed = readLog(running.lab, 'n1-http-router').filter((l) => l.event === 'handed-off');
    expect(handed.at(-1)?.attempts).toEqual([{ target: { node: 'n2', port: 80, instance: chosen }, outcome: 'done' }]);
  });
});
