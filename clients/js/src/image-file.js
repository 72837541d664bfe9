// What an image file's bytes say before its pixels are decoded: a JPEG's frame header (size, number of
// components), the EXIF orientation (a TIFF block's Orientation tag, in a JPEG's APP1 or a PNG's eXIf
// chunk) and the PNG chunks that decide how Pillow converts it to RGB (colour type, tRNS). Reading only:
// the pixels are the decoder's (image-node.js, the browser), their arithmetic preprocess.js's.

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

/** A JPEG's size and number of components from its SOF marker, or null. @param {Uint8Array} b */
export function jpegFrame(b) {
  let i = 2;
  while (i + 9 < b.length && b[i] === 0xff) {
    const marker = b[i + 1];
    if (marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) { i += 2; continue; }
    const length = (b[i + 2] << 8) | b[i + 3];
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      return { width: (b[i + 7] << 8) | b[i + 8], height: (b[i + 5] << 8) | b[i + 6], components: b[i + 9] };
    }
    if (marker === 0xda) break;
    i += 2 + length;
  }
  return null;
}
