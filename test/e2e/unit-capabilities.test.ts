// batond under exactly the privileges its systemd unit gives it (deploy/systemd/batond.service,
// read by controller/lab/systemd-unit.ts: the capability bounding set and NoNewPrivileges, applied
// with setpriv), on every node, and an unmodified curl handed off on port 80 through the HTTP
// example. The target's batond reinstates the socket itself, and binding it to DVIPA:80, a port
// below 1024, in repair mode takes CAP_NET_BIND_SERVICE like any bind: without it in the unit
// the reinstatement fails with EACCES and the handoff is refused.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { curlDigest, inClient, readLog } from '../../controller/lab/demo.js';
import { readUnitConfinement } from '../../controller/lab/systemd-unit.js';
import { useLab } from '../helpers/lab.js';

const BATONDS = ['n1-batond', 'n2-batond', 'n3-batond'];
const running = useLab({ unitCapabilities: BATONDS });
const unit = readUnitConfinement();

/** Capability numbers from the kernel's UAPI header (linux-libc-dev, in scripts/commands.txt). */
function capabilityMask(names: string[]): bigint {
  const header = fs.readFileSync('/usr/include/linux/capability.h', 'utf8');
  return names.reduce((mask, name) => {
    const bit = new RegExp(`^#define ${name}\\s+(\\d+)$`, 'm').exec(header)?.[1];
    if (bit === undefined) throw new Error(`${name} is not in linux/capability.h`);
    return mask | (1n << BigInt(bit));
  }, 0n);
}

function status(name: string): Record<'CapInh' | 'CapPrm' | 'CapEff' | 'CapBnd' | 'CapAmb' | 'NoNewPrivs', bigint> {
  const pid = fs.readFileSync(path.join(running.lab.runDir, `${name}.pid`), 'utf8').trim();
  const text = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const get = (key: string, radix: 'hex' | 'dec') => {
    const v = new RegExp(`^${key}:\\s*([0-9a-f]+)$`, 'm').exec(text)![1]!;
    return radix === 'hex' ? BigInt(`0x${v}`) : BigInt(v);
  };
  return {
    CapInh: get('CapInh', 'hex'),
    CapPrm: get('CapPrm', 'hex'),
    CapEff: get('CapEff', 'hex'),
    CapBnd: get('CapBnd', 'hex'),
    CapAmb: get('CapAmb', 'hex'),
    NoNewPrivs: get('NoNewPrivs', 'dec'),
  };
}

describe("batond with exactly its systemd unit's capabilities", () => {
  it('runs with the bounding set as its permitted and effective sets, nothing inheritable or ambient', () => {
    const caps = capabilityMask(unit.capabilities);
    const ambient = capabilityMask(unit.ambient);
    for (const b of BATONDS) {
      expect(status(b), b).toEqual({ CapInh: ambient, CapPrm: caps, CapEff: caps, CapBnd: caps, CapAmb: ambient, NoNewPrivs: unit.noNewPrivileges ? 1n : 0n });
    }
  });

  it.each([
    ['alice', 'wonderland', 'n2'],
    ['bob', 'builder', 'n3'],
  ])('hands %s off to %s on port 80, through an unmodified curl', async (user, password, node) => {
    const r = await inClient(running.lab, curlDigest(running.lab, user, password, ['/first', '/second']));
    expect(r.stderr).toBe('');
    expect(r.stdout.split('\n').filter((l) => l.startsWith('hello'))).toEqual([
      `hello ${user}, served by ${node} for GET /first`,
      `hello ${user}, served by ${node} for GET /second`,
    ]);
    // Reinstated on the target by its batond: the repair-mode bind to DVIPA:80 worked there.
    expect(readLog(running.lab, 'n1-http-router').some((l) => l.event === 'handed-off' && l.user === user)).toBe(true);
  });
});
