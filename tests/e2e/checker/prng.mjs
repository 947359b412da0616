// The checker's only source of randomness: a small seeded PRNG (mulberry32)
// with named sub-streams, so that each actor (a client's program, an
// ingester's batches, the fault schedule) draws from its own stream and the
// same seed gives the same programs, batches and schedule whatever the
// interleaving of the actors. Never Math.random.

/** 32-bit FNV-1a of a string, mixed with a 32-bit seed. */
export function hash32(str, seed = 0x811c9dc5) {
  let h = (seed ^ 0x811c9dc5) >>> 0;
  for (let i = 0; i < str.length; i++) {
    h ^= str.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  // final avalanche (murmur3 fmix32)
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b) >>> 0;
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35) >>> 0;
  h ^= h >>> 16;
  return h >>> 0;
}

const B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
const HEX = "0123456789abcdef";

export class Rng {
  /** @param {number} seed a 32-bit unsigned integer */
  constructor(seed) {
    this.seed = seed >>> 0;
    this.state = this.seed;
  }

  /** A float in [0, 1). */
  next() {
    // mulberry32
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [lo, hi] (inclusive). */
  int(lo, hi) {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  /** True with probability p. */
  chance(p) {
    return this.next() < p;
  }

  pick(arr) {
    if (arr.length === 0) throw new Error("Rng.pick from an empty array");
    return arr[Math.floor(this.next() * arr.length)];
  }

  /** Picks a key of `weights` ({name: weight}) with probability proportional to its weight. */
  weighted(weights) {
    const entries = Object.entries(weights).filter(([, w]) => w > 0);
    const total = entries.reduce((s, [, w]) => s + w, 0);
    let x = this.next() * total;
    for (const [k, w] of entries) {
      x -= w;
      if (x < 0) return k;
    }
    return entries[entries.length - 1][0];
  }

  /** A shuffled copy of `arr` (Fisher-Yates). */
  shuffle(arr) {
    const a = [...arr];
    for (let i = a.length - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1));
      [a[i], a[j]] = [a[j], a[i]];
    }
    return a;
  }

  /** `k` distinct elements of `arr`, in random order. */
  sample(arr, k) {
    return this.shuffle(arr).slice(0, Math.min(k, arr.length));
  }

  /** A base58 string of length n (looks like a Solana signature for n = 87/88). */
  base58(n) {
    let s = "";
    for (let i = 0; i < n; i++) s += B58[Math.floor(this.next() * 58)];
    return s;
  }

  hex(n) {
    let s = "";
    for (let i = 0; i < n; i++) s += HEX[Math.floor(this.next() * 16)];
    return s;
  }

  /** An independent stream named `label`, derived from this stream's seed (not its position). */
  fork(label) {
    return new Rng(hash32(String(label), this.seed));
  }
}
