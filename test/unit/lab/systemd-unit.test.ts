// The lab reads batond's privileges from its systemd unit (controller/lab/systemd-unit.ts) and
// applies them with setpriv: what it reads must be what systemd would apply, and anything it
// cannot model must stop the lab rather than run batond differently from systemd.
import { describe, expect, it } from 'vitest';
import { parseUnitConfinement, readUnitConfinement, setprivArgs } from '../../../controller/lab/systemd-unit.js';

const unit = (service: string) => `[Unit]\nDescription=x\nCapabilityBoundingSet=CAP_SYS_ADMIN\n\n[Service]\nExecStart=/bin/true\n${service}\n[Install]\nWantedBy=multi-user.target\n`;

describe("batond's systemd unit, as the lab reads it", () => {
  it('gives the shipped unit the capabilities a distributor and a port-80 handoff need, and no_new_privs', () => {
    expect(readUnitConfinement()).toEqual({
      capabilities: ['CAP_BPF', 'CAP_NET_ADMIN', 'CAP_NET_BIND_SERVICE', 'CAP_PERFMON'],
      ambient: [],
      noNewPrivileges: true,
    });
  });

  it('turns it into setpriv arguments: bounding set, nothing inheritable, no_new_privs', () => {
    expect(setprivArgs(readUnitConfinement())).toEqual([
      'setpriv',
      '--bounding-set=-all,+bpf,+net_admin,+net_bind_service,+perfmon',
      '--inh-caps=-all',
      '--no-new-privs',
      '--',
    ]);
    expect(setprivArgs({ capabilities: ['CAP_NET_ADMIN', 'CAP_NET_RAW'], ambient: ['CAP_NET_RAW'], noNewPrivileges: false })).toEqual([
      'setpriv',
      '--bounding-set=-all,+net_admin,+net_raw',
      '--inh-caps=-all,+net_raw',
      '--ambient-caps=-all,+net_raw',
      '--',
    ]);
  });

  it('combines repeated lines as systemd does: added up, an empty one resets; only [Service] counts', () => {
    const c = parseUnitConfinement(unit('CapabilityBoundingSet=CAP_NET_RAW\nCapabilityBoundingSet=\nCapabilityBoundingSet=CAP_NET_ADMIN CAP_BPF\nCapabilityBoundingSet=CAP_PERFMON\nAmbientCapabilities=CAP_BPF CAP_CHOWN\nNoNewPrivileges=true'));
    // An ambient capability outside the bounding set never reaches the process.
    expect(c).toEqual({ capabilities: ['CAP_BPF', 'CAP_NET_ADMIN', 'CAP_PERFMON'], ambient: ['CAP_BPF'], noNewPrivileges: true });
  });

  it('refuses what it does not model rather than run batond with other privileges than systemd would', () => {
    expect(() => parseUnitConfinement(unit('CapabilityBoundingSet=~CAP_SYS_ADMIN'), 'u')).toThrow("u:7: CapabilityBoundingSet=~ (every capability but these) is not modelled by the lab");
    expect(() => parseUnitConfinement(unit('CapabilityBoundingSet=CAP_BPF\nUser=baton'), 'u')).toThrow("u:8: User= changes batond's privileges in a way the lab does not model");
    expect(() => parseUnitConfinement(unit('NoNewPrivileges=yes'), 'u')).toThrow('u: no CapabilityBoundingSet= in [Service]: batond would run with every capability');
    expect(() => parseUnitConfinement(unit('CapabilityBoundingSet=CAP_BPF net_admin'), 'u')).toThrow('u:7: CapabilityBoundingSet= names "net_admin", not a capability');
  });
});
