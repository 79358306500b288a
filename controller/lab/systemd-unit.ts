// The privileges deploy/systemd/batond.service gives batond, read from the unit itself, so the lab
// can run batond with exactly those (setpriv) and a test proves the unit's set is enough: a
// capability missing from it shows up as a failing lab test, not on a machine.
//
// Only what the unit uses is modelled: CapabilityBoundingSet, AmbientCapabilities and
// NoNewPrivileges, in the [Service] section. An option that would change batond's privileges in
// another way (User=, the inverted "~" capability form, SecureBits=...) is refused rather than
// ignored, so the lab never silently runs batond differently from systemd.
import fs from 'node:fs';
import path from 'node:path';
import { BatonError } from '../errors.js';
import { repoRoot } from '../paths.js';

export interface UnitConfinement {
  /** The bounding set, e.g. ['CAP_NET_ADMIN', 'CAP_BPF']: what a root service's permitted and effective sets become. */
  capabilities: string[];
  ambient: string[];
  noNewPrivileges: boolean;
}

export function batondUnitPath(): string {
  return path.join(repoRoot(), 'deploy', 'systemd', 'batond.service');
}

const CAPABILITY = /^CAP_[A-Z_]{2,30}$/;
const NOT_MODELLED = ['User', 'Group', 'DynamicUser', 'SecureBits', 'PrivateUsers'];

/** The [Service] section's privilege options, as systemd combines repeated lines. */
export function parseUnitConfinement(text: string, source = 'unit'): UnitConfinement {
  const caps = { CapabilityBoundingSet: undefined as Set<string> | undefined, AmbientCapabilities: new Set<string>() };
  let noNewPrivileges = false;
  let section = '';
  const lines = text.replace(/\\\n/g, ' ').split('\n');
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) return;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      section = header[1]!;
      return;
    }
    const eq = line.indexOf('=');
    if (section !== 'Service' || eq < 0) return;
    const key = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    const where = `${source}:${i + 1}`;
    if (NOT_MODELLED.includes(key)) throw new BatonError('E_CONFIG', `${where}: ${key}= changes batond's privileges in a way the lab does not model`, { step: 'unit' });
    if (key === 'NoNewPrivileges') noNewPrivileges = /^(yes|true|on|1)$/i.test(value);
    if (key !== 'CapabilityBoundingSet' && key !== 'AmbientCapabilities') return;
    if (value.startsWith('~')) throw new BatonError('E_CONFIG', `${where}: ${key}=~ (every capability but these) is not modelled by the lab`, { step: 'unit' });
    // An empty assignment resets the list; every other line adds to it.
    if (value === '') {
      caps[key] = new Set();
      return;
    }
    const set = (caps[key] ??= new Set());
    for (const name of value.split(/\s+/)) {
      if (!CAPABILITY.test(name)) throw new BatonError('E_CONFIG', `${where}: ${key}= names ${JSON.stringify(name.slice(0, 40))}, not a capability`, { step: 'unit' });
      set.add(name);
    }
  });
  if (!caps.CapabilityBoundingSet) throw new BatonError('E_CONFIG', `${source}: no CapabilityBoundingSet= in [Service]: batond would run with every capability`, { step: 'unit' });
  const capabilities = [...caps.CapabilityBoundingSet].sort();
  const ambient = [...caps.AmbientCapabilities].filter((c) => caps.CapabilityBoundingSet!.has(c)).sort();
  return { capabilities, ambient, noNewPrivileges };
}

export function readUnitConfinement(file = batondUnitPath()): UnitConfinement {
  return parseUnitConfinement(fs.readFileSync(file, 'utf8'), path.relative(repoRoot(), file));
}

/**
 * setpriv's arguments that give a command run as root exactly the unit's privileges: the bounding
 * set limits what root's execve grants (permitted = effective = bounding set), the inheritable set
 * must hold nothing else (execve adds it to root's permitted set, bounding set or not), ambient
 * capabilities are what the unit asks for, and no_new_privs as the unit says.
 */
export function setprivArgs(c: UnitConfinement): string[] {
  const names = (caps: string[]) => caps.map((cap) => `+${cap.slice('CAP_'.length).toLowerCase()}`);
  return [
    'setpriv',
    `--bounding-set=${['-all', ...names(c.capabilities)].join(',')}`,
    `--inh-caps=${['-all', ...names(c.ambient)].join(',')}`,
    ...(c.ambient.length ? [`--ambient-caps=${['-all', ...names(c.ambient)].join(',')}`] : []),
    ...(c.noNewPrivileges ? ['--no-new-privs'] : []),
    '--',
  ];
}
