import { readFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import ipaddr from 'ipaddr.js';
import { parseConfig, type ConfigResult } from './parse.js';

/**
 * Is `ip` an address of this host? Exact match with an interface address, or inside a loopback
 * interface's prefix (Linux answers for all of 127.0.0.0/8 on lo, which tests use as 127.0.0.2…).
 */
export function isLocalAddress(ip: string): boolean {
  if (!ipaddr.isValid(ip)) return false;
  const wanted = ipaddr.process(ip);
  let interfaces: ReturnType<typeof networkInterfaces>;
  try {
    interfaces = networkInterfaces();
  } catch (err) {
    // getifaddrs(3) needs a netlink socket: a systemd unit whose RestrictAddressFamilies= lacks
    // AF_NETLINK gets EAFNOSUPPORT (libuv: "Unknown system error 97")
    const code = (err as NodeJS.ErrnoException).code ?? '';
    const hint = /97|EAFNOSUPPORT/.test(`${code} ${(err as Error).message}`) ? ' (no netlink socket: a systemd unit needs AF_NETLINK in RestrictAddressFamilies=)' : '';
    throw new Error(`the host's addresses cannot be listed: ${(err as Error).message}${hint}`);
  }
  for (const addresses of Object.values(interfaces)) {
    for (const a of addresses ?? []) {
      const local = ipaddr.process(a.address);
      if (local.kind() !== wanted.kind()) continue;
      if (local.toString() === wanted.toString()) return true;
      if (a.internal && a.cidr !== null && wanted.match(ipaddr.parseCIDR(a.cidr))) return true;
    }
  }
  return false;
}

/** Reads and validates a config file. Never throws: an unreadable file, or addresses that cannot be listed, are ConfigErrors too. */
export function loadConfigFile(file: string): ConfigResult {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message;
    return { ok: false, errors: [{ file, line: 0, column: 0, key: '', message: `cannot read config: ${reason}` }] };
  }
  const readFile = (path: string): string => readFileSync(path, 'utf8');
  return parseConfig(text, file, { readSecretFile: readFile, readTlsFile: readFile, isLocalAddress });
}
