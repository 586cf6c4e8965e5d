// PROXY protocol version 2 header decoder, pure (HAProxy's proxy-protocol.txt §2.2): bytes in,
// "incomplete", "invalid" with a stable code, or a decoded header out. The shell
// (src/server/proxy-v2.ts) buffers, times out and decides; this module only reads bytes.
// See docs/proxy-v2.md.
import ipaddr from 'ipaddr.js';

/** The 12-byte signature every v2 header starts with. */
export const SIGNATURE: Readonly<Buffer> = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** signature, ver_cmd, fam, 2-byte length */
export const FIXED_BYTES = 16;
/** Most TLV bytes accepted after the addresses (a sender needs none for egress). */
export const MAX_TLV_BYTES = 1024;
const ADDRESS_BYTES = { unspec: 0, inet: 12, inet6: 36, unix: 216 } as const;
/** The largest header accepted: a UNIX address block plus MAX_TLV_BYTES. */
export const MAX_HEADER_BYTES = FIXED_BYTES + ADDRESS_BYTES.unix + MAX_TLV_BYTES;

export const PP2_TYPE_CRC32C = 0x03;
const V1_PREFIX = Buffer.from('PROXY ', 'latin1');

export type Command = 'local' | 'proxy';
export type Family = keyof typeof ADDRESS_BYTES;
export type Transport = 'unspec' | 'stream' | 'dgram';

export interface Endpoint {
  /** dotted quad or RFC 5952 IPv6 text, exactly as sent (IPv4-mapped IPv6 stays IPv6 here) */
  readonly address: string;
  readonly port: number;
}

export interface Tlv {
  readonly type: number;
  /** a view into the decoded buffer, not a copy */
  readonly value: Uint8Array;
}

export interface ProxyV2Header {
  readonly command: Command;
  readonly family: Family;
  readonly transport: Transport;
  /** for inet and inet6; null for unspec and unix (not decoded) */
  readonly source: Endpoint | null;
  readonly destination: Endpoint | null;
  readonly tlvs: readonly Tlv[];
  /** bytes the header takes, 16 + its length field; what follows is the client's data */
  readonly length: number;
}

/** Stable codes of an invalid header, for logs and tests. */
export type ProxyV2ErrorCode =
  | 'not_proxy_v2' // does not start with the v2 signature
  | 'proxy_v1' // a text "PROXY TCP4 ..." header
  | 'bad_version' // version nibble is not 2
  | 'bad_command' // command nibble is neither LOCAL nor PROXY
  | 'bad_family' // family/transport byte not one the spec defines
  | 'short_address' // length field smaller than the family's address block
  | 'too_long' // length field above the address block + MAX_TLV_BYTES
  | 'bad_tlv' // a TLV runs past the end of the header, or a CRC32C TLV is not 4 bytes
  | 'bad_crc32c'; // the CRC32C TLV does not match the header

export type DecodeResult =
  | { readonly status: 'incomplete' }
  | { readonly status: 'invalid'; readonly code: ProxyV2ErrorCode; readonly message: string }
  | { readonly status: 'ok'; readonly header: ProxyV2Header };

const INCOMPLETE: DecodeResult = { status: 'incomplete' };
const invalid = (code: ProxyV2ErrorCode, message: string): DecodeResult => ({ status: 'invalid', code, message });

const FAMILIES: Readonly<Record<number, readonly [Family, Transport]>> = {
  0x00: ['unspec', 'unspec'],
  0x11: ['inet', 'stream'],
  0x12: ['inet', 'dgram'],
  0x21: ['inet6', 'stream'],
  0x22: ['inet6', 'dgram'],
  0x31: ['unix', 'stream'],
  0x32: ['unix', 'dgram'],
};

/** Up to 24 bytes as a quoted string with \xNN escapes, for log lines about garbage. */
export function preview(bytes: Uint8Array, max = 24): string {
  let text = '';
  for (const b of bytes.subarray(0, max)) {
    if (b === 0x0d) text += '\\r';
    else if (b === 0x0a) text += '\\n';
    else if (b >= 0x20 && b < 0x7f && b !== 0x22 && b !== 0x5c) text += String.fromCharCode(b);
    else text += `\\x${b.toString(16).padStart(2, '0')}`;
  }
  return `"${text}"${bytes.length > max ? '...' : ''}`;
}

function startsWith(bytes: Uint8Array, prefix: Uint8Array): boolean {
  const n = Math.min(bytes.length, prefix.length);
  for (let i = 0; i < n; i++) if (bytes[i] !== prefix[i]) return false;
  return true;
}

function notV2(bytes: Uint8Array): DecodeResult {
  if (startsWith(bytes, V1_PREFIX)) {
    if (bytes.length < V1_PREFIX.length) return INCOMPLETE; // "PROX" may still become a v1 header: say so then
    const end = bytes.indexOf(0x0a);
    const line = bytes.subarray(0, end === -1 ? Math.min(bytes.length, 107) : end);
    return invalid('proxy_v1', `PROXY protocol v1 (text) header ${preview(line, 60)}; only v2 (binary) is accepted: configure the sender for v2 (HAProxy: send-proxy-v2)`);
  }
  return invalid('not_proxy_v2', `not a PROXY protocol v2 header: starts with ${preview(bytes)}`);
}

function ipv4(b: Uint8Array, at: number): string {
  return `${b[at]}.${b[at + 1]}.${b[at + 2]}.${b[at + 3]}`;
}

function ipv6(b: Uint8Array, at: number): string {
  return ipaddr.fromByteArray(Array.from(b.subarray(at, at + 16))).toString();
}

const u16 = (b: Uint8Array, at: number): number => ((b[at] as number) << 8) | (b[at + 1] as number);

/**
 * Decodes the header at the start of `bytes`. "incomplete" means: wait for more bytes (a decided
 * "invalid" is returned as soon as the bytes so far prove it, e.g. at the first byte of garbage).
 * Bytes after `header.length` belong to the client's stream.
 */
export function decodeProxyV2(bytes: Uint8Array): DecodeResult {
  if (!startsWith(bytes, SIGNATURE)) return notV2(bytes);
  if (bytes.length < FIXED_BYTES) return INCOMPLETE;
  const verCmd = bytes[12] as number;
  const fam = bytes[13] as number;
  const len = u16(bytes, 14);
  if (verCmd >> 4 !== 2) return invalid('bad_version', `version ${verCmd >> 4} in byte 13 (0x${verCmd.toString(16).padStart(2, '0')}); only version 2 exists`);
  const cmd = verCmd & 0x0f;
  if (cmd > 1) return invalid('bad_command', `command 0x${cmd.toString(16)} is neither LOCAL (0x0) nor PROXY (0x1)`);
  const kind = FAMILIES[fam];
  if (kind === undefined) return invalid('bad_family', `family/transport byte 0x${fam.toString(16).padStart(2, '0')} is not defined by the protocol`);
  const [family, transport] = kind;
  const addressBytes = ADDRESS_BYTES[family];
  if (len < addressBytes) return invalid('short_address', `length ${len} is shorter than the ${family} address block (${addressBytes} bytes)`);
  if (len > addressBytes + MAX_TLV_BYTES) return invalid('too_long', `length ${len} exceeds the ${addressBytes}-byte ${family} address block + ${MAX_TLV_BYTES} bytes of TLVs`);
  const length = FIXED_BYTES + len;
  if (bytes.length < length) return INCOMPLETE;

  let source: Endpoint | null = null;
  let destination: Endpoint | null = null;
  const a = FIXED_BYTES;
  if (family === 'inet') {
    source = { address: ipv4(bytes, a), port: u16(bytes, a + 8) };
    destination = { address: ipv4(bytes, a + 4), port: u16(bytes, a + 10) };
  } else if (family === 'inet6') {
    source = { address: ipv6(bytes, a), port: u16(bytes, a + 32) };
    destination = { address: ipv6(bytes, a + 16), port: u16(bytes, a + 34) };
  }

  // an UNSPEC block is opaque ("ignore address information"): no TLVs are read from it
  const tlvs: Tlv[] = [];
  let at = family === 'unspec' ? length : a + addressBytes;
  let crcAt = -1;
  while (at < length) {
    if (at + 3 > length) return invalid('bad_tlv', `${length - at} stray byte(s) after the last TLV`);
    const type = bytes[at] as number;
    const size = u16(bytes, at + 1);
    if (at + 3 + size > length) return invalid('bad_tlv', `TLV 0x${type.toString(16).padStart(2, '0')} of ${size} bytes runs past the end of the header`);
    if (type === PP2_TYPE_CRC32C) {
      if (size !== 4) return invalid('bad_tlv', `CRC32C TLV has ${size} bytes, not 4`);
      crcAt = at + 3;
    }
    tlvs.push({ type, value: bytes.subarray(at + 3, at + 3 + size) });
    at += 3 + size;
  }
  if (crcAt !== -1) {
    const header = Uint8Array.from(bytes.subarray(0, length));
    const sent = ((header[crcAt] as number) << 24 | (header[crcAt + 1] as number) << 16 | (header[crcAt + 2] as number) << 8 | (header[crcAt + 3] as number)) >>> 0;
    header.fill(0, crcAt, crcAt + 4);
    const computed = crc32c(header);
    if (computed !== sent) return invalid('bad_crc32c', `CRC32C TLV is 0x${sent.toString(16).padStart(8, '0')}, the header's checksum is 0x${computed.toString(16).padStart(8, '0')}`);
  }
  return { status: 'ok', header: { command: cmd === 0 ? 'local' : 'proxy', family, transport, source, destination, tlvs, length } };
}

let CRC32C_TABLE: Uint32Array | null = null;

/** CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as PP2_TYPE_CRC32C uses. */
export function crc32c(bytes: Uint8Array): number {
  if (CRC32C_TABLE === null) {
    CRC32C_TABLE = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
      CRC32C_TABLE[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (const b of bytes) crc = (CRC32C_TABLE[(crc ^ b) & 0xff] as number) ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** What an egress delivery needs from a header: the source IP, and the destination. */
export interface ProxyV2Target {
  readonly sourceIp: string;
  readonly host: string;
  readonly port: number;
}

/**
 * The egress request a decoded header stands for, or why it names none. Only PROXY over TCP
 * (IPv4 or IPv6) does; IPv4-mapped IPv6 addresses become IPv4. The source port is ignored.
 */
export function proxyV2Target(h: ProxyV2Header): ProxyV2Target | { readonly code: string; readonly message: string } {
  if (h.command === 'local') {
    return { code: 'local_command', message: 'LOCAL command (a health check?) names no egress source or destination; send the PROXY command' };
  }
  if (h.source === null || h.destination === null || h.transport !== 'stream') {
    const what = h.family === 'unspec' ? 'UNSPEC family' : `${h.family === 'unix' ? 'UNIX' : h.family === 'inet' ? 'IPv4' : 'IPv6'} ${h.transport === 'dgram' ? 'datagram' : h.transport === 'stream' ? 'stream' : 'unspecified'}`;
    return { code: 'unsupported_family', message: `${what} header: only TCP over IPv4 (0x11) or IPv6 (0x21) names an egress source and destination` };
  }
  if (h.destination.port === 0) return { code: 'bad_port', message: `destination port 0 (${h.destination.address}:0)` };
  // decoded IPv4 addresses are canonical already (ipv4() above); IPv6 ones may be IPv4-mapped
  const canonical = (address: string): string => (h.family === 'inet' ? address : ipaddr.process(address).toString());
  return { sourceIp: canonical(h.source.address), host: canonical(h.destination.address), port: h.destination.port };
}
