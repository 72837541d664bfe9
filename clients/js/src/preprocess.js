// The preprocessing of runtime/image_files.py and runtime/preprocess.py on decoded pixels: the size limits, EXIF orientation applied
// (ImageOps.exif_transpose), alpha onto white (Pillow's alpha_composite arithmetic), resize of the shorter
// side (Pillow's resampling: resample.js), centre crop (padding with black) and mean/std in float32.
// Reading the file's headers is image-file.js's part; decoding it the platform's (node.js, browser.js).

import { DEFAULT_LIMITS, ImageError, LimitError, formatG } from './errors.js';
import { resize } from './resample.js';

/** @typedef {import('./resample.js').RgbImage} RgbImage */

/**
 * @typedef {object} PreprocessSpec
 * @property {number} resize shorter side after resizing
 * @property {number} crop side of the centre crop
 * @property {number[]} mean per channel, on [0, 1] pixels
 * @property {number[]} std
 * @property {string} interpolation nearest | bilinear | bicubic | lanczos
 */

const fmt = (n) => n.toLocaleString('en-US');

/**
 * check_image_size: empty, too many pixels, too long.
 * @param {string} name @param {number} width @param {number} height @param {import('./errors.js').Limits} [limits]
 */
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
 * @param {RgbImage} img @param {PreprocessSpec} spec @param {string} [name] @param {import('./errors.js').Limits} [limits]
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
