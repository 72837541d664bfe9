// numpy.random.default_rng(seed) in JavaScript: SeedSequence (numpy/random/bit_generator.pyx) feeding
// PCG64 (the 128-bit LCG with the XSL-RR output), and Generator.random() = (next_uint64 >> 11) * 2**-53.
// Seeded sampling draws one random() per decoding step per image, as runtime/decoding.py does.

const MASK32 = 0xffffffffn;
const MASK64 = (1n << 64n) - 1n;
const MASK128 = (1n << 128n) - 1n;
const INIT_A = 0x43b0d7e5;
const MULT_A = 0x931e8875;
const INIT_B = 0x8b51f9dd;
const MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd;
const MIX_MULT_R = 0x4973f715;
const XSHIFT = 16;
const POOL_SIZE = 4;
const PCG_MULT = (0x2360ed051fc65da4n << 64n) | 0x4385df649fccf645n;

/** @param {number} a @param {number} b uint32 product mod 2**32 */
const mul32 = (a, b) => Math.imul(a, b) >>> 0;

/** A non-negative integer (number or BigInt) -> its uint32 words, least significant first ([0] for 0). */
export function intToUint32Array(n) {
  let v = BigInt(n);
  if (v < 0n) throw new RangeError('expected a non-negative integer');
  const words = [];
  if (v === 0n) words.push(0);
  while (v > 0n) {
    words.push(Number(v & MASK32));
    v >>= 32n;
  }
  return words;
}

/** numpy's SeedSequence(entropy) (no spawn key, pool size 4): the pool, and generate_state. */
export class SeedSequence {
  /** @param {number|bigint} entropy */
  constructor(entropy) {
    const entropyArray = intToUint32Array(entropy);
    const hashConst = [INIT_A];
    const hashmix = (value) => {
      value = (value ^ hashConst[0]) >>> 0;
      hashConst[0] = mul32(hashConst[0], MULT_A);
      value = mul32(value, hashConst[0]);
      return (value ^ (value >>> XSHIFT)) >>> 0;
    };
    const mix = (x, y) => {
      const result = (mul32(MIX_MULT_L, x) - mul32(MIX_MULT_R, y)) >>> 0;
      return (result ^ (result >>> XSHIFT)) >>> 0;
    };
    const pool = new Array(POOL_SIZE);
    for (let i = 0; i < POOL_SIZE; i++) pool[i] = hashmix(i < entropyArray.length ? entropyArray[i] : 0);
    for (let src = 0; src < POOL_SIZE; src++) {
      for (let dst = 0; dst < POOL_SIZE; dst++) {
        if (src !== dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
      }
    }
    for (let src = POOL_SIZE; src < entropyArray.length; src++) {
      for (let dst = 0; dst < POOL_SIZE; dst++) pool[dst] = mix(pool[dst], hashmix(entropyArray[src]));
    }
    /** @type {number[]} */
    this.pool = pool;
  }

  /** generate_state(n, uint64): n 64-bit words as BigInt (pairs of uint32 words, little-endian). */
  generateState64(n) {
    let hashConst = INIT_B;
    const words = [];
    for (let i = 0; i < 2 * n; i++) {
      let value = this.pool[i % POOL_SIZE];
      value = (value ^ hashConst) >>> 0;
      hashConst = mul32(hashConst, MULT_B);
      value = mul32(value, hashConst);
      words.push((value ^ (value >>> XSHIFT)) >>> 0);
    }
    const out = [];
    for (let i = 0; i < n; i++) out.push(BigInt(words[2 * i]) | (BigInt(words[2 * i + 1]) << 32n));
    return out;
  }
}

/** numpy's PCG64 bit generator (pcg_setseq_128_xsl_rr_64). */
export class PCG64 {
  /** @param {SeedSequence} seedSequence */
  constructor(seedSequence) {
    const [s0, s1, i0, i1] = seedSequence.generateState64(4);
    const initState = (s0 << 64n) | s1;
    const initSeq = (i0 << 64n) | i1;
    this.inc = ((initSeq << 1n) | 1n) & MASK128;
    this.state = 0n;
    this.step();
    this.state = (this.state + initState) & MASK128;
    this.step();
  }

  step() {
    this.state = (this.state * PCG_MULT + this.inc) & MASK128;
  }

  /** The next uint64, as BigInt. */
  nextUint64() {
    this.step();
    const s = this.state;
    const xored = ((s >> 64n) ^ s) & MASK64;
    const rot = s >> 122n;
    return ((xored >> rot) | (xored << ((64n - rot) & 63n))) & MASK64;
  }
}

/** numpy.random.default_rng(seed): a Generator with random() only. */
export class Generator {
  /** @param {number|bigint} seed a non-negative integer */
  constructor(seed) {
    this.bitGenerator = new PCG64(new SeedSequence(seed));
  }

  /** A uniform double in [0, 1): (next_uint64 >> 11) * 2**-53. */
  random() {
    return Number(this.bitGenerator.nextUint64() >> 11n) * (1.0 / 9007199254740992.0);
  }
}

/** @param {number|bigint} seed */
export function defaultRng(seed) {
  return new Generator(seed);
}
