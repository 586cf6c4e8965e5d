// Syntax shared by the control-session codec, the CONNECT parser and the config. Pure.
import ipaddr from 'ipaddr.js';

export const THROTTLE_KEY = /^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$/;

/**
 * An IPv6 address, or an IPv4 address written as four decimal numbers: "127.2", "0x7f.1" and
 * "0177.0.0.1" are what inet_aton reads as addresses, not what an operator means.
 */
export function isCanonicalIp(text: string): boolean {
  return text.includes(':') ? ipaddr.IPv6.isValid(text) : ipaddr.IPv4.isValidFourPartDecimal(text);
}
