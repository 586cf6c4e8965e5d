import ipaddr from 'ipaddr.js';

type Address = ipaddr.IPv4 | ipaddr.IPv6;

/** One allow_from rule, normalized: IPv4-mapped IPv6 rules become IPv4 rules. */
export interface AllowRule {
  readonly text: string;
  readonly address: Address;
  readonly bits: number;
}

export type RuleResult = { ok: true; rule: AllowRule } | { ok: false; message: string };

function strictParse(text: string): Address | null {
  // ipaddr.js also accepts "10", "0x0a.1" and other inet_aton forms; an allow list must not.
  if (ipaddr.IPv4.isValidFourPartDecimal(text)) return ipaddr.IPv4.parse(text);
  if (ipaddr.IPv6.isValid(text) && text.includes(':')) return ipaddr.IPv6.parse(text);
  return null;
}

/** Parses "192.0.2.7", "10.0.0.0/8", "2001:db8::/32" or "::ffff:10.0.0.0/104". */
export function parseAllowRule(text: string): RuleResult {
  const slash = text.indexOf('/');
  const addrText = slash === -1 ? text : text.slice(0, slash);
  const address = strictParse(addrText);
  if (address === null) return { ok: false, message: `"${text}" is not an IP address or CIDR` };
  const max = address.kind() === 'ipv4' ? 32 : 128;
  let bits = max;
  if (slash !== -1) {
    const bitsText = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(bitsText) || Number(bitsText) > max) {
      return { ok: false, message: `"${text}": prefix length must be 0..${max}` };
    }
    bits = Number(bitsText);
  }
  const network = networkOf(address, bits);
  if (network.toString() !== address.toString()) {
    return {
      ok: false,
      message: `"${text}" has host bits set; did you mean "${network.toString()}/${bits}"?`,
    };
  }
  if (address.kind() === 'ipv6' && (address as ipaddr.IPv6).isIPv4MappedAddress() && bits >= 96) {
    return { ok: true, rule: { text, address: (address as ipaddr.IPv6).toIPv4Address(), bits: bits - 96 } };
  }
  return { ok: true, rule: { text, address, bits } };
}

function networkOf(address: Address, bits: number): Address {
  const bytes = address.toByteArray();
  for (let i = 0; i < bytes.length; i++) {
    const keep = Math.max(0, Math.min(8, bits - i * 8));
    bytes[i] = (bytes[i] ?? 0) & ((0xff << (8 - keep)) & 0xff);
  }
  return ipaddr.fromByteArray(bytes);
}

/** Matches peer addresses (as Node reports them, IPv4-mapped or not) against the rules. */
export class AllowList {
  readonly #rules: readonly AllowRule[];

  constructor(rules: readonly AllowRule[]) {
    this.#rules = rules;
  }

  get rules(): readonly AllowRule[] {
    return this.#rules;
  }

  allows(peer: string | undefined): boolean {
    if (peer === undefined) return false;
    // asked on every accepted connection, and the same MTAs connect again and again: ipaddr's
    // parse (a cascade of regexes) and the match once per address (the rules never change)
    let ok = this.#seen.get(peer);
    if (ok === undefined) {
      ok = this.#match(peer);
      if (this.#seen.size >= 4096) this.#seen.clear(); // bounded: peers are whoever connects
      this.#seen.set(peer, ok);
    }
    return ok;
  }

  readonly #seen = new Map<string, boolean>();

  #match(peer: string): boolean {
    if (!ipaddr.isValid(peer)) return false;
    const address = ipaddr.process(peer); // "::ffff:192.0.2.1" -> IPv4 192.0.2.1
    for (const rule of this.#rules) {
      if (rule.address.kind() === address.kind() && address.match(rule.address, rule.bits)) return true;
    }
    return false;
  }
}
