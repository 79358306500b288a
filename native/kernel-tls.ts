// Whether this kernel has kernel TLS (the "tls" upper-layer protocol, CONFIG_TLS): what a node
// must have to take over a TLS connection's session with its socket. Read, not tried: the ULP is
// listed in /proc/sys/net/ipv4/tcp_available_ulp once registered (built in, or its module loaded),
// and a module the kernel would load on first use is named in modules.dep or modules.builtin.
import fs from 'node:fs';
import os from 'node:os';

export interface KernelTls {
  available: boolean;
  /** How that was found: for an operator reading an error. */
  how: string;
}

export function kernelTls(root = '/'): KernelTls {
  const read = (file: string) => {
    try {
      return fs.readFileSync(`${root}${file}`, 'utf8');
    } catch {
      return '';
    }
  };
  if (read('proc/sys/net/ipv4/tcp_available_ulp').split(/\s+/).includes('tls')) return { available: true, how: 'the tls ULP is registered' };
  const modules = `lib/modules/${os.release()}`;
  // Distributions may compress modules (tls.ko.xz, tls.ko.zst).
  if (/(^|\/)net\/tls\/tls\.ko(\.\w+)?(:|$)/m.test(`${read(`${modules}/modules.dep`)}\n${read(`${modules}/modules.builtin`)}`)) return { available: true, how: 'the tls module is installed' };
  return { available: false, how: `kernel ${os.release()} has no kernel TLS (CONFIG_TLS): no tls ULP registered, no tls module` };
}
