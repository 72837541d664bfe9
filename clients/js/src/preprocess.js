// The preprocessing of runtime/image_files.py and runtime/preprocess.py on decoded pixels: EXIF
// orientation, alpha onto white (Pillow's alpha_composite arithmetic), resize of the shorter side with
// Pillow's two-pass separable resampling (libImaging/Resample.c: the filter's support scales with the
// downscale factor, 22-bit fixed-point coefficients, 8-bit rounding between the passes), centre crop
// (padding with black) and mean/std in float32. Decoding the file is the platform's part (node.js, browser.js).

import { DEFAULT_LIMITS, ImageError, LimitError, formatG } from './errors.js';

/**
 * @typedef {object} RgbImage
 * @property {number} width
 * @property {number} height
 * @property {Uint8Array} data interleaved RGB, width * height * 3
 */

/**
 * @typedef {object} PreprocessSpec
 * @property {number} resize shorter side after resizing
 * @property {number} crop side of the centre crop
 * @property {number[]} mean per channel, on [0, 1] pixels
 * @property {number[]} std
 * @property {string} interpolation nearest | bilinear | bicubic | lanczos
 */

const fmt = (n) => n.toLocaleString('en-US');

/** check_image_size: empty, too many pixels, too long. @param {string} name */
export function checkImageSize(name, width, height, limits = DEFAULT_LIMITS) {
  if (width < 1 || height < 1) throw new ImageError(`${name}: empty image (${width}x${height} pixels)`);
  const pixels = width * height;
  if (pixels > limits.max_image_pixels) {
    throw new LimitError(`${name}: ${width}x${height} is ${fmt(pixels)} pixels, over the limit of ` +
      `${fmt(limits.max_image_pixels)} (Limits.max_image_pixels; raise it to allow more)`);
  }
  const ratio = Math.max(width, height) / Math.max(Math.min(width, height), 1);
  if (ratio > limits.max_aspect_ratio) {
    throw new LimitError(`${name}: ${width}x${height} has an aspect ratio of ${ratio.toFixed(1)}:1, over the limit of ` +
      `${formatG(limits.max_aspect_ratio)}:1 (Limits.max_aspect_ratio; raise it to allow more)`);
  }
}

// --- EXIF orientation -----------------------------------------------------------------------------

/** The Orientation tag (0x0112) of a TIFF block (an EXIF payload), or 1. @param {Uint8Array} b */
export function tiffOrientation(b, start = 0) {
  try {
    const view = new DataView(b.buffer, b.byteOffset + start, b.length - start);
    const order = view.getUint16(0);
    const little = order === 0x4949;
    if (!little && order !== 0x4d4d) return 1;
    if (view.getUint16(2, little) !== 42) return 1;
    const ifd = view.getUint32(4, little);
    const count = view.getUint16(ifd, little);
    for (let i = 0; i < count; i++) {
      const entry = ifd + 2 + i * 12;
      if (view.getUint16(entry, little) === 0x0112) {
        const type = view.getUint16(entry + 2, little);
        const value = type === 3 ? view.getUint16(entry + 8, little) : type === 4 ? view.getUint32(entry + 8, little) : 1;
        return value >= 1 && value <= 8 ? value : 1;
      }
    }
  } catch {
    // a broken EXIF block: keep the pixels as stored, as the Python runtime does
  }
  return 1;
}

/** The EXIF orientation of a JPEG file's APP1 block, or 1. @param {Uint8Array} b */
export function jpegOrientation(b) {
  let i = 2;
  while (i + 4 <= b.length && b[i] === 0xff) {
    const marker = b[i + 1];
    if (marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) { i += 2; continue; }
    if (marker === 0xda || marker === 0xd9) break; // start of scan: no more headers
    const length = (b[i + 2] << 8) | b[i + 3];
    if (marker === 0xe1 && length >= 8 && b[i + 4] === 0x45 && b[i + 5] === 0x78 && b[i + 6] === 0x69 && b[i + 7] === 0x66 &&
      b[i + 8] === 0 && b[i + 9] === 0) {
      return tiffOrientation(b.subarray(i + 10, Math.min(b.length, i + 2 + length)));
    }
    i += 2 + length;
  }
  return 1;
}

/**
 * The chunks of a PNG file that matter here: its colour type, whether it has tRNS, its eXIf payload.
 * @param {Uint8Array} b
 */
export function pngInfo(b) {
  const info = { colorType: -1, transparency: false, orientation: 1 };
  let i = 8;
  const view = new DataView(b.buffer, b.byteOffset, b.length);
  while (i + 8 <= b.length) {
    const length = view.getUint32(i);
    const type = String.fromCharCode(b[i + 4], b[i + 5], b[i + 6], b[i + 7]);
    if (type === 'IHDR' && i + 8 + 10 <= b.length) info.colorType = b[i + 8 + 9];
    else if (type === 'tRNS') info.transparency = true;
    else if (type === 'eXIf') info.orientation = tiffOrientation(b.subarray(i + 8, Math.min(b.length, i + 8 + length)));
    else if (type === 'IEND') break;
    i += 12 + length;
  }
  return info;
}

/**
 * ImageOps.exif_transpose on interleaved pixels with ``channels`` channels.
 * @param {{width: number, height: number, data: Uint8Array}} img @param {number} orientation @param {number} channels
 */
export function applyOrientation(img, orientation, channels) {
  if (orientation < 2 || orientation > 8) return img;
  const { width: w, height: h, data } = img;
  const swap = orientation >= 5;
  const ow = swap ? h : w;
  const oh = swap ? w : h;
  const out = new Uint8Array(ow * oh * channels);
  // (x, y) in the output -> (sx, sy) in the stored image; Pillow's Transpose per orientation
  const source = {
    2: (x, y) => [w - 1 - x, y], // FLIP_LEFT_RIGHT
    3: (x, y) => [w - 1 - x, h - 1 - y], // ROTATE_180
    4: (x, y) => [x, h - 1 - y], // FLIP_TOP_BOTTOM
    5: (x, y) => [y, x], // TRANSPOSE
    6: (x, y) => [y, h - 1 - x], // ROTATE_270
    7: (x, y) => [w - 1 - y, h - 1 - x], // TRANSVERSE
    8: (x, y) => [w - 1 - y, x], // ROTATE_90
  }[orientation];
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      const [sx, sy] = source(x, y);
      const from = (sy * w + sx) * channels;
      const to = (y * ow + x) * channels;
      for (let c = 0; c < channels; c++) out[to + c] = data[from + c];
    }
  }
  return { width: ow, height: oh, data: out };
}

// --- to RGB -----------------------------------------------------------------------------------------

/**
 * RGBA -> RGB: composited onto white with Pillow's alpha_composite arithmetic when ``composite``,
 * else the alpha channel is dropped (an image without an alpha channel).
 * @param {{width: number, height: number, data: Uint8Array}} img @returns {RgbImage}
 */
export function rgbaToRgb(img, composite) {
  const n = img.width * img.height;
  const out = new Uint8Array(n * 3);
  const d = img.data;
  for (let i = 0; i < n; i++) {
    const a = d[i * 4 + 3];
    for (let c = 0; c < 3; c++) {
      const v = d[i * 4 + c];
      if (!composite || a === 255) out[i * 3 + c] = v;
      else if (a === 0) out[i * 3 + c] = 255;
      else {
        const coef1 = a * 128; // a * 255 * 255 * 128 / (255 * 255) onto an opaque background
        const coef2 = 255 * 128 - coef1;
        const tmp = v * coef1 + 255 * coef2 + (0x80 << 7);
        out[i * 3 + c] = ((((tmp >> 8) + tmp) >> 8) >> 7);
      }
    }
  }
  return { width: img.width, height: img.height, data: out };
}

// --- Pillow's resampling ----------------------------------------------------------------------------

const PRECISION_BITS = 32 - 8 - 2;
const FILTERS = {
  bilinear: { support: 1.0, f: (x) => { x = Math.abs(x); return x < 1.0 ? 1.0 - x : 0.0; } },
  bicubic: {
    support: 2.0,
    f: (x) => {
      const a = -0.5;
      x = Math.abs(x);
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    },
  },
  lanczos: {
    support: 3.0,
    f: (x) => {
      const sinc = (v) => (v === 0.0 ? 1.0 : Math.sin(v * Math.PI) / (v * Math.PI));
      return -3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0;
    },
  },
};

/** precompute_coeffs + normalize_coeffs_8bpc: bounds and integer coefficients for one axis. */
function precompute(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const w = filter.f((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
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

const clip8 = (v) => {
  const i = v >> PRECISION_BITS;
  return i < 0 ? 0 : i > 255 ? 255 : i;
};

/** Pillow's Image.resize(size, filter) of an RGB image (two passes: horizontal, then vertical). */
export function resize(img, width, height, interpolation = 'bilinear') {
  if (interpolation === 'nearest') return resizeNearest(img, width, height);
  const filter = FILTERS[interpolation];
  let cur = img;
  if (width !== img.width) {
    const { ksize, bounds, kk } = precompute(img.width, width, filter);
    const out = new Uint8Array(width * img.height * 3);
    const src = img.data;
    for (let y = 0; y < img.height; y++) {
      const row = y * img.width * 3;
      for (let xx = 0; xx < width; xx++) {
        const xmin = bounds[xx * 2];
        const xmax = bounds[xx * 2 + 1];
        let s0 = 1 << (PRECISION_BITS - 1);
        let s1 = s0;
        let s2 = s0;
        for (let x = 0; x < xmax; x++) {
          const w = kk[xx * ksize + x];
          const p = row + (x + xmin) * 3;
          s0 += src[p] * w;
          s1 += src[p + 1] * w;
          s2 += src[p + 2] * w;
        }
        const o = (y * width + xx) * 3;
        out[o] = clip8(s0);
        out[o + 1] = clip8(s1);
        out[o + 2] = clip8(s2);
      }
    }
    cur = { width, height: img.height, data: out };
  }
  if (height !== cur.height) {
    const { ksize, bounds, kk } = precompute(cur.height, height, filter);
    const out = new Uint8Array(cur.width * height * 3);
    const src = cur.data;
    const stride = cur.width * 3;
    for (let yy = 0; yy < height; yy++) {
      const ymin = bounds[yy * 2];
      const ymax = bounds[yy * 2 + 1];
      for (let x = 0; x < cur.width; x++) {
        let s0 = 1 << (PRECISION_BITS - 1);
        let s1 = s0;
        let s2 = s0;
        for (let y = 0; y < ymax; y++) {
          const w = kk[yy * ksize + y];
          const p = (y + ymin) * stride + x * 3;
          s0 += src[p] * w;
          s1 += src[p + 1] * w;
          s2 += src[p + 2] * w;
        }
        const o = (yy * cur.width + x) * 3;
        out[o] = clip8(s0);
        out[o + 1] = clip8(s1);
        out[o + 2] = clip8(s2);
      }
    }
    cur = { width: cur.width, height, data: out };
  }
  return cur;
}

/** Pillow's NEAREST resize (an affine transform sampling pixel centres). */
function resizeNearest(img, width, height) {
  const out = new Uint8Array(width * height * 3);
  const sx = img.width / width;
  const sy = img.height / height;
  for (let y = 0; y < height; y++) {
    const yin = Math.min(img.height - 1, Math.floor((y + 0.5) * sy));
    for (let x = 0; x < width; x++) {
      const xin = Math.min(img.width - 1, Math.floor((x + 0.5) * sx));
      const p = (yin * img.width + xin) * 3;
      const o = (y * width + x) * 3;
      out[o] = img.data[p];
      out[o + 1] = img.data[p + 1];
      out[o + 2] = img.data[p + 2];
    }
  }
  return { width, height, data: out };
}

/** resized_size: (width, height) with the shorter side set to ``shorter``, as torchvision's Resize(int). */
export function resizedSize(width, height, shorter) {
  if (width <= height) return [shorter, Math.trunc((shorter * height) / width)];
  return [Math.trunc((shorter * width) / height), shorter];
}

/** Python's round() of a float: half to even. */
function roundHalfEven(x) {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** resize_and_crop: the shorter side to spec.resize, then a centre crop (padding with black). */
export function resizeAndCrop(img, spec) {
  const [w, h] = resizedSize(img.width, img.height, spec.resize);
  if (w !== img.width || h !== img.height) img = resize(img, w, h, spec.interpolation);
  const crop = spec.crop;
  if (img.width < crop || img.height < crop) {
    const pw = Math.max(crop, img.width);
    const ph = Math.max(crop, img.height);
    const padded = new Uint8Array(pw * ph * 3);
    const left = Math.floor((pw - img.width) / 2);
    const top = Math.floor((ph - img.height) / 2);
    for (let y = 0; y < img.height; y++) {
      padded.set(img.data.subarray(y * img.width * 3, (y + 1) * img.width * 3), ((y + top) * pw + left) * 3);
    }
    img = { width: pw, height: ph, data: padded };
  }
  const top = roundHalfEven((img.height - crop) / 2.0);
  const left = roundHalfEven((img.width - crop) / 2.0);
  const out = new Uint8Array(crop * crop * 3);
  for (let y = 0; y < crop; y++) {
    out.set(img.data.subarray(((y + top) * img.width + left) * 3, ((y + top) * img.width + left + crop) * 3), y * crop * 3);
  }
  return { width: crop, height: crop, data: out };
}

/** normalize: (H, W, 3) uint8 -> (3, H, W) float32, (x / 255 - mean) / std in float32. */
export function normalize(img, spec) {
  const n = img.width * img.height;
  const out = new Float32Array(3 * n);
  const f = Math.fround;
  for (let c = 0; c < 3; c++) {
    const mean = f(spec.mean[c]);
    const std = f(spec.std[c]);
    for (let i = 0; i < n; i++) out[c * n + i] = f(f(f(img.data[i * 3 + c] / 255) - mean) / std);
  }
  return out;
}

/**
 * An RGB image (orientation already applied) -> the encoder's input, float32 (3, crop, crop).
 * @param {RgbImage} img @param {PreprocessSpec} spec @param {string} name
 */
export function preprocessRgb(img, spec, name = '<image>', limits = DEFAULT_LIMITS) {
  checkImageSize(name, img.width, img.height, limits);
  const [w, h] = resizedSize(img.width, img.height, spec.resize);
  if (w * h > limits.max_image_pixels) {
    throw new LimitError(`${name}: ${img.width}x${img.height} resized to a shorter side of ${spec.resize} would be ` +
      `${w}x${h} = ${fmt(w * h)} pixels, over the limit of ${fmt(limits.max_image_pixels)} (Limits.max_image_pixels; raise it to allow more)`);
  }
  return normalize(resizeAndCrop(img, spec), spec);
}
