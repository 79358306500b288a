// batond's registration nonces (docs/protocol.md, "Control socket"). Anyone on the node may ask
// for one (challenge-request carries no proof), so handing one out must cost batond no memory: if
// it kept a table of issued nonces, an unprivileged process asking in a loop would push out the
// nonces real applications are about to use, and no application could register. Instead a nonce
// carries its own proof — its expiry, random bytes, and a MAC under a key only this process holds
// over both and the address it was issued to — and batond remembers a nonce only once it has been
// used, by a register with a valid tag (a holder of the secret), until it expires: a recorded
// register replayed later finds its nonce used, or expired, or issued to someone else.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { performance } from 'node:perf_hooks';

/** How long a nonce may be used after it was issued; the SDK registers within milliseconds. */
const CHALLENGE_TTL_MS = 5000;
/** Used nonces remembered at most (each needs a tagged register within CHALLENGE_TTL_MS). */
const MAX_USED_NONCES = 4096;

const EXPIRY_BYTES = 6;
const RANDOM_BYTES = 10;
const SIGNED_BYTES = EXPIRY_BYTES + RANDOM_BYTES;
const MAC_BYTES = 16;

export type NonceRefusal = 'bad-nonce' | 'stale-nonce' | 'replay' | 'full';

export class Challenges {
  private readonly key = randomBytes(32);
  private readonly used = new Map<string, number>();

  constructor(
    private readonly ttlMs = CHALLENGE_TTL_MS,
    private readonly maxUsed = MAX_USED_NONCES,
  ) {}

  /** A fresh nonce for whoever sent from `to`, as 64 hex digits. */
  issue(to: { address: string; port: number }): string {
    const signed = Buffer.alloc(SIGNED_BYTES);
    // The process's monotonic clock: the key dies with the process, so a wall-clock jump cannot
    // stretch or cut a nonce's life.
    signed.writeUIntBE(Math.ceil(performance.now() + this.ttlMs), 0, EXPIRY_BYTES);
    randomBytes(RANDOM_BYTES).copy(signed, EXPIRY_BYTES);
    return Buffer.concat([signed, this.mac(signed, to)]).toString('hex');
  }

  /**
   * Takes a nonce back from a register that came from `from`: undefined if it is this process's,
   * issued to that address, unexpired and unused (it is then used); otherwise why not.
   */
  redeem(nonce: string, from: { address: string; port: number }): NonceRefusal | undefined {
    const bytes = Buffer.from(nonce, 'hex');
    if (bytes.length !== SIGNED_BYTES + MAC_BYTES) return 'bad-nonce';
    const signed = bytes.subarray(0, SIGNED_BYTES);
    if (!timingSafeEqual(bytes.subarray(SIGNED_BYTES), this.mac(signed, from))) return 'bad-nonce';
    const expiry = signed.readUIntBE(0, EXPIRY_BYTES);
    if (performance.now() > expiry) return 'stale-nonce';
    if (this.used.has(nonce)) return 'replay';
    if (this.used.size >= this.maxUsed) this.sweep();
    if (this.used.size >= this.maxUsed) return 'full';
    this.used.set(nonce, expiry);
    return undefined;
  }

  /** Forgets used nonces that have expired: redeem refuses them as stale anyway. */
  sweep(): void {
    const now = performance.now();
    for (const [nonce, expiry] of this.used) if (now > expiry) this.used.delete(nonce);
  }

  private mac(signed: Buffer, to: { address: string; port: number }): Buffer {
    return createHmac('sha256', this.key).update(signed).update(`${to.address}:${to.port}`).digest().subarray(0, MAC_BYTES);
  }
}
