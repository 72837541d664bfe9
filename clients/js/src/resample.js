// Pillow's Image.resize(size, filter) of an 8-bit RGB image in JavaScript: libImaging/Resample.c's
// separable two-pass resampling (ImagingResample: the horizontal pass, then the vertical one), whose filter
// support scales with the downscale factor, with 22-bit fixed-point coefficients (precompute_coeffs,
// normalize_coeffs_8bpc) and 8-bit rounding between the passes; NEAREST is Pillow's affine sampling of
// pixel centres. Checked bit for bit against Pillow (test/fixtures/pillow_resize.json, written by
// tests/test_js_parity.py).

/**
 * @typedef {object} RgbImage
 * @property {number} width
 * @property {number} height
 * @property {Uint8Array} data interleaved RGB, width * height * 3
 */

/** @typedef {{support: number, filter: (x: number) => number}} Filter */
/** @typedef {{ksize: number, bounds: Int32Array, kk: Int32Array}} Coefficients */

const PRECISION_BITS = 32 - 8 - 2;

/** @param {number} x */
function bilinearFilter(x) {
  x = Math.abs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

/** bicubic_filter with a = -0.5. @param {number} x */
function bicubicFilter(x) {
  const a = -0.5;
  x = Math.abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

/** @param {number} x */
function sincFilter(x) {
  return x === 0.0 ? 1.0 : Math.sin(x * Math.PI) / (x * Math.PI);
}

/** @param {number} x */
function lanczosFilter(x) {
  return -3.0 <= x && x < 3.0 ? sincFilter(x) * sincFilter(x / 3) : 0.0;
}

/** @type {Record<string, Filter>} */
const FILTERS = {
  bilinear: { support: 1.0, filter: bilinearFilter },
  bicubic: { support: 2.0, filter: bicubicFilter },
  lanczos: { support: 3.0, filter: lanczosFilter },
};

/**
 * precompute_coeffs + normalize_coeffs_8bpc: each output pixel's first input pixel and count (bounds),
 * and its integer coefficients (kk, ksize per output pixel), for one axis.
 * @param {number} inSize @param {number} outSize @param {Filter} filter @returns {Coefficients}
 */
export function precomputeCoeffs(inSize, outSize, { support: filterSupport, filter }) {
  const scale = inSize / outSize;
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = filterSupport * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      k[x] = filter((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (let x = 0; x < ksize; x++) {
      let v = x < xmax ? k[x] : 0;
      if (x < xmax && ww !== 0.0) v /= ww;
      kk[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS)) : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

/** @param {number} v a fixed-point sum -> an 8-bit value */
function clip8(v) {
  const i = v >> PRECISION_BITS;
  return i < 0 ? 0 : i > 255 ? 255 : i;
}

/**
 * The three channels' fixed-point sums of ``count`` pixels from ``first``, ``step`` bytes apart, weighed by
 * kk[offset..], written as 8-bit values at out[at..].
 * @param {Uint8Array} src @param {number} first @param {number} step @param {number} count
 * @param {Int32Array} kk @param {number} offset @param {Uint8Array} out @param {number} at
 */
function convolve(src, first, step, count, kk, offset, out, at) {
  let s0 = 1 << (PRECISION_BITS - 1);
  let s1 = s0;
  let s2 = s0;
  for (let i = 0; i < count; i++) {
    const w = kk[offset + i];
    const p = first + i * step;
    s0 += src[p] * w;
    s1 += src[p + 1] * w;
    s2 += src[p + 2] * w;
  }
  out[at] = clip8(s0);
  out[at + 1] = clip8(s1);
  out[at + 2] = clip8(s2);
}

/** ImagingResampleHorizontal_8bpc. @param {RgbImage} img @param {number} width @param {Coefficients} c @returns {RgbImage} */
export function resampleHorizontal(img, width, { ksize, bounds, kk }) {
  const out = new Uint8Array(width * img.height * 3);
  for (let y = 0; y < img.height; y++) {
    for (let xx = 0; xx < width; xx++) {
      const first = (y * img.width + bounds[xx * 2]) * 3;
      convolve(img.data, first, 3, bounds[xx * 2 + 1], kk, xx * ksize, out, (y * width + xx) * 3);
    }
  }
  return { width, height: img.height, data: out };
}

/** ImagingResampleVertical_8bpc. @param {RgbImage} img @param {number} height @param {Coefficients} c @returns {RgbImage} */
export function resampleVertical(img, height, { ksize, bounds, kk }) {
  const out = new Uint8Array(img.width * height * 3);
  const stride = img.width * 3;
  for (let yy = 0; yy < height; yy++) {
    for (let x = 0; x < img.width; x++) {
      const first = bounds[yy * 2] * stride + x * 3;
      convolve(img.data, first, stride, bounds[yy * 2 + 1], kk, yy * ksize, out, (yy * img.width + x) * 3);
    }
  }
  return { width: img.width, height, data: out };
}

/** Pillow's NEAREST resize (an affine transform sampling pixel centres). @param {RgbImage} img @returns {RgbImage} */
function resizeNearest(img, width, height) {
  const out = new Uint8Array(width * height * 3);
  const sx = img.width / width;
  const sy = img.height / height;
  for (let y = 0; y < height; y++) {
    const yin = Math.min(img.height - 1, Math.floor((y + 0.5) * sy));
    for (let x = 0; x < width; x++) {
      const xin = Math.min(img.width - 1, Math.floor((x + 0.5) * sx));
      out.set(img.data.subarray((yin * img.width + xin) * 3, (yin * img.width + xin) * 3 + 3), (y * width + x) * 3);
    }
  }
  return { width, height, data: out };
}

/**
 * Image.resize((width, height), filter) of an RGB image: ImagingResample's horizontal pass where the width
 * changes, then its vertical pass where the height does.
 * @param {RgbImage} img @param {number} width @param {number} height
 * @param {string} [interpolation] nearest | bilinear | bicubic | lanczos
 * @returns {RgbImage}
 */
export function resize(img, width, height, interpolation = 'bilinear') {
  if (interpolation === 'nearest') return resizeNearest(img, width, height);
  const filter = FILTERS[interpolation];
  let out = img;
  if (width !== out.width) out = resampleHorizontal(out, width, precomputeCoeffs(out.width, width, filter));
  if (height !== out.height) out = resampleVertical(out, height, precomputeCoeffs(out.height, height, filter));
  return out;
}
