// Image files in Node: JPEG (sharp, i.e. libvips on libjpeg-turbo's mozjpeg fork, which decodes as the
// libjpeg-turbo in Pillow does; jpeg-js where sharp cannot load) and PNG (pngjs), decoded at full size,
// with their EXIF orientation, and alpha composited onto white where Pillow would (RGBA, LA, palette
// with tRNS). sharp only decodes here: no resize, no rotation (orientation is applyOrientation's).

import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';
import { ImageError } from './errors.js';
import { jpegFrame, jpegOrientation, pngInfo } from './image-file.js';
import { applyOrientation, checkImageSize, rgbaToRgb } from './preprocess.js';

let sharpModule; // undefined: not tried yet; null: sharp cannot load here (no prebuilt binary for the platform)

async function loadSharp() {
  if (sharpModule === undefined) {
    if (process.env.CAPKIT_JS_JPEG_DECODER === 'jpeg-js') {
      sharpModule = null;
    } else {
      try {
        sharpModule = (await import('sharp')).default;
      } catch {
        sharpModule = null;
      }
    }
  }
  return sharpModule;
}

/**
 * Which decoder reads JPEG files here: 'sharp' (libjpeg-turbo's ISLOW IDCT and fancy upsampling, as in
 * Pillow: the same pixels) or 'jpeg-js' (the fallback where sharp cannot load, or where the environment
 * sets CAPKIT_JS_JPEG_DECODER=jpeg-js; its IDCT rounds differently, and it upsamples 4:2:0 chroma without
 * smoothing, so pixels differ from Pillow's).
 * @returns {Promise<'sharp' | 'jpeg-js'>}
 */
export async function jpegDecoder() {
  return (await loadSharp()) ? 'sharp' : 'jpeg-js';
}

const oneLine = (e) => String((e && e.message) || e).split(/\s+/).join(' ').trim() || 'unknown error';

/**
 * A JPEG with sharp -> RGB pixels as stored (no rotation, no resize), as Pillow's ``convert("RGB")``
 * gives them: the embedded ICC profile ignored (Pillow does not apply it), greyscale repeated into three
 * channels, CMYK (Adobe-inverted as libjpeg reads it) turned to RGB with Pillow's cmyk2rgb.
 * @param {Function} sharp @param {Uint8Array} b @param {{components: number}} frame @param {string} name @param {object} limits
 */
async function sharpJpeg(sharp, b, frame, name, limits) {
  const cmyk = frame.components === 4;
  let out;
  try {
    let pipeline = sharp(b, { failOn: 'error', ignoreIcc: true, autoOrient: false, limitInputPixels: limits.max_image_pixels || false });
    if (cmyk) pipeline = pipeline.pipelineColourspace('cmyk').toColourspace('cmyk'); // else libvips converts CMYK with a profile
    out = await pipeline.raw().toBuffer({ resolveWithObject: true });
  } catch (e) {
    throw new ImageError(`${name}: corrupt or unreadable image (${oneLine(e)})`);
  }
  const { data, info } = out;
  const n = info.width * info.height;
  if (info.depth !== 'uchar' || data.length !== n * info.channels || (cmyk ? info.channels !== 4 : info.channels !== 1 && info.channels !== 3)) {
    throw new ImageError(`${name}: corrupt or unreadable image (${info.channels} channels of ${info.depth} from the JPEG decoder)`);
  }
  if (info.channels === 3) return { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
  const rgb = new Uint8Array(n * 3);
  if (info.channels === 1) {
    for (let i = 0; i < n; i++) rgb[i * 3] = rgb[i * 3 + 1] = rgb[i * 3 + 2] = data[i];
  } else {
    for (let i = 0; i < n; i++) { // Pillow's cmyk2rgb: nk - MULDIV255(c, nk)
      const nk = 255 - data[i * 4 + 3];
      for (let c = 0; c < 3; c++) {
        const t = data[i * 4 + c] * nk + 128;
        rgb[i * 3 + c] = nk - ((t + (t >> 8)) >> 8);
      }
    }
  }
  return { width: info.width, height: info.height, data: rgb };
}

/**
 * Encoded bytes -> RGB pixels, EXIF orientation applied.
 * @param {Uint8Array} bytes @param {string} name @param {object} limits
 * @returns {Promise<import('./preprocess.js').RgbImage>}
 */
export async function decodeImageBytes(bytes, name, limits) {
  const b = bytes;
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) {
    const frame = jpegFrame(b);
    if (!frame) throw new ImageError(`${name}: corrupt or unreadable image (no JPEG frame header)`);
    checkImageSize(name, frame.width, frame.height, limits);
    const sharp = await loadSharp();
    if (sharp) {
      const rgb = applyOrientation(await sharpJpeg(sharp, b, frame, name, limits), jpegOrientation(b), 3);
      checkImageSize(name, rgb.width, rgb.height, limits);
      return rgb;
    }
    let decoded;
    try {
      decoded = jpeg.decode(b, { useTArray: true, formatAsRGBA: true, tolerantDecoding: false, maxMemoryUsageInMB: 2048,
        maxResolutionInMP: Math.ceil(limits.max_image_pixels / 1e6) });
    } catch (e) {
      throw new ImageError(`${name}: corrupt or unreadable image (${oneLine(e)})`);
    }
    const rgba = applyOrientation(decoded, jpegOrientation(b), 4);
    checkImageSize(name, rgba.width, rgba.height, limits);
    return rgbaToRgb(rgba, false);
  }
  if (b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) {
    if (b.length < 24) throw new ImageError(`${name}: corrupt or unreadable image (truncated PNG header)`);
    const view = new DataView(b.buffer, b.byteOffset, b.length);
    checkImageSize(name, view.getUint32(16), view.getUint32(20), limits);
    const info = pngInfo(b);
    let decoded;
    try {
      decoded = PNG.sync.read(Buffer.from(b.buffer, b.byteOffset, b.length));
    } catch (e) {
      throw new ImageError(`${name}: corrupt or unreadable image (${oneLine(e)})`);
    }
    // Pillow keeps the alpha of RGBA (6), LA (4) and palette images with tRNS (3); a tRNS colour key on
    // grey (0) or RGB (2) is ignored by its RGB conversion
    const composite = info.colorType === 4 || info.colorType === 6 || (info.colorType === 3 && info.transparency);
    const rgba = applyOrientation({ width: decoded.width, height: decoded.height, data: new Uint8Array(decoded.data) }, info.orientation, 4);
    return rgbaToRgb(rgba, composite);
  }
  throw new ImageError(`${name}: not an image file capkit-js can read in Node (JPEG and PNG)`);
}
