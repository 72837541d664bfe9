// Image files in Node: JPEG (jpeg-js) and PNG (pngjs), decoded at full size, with their EXIF
// orientation, and alpha composited onto white where Pillow would (RGBA, LA, palette with tRNS).

import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';
import { ImageError } from './errors.js';
import { applyOrientation, checkImageSize, jpegOrientation, pngInfo, rgbaToRgb } from './preprocess.js';

/** A JPEG's size from its SOF marker, or null. @param {Uint8Array} b */
function jpegSize(b) {
  let i = 2;
  while (i + 9 < b.length && b[i] === 0xff) {
    const marker = b[i + 1];
    if (marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) { i += 2; continue; }
    const length = (b[i + 2] << 8) | b[i + 3];
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      return [(b[i + 7] << 8) | b[i + 8], (b[i + 5] << 8) | b[i + 6]];
    }
    if (marker === 0xda) break;
    i += 2 + length;
  }
  return null;
}

const oneLine = (e) => String((e && e.message) || e).split(/\s+/).join(' ').trim() || 'unknown error';

/**
 * Encoded bytes -> RGB pixels, EXIF orientation applied.
 * @param {Uint8Array} bytes @param {string} name @param {object} limits
 * @returns {import('./preprocess.js').RgbImage}
 */
export function decodeImageBytes(bytes, name, limits) {
  const b = bytes;
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) {
    const size = jpegSize(b);
    if (!size) throw new ImageError(`${name}: corrupt or unreadable image (no JPEG frame header)`);
    checkImageSize(name, size[0], size[1], limits);
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
