import { inspect } from 'node:util';

export const MIN_SECRET_LENGTH = 32;

/**
 * The shared secret. It has no string form: logging, JSON-encoding or inspecting it shows
 * "[secret]", so a careless log line or error message cannot leak it.
 */
export class SharedSecret {
  readonly #key: Buffer;

  constructor(value: string) {
    this.#key = Buffer.from(value, 'utf8');
  }

  /** The HMAC key. Only protocol/handshake.ts should need this. */
  key(): Buffer {
    return this.#key;
  }

  equals(other: SharedSecret): boolean {
    return this.#key.equals(other.#key);
  }

  toString(): string {
    return '[secret]';
  }

  toJSON(): string {
    return '[secret]';
  }

  [inspect.custom](): string {
    return '[secret]';
  }
}
