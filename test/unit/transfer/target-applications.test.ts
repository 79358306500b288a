// One registry of a node's target applications (controller/transfer/target/applications.ts): the
// agent socket's hello links an instance (offers go to links), the control socket's registration
// lists it (routing applications see listings), and its capacity is one number, the last it
// declared on either socket, which batond enforces and routing applications are shown. The second
// part runs a real control server and the SDK's real control link against a target relay that
// share one registry.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { TargetDirectory } from '../../../controller/control/directory.js';
import { createLogger } from '../../../controller/log.js';
import { ControlLink } from '../../../controller/sdk/control-link.js';
import { type LinkIdentity, TargetApplications } from '../../../controller/transfer/target/applications.js';
import { startControlServer } from '../../helpers/control.js';
import { targetWorld } from '../../helpers/target-world.js';
import { until } from '../../helpers/wait.js';

const log = createLogger({}, 'silent');

/** A link as the registry sees it: who it is, its ports, the capacity it declared. */
const link = (name: string, ports: number[], more: Partial<LinkIdentity> = {}): LinkIdentity => ({ name, ports, ...more });

describe('the registry of target applications', () => {
  it('offers pick a link by instance, or the first on the port; a new link of an instance replaces the old on every port', () => {
    const apps = new TargetApplications<LinkIdentity>();
    const blue = link('line', [7000, 8000], { instance: 'blue' });
    const green = link('line', [7000], { instance: 'green' });
    apps.link(blue);
    apps.link(green);
    expect(apps.pick(7000)).toBe(blue);
    expect(apps.pick(7000, 'green')).toBe(green);
    expect(apps.pick(8000, 'green')).toBeUndefined();
    // blue again (a reconnected application): the old link is gone from 7000 and 8000 alike.
    const blue2 = link('line', [7000], { instance: 'blue' });
    apps.link(blue2);
    expect(apps.pick(8000)).toBeUndefined();
    expect(apps.pick(7000)).toBe(green);
    expect(apps.pick(7000, 'blue')).toBe(blue2);
    // The old link's close takes nothing from the new one.
    apps.unlink(blue);
    expect(apps.pick(7000, 'blue')).toBe(blue2);
    apps.unlink(blue2);
    expect(apps.pick(7000, 'blue')).toBeUndefined();
  });

  it('a listing is shown to routing applications, not given connections; a link is given connections, not shown', () => {
    const apps = new TargetApplications<LinkIdentity>();
    apps.list('r1', 'py-target', { app: 'py-target', ports: [7000], load: 0 });
    apps.link(link('node-target', [7000]));
    expect(apps.advertised('n2')).toEqual([{ node: 'n2', app: 'py-target', instance: 'py-target', port: 7000, capacity: 0, load: 0, weight: 100, draining: false }]);
    expect(apps.pick(7000, 'py-target')).toBeUndefined();
    expect(apps.pick(7000)?.name).toBe('node-target');
    apps.unlist('r1');
    expect(apps.advertised('n2')).toEqual([]);
    expect(apps.isListed('py-target')).toBe(false);
  });

  it('capacity is the last an instance declared on either socket; an operator setting outlives the instance listing again', () => {
    const apps = new TargetApplications<LinkIdentity>();
    let changes = 0;
    apps.on('change', () => changes++);
    const t = link('line', [7000], { instance: 'line', capacity: 5 });
    apps.link(t);
    expect(apps.capacity(t)).toBe(5);
    apps.list('r1', 'line', { app: 'line', ports: [7000], load: 2 });
    // A registration that declares none leaves the hello's in place.
    expect(apps.advertised('n2')[0]).toMatchObject({ capacity: 5, load: 2 });
    apps.update('r1', { capacity: 7, load: 3 });
    expect(apps.capacity(t)).toBe(7);
    expect(apps.advertised('n2')[0]).toMatchObject({ capacity: 7, load: 3 });
    apps.setOperator('line', { draining: true });
    apps.unlist('r1');
    apps.list('r2', 'line', { app: 'line', ports: [7000], load: 0 }, 1);
    expect(apps.advertised('n2')).toEqual([{ node: 'n2', app: 'line', instance: 'line', port: 7000, capacity: 1, load: 0, weight: 100, draining: true }]);
    expect(changes).toBe(5);
  });
});

describe('one registry behind both sockets: a real control server and a target relay', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-registry-'));
  const secret = randomBytes(32).toString('hex');
  const secretFile = path.join(dir, 'secret');
  fs.writeFileSync(secretFile, secret, { mode: 0o600 });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it("the capacity an application declares on the control socket bounds the offers its link is given, and routing applications see batond's bound", async () => {
    const w = targetWorld();
    const directory = new TargetDirectory(60_000, 0);
    const { server, port } = await startControlServer({ secret: Buffer.from(secret), directory, log, applications: w.relay.applications });
    const control = await ControlLink.open({ port, secretFile }, { role: 'target', app: 't', instance: 't', ports: [7000], capacity: 1, load: 0 }, log);
    const shown = () => directory.local().map((t) => `${t.instance}@${t.port} ${t.load}/${t.capacity}`);
    try {
      await until('the listing', () => shown().length === 1);
      expect(shown()).toEqual(['t@7000 0/1']);
      // The same instance's link, declaring no capacity of its own: the listing's bounds it.
      w.app({ instance: 't', capacity: undefined });
      w.offer('n1', 'a');
      w.offer('n1', 'b');
      expect(w.events.filter((e) => e.startsWith('n1:'))).toEqual(['n1:accept', 'n1:reject']);
      expect(w.reasons()).toEqual(['target application t is at capacity (1 connections)']);
      // Declared anew on the control socket: batond takes one more, routing applications see 2.
      control.update({ capacity: 2 });
      await until('the new capacity', () => shown()[0] === 't@7000 0/2');
      w.offer('n1', 'c');
      expect(w.events.at(-1)).toBe('n1:accept');
      // The operator's drain applies to the instance the registry knows.
      expect(server.setOperatorState('t', { draining: true })).toMatchObject([{ instance: 't', draining: true, capacity: 2 }]);
    } finally {
      control.close();
      server.close();
      directory.close();
      w.relay.close();
    }
  });
});
