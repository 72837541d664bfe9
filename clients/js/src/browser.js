// capkit-js in the browser: Captioner.create(bundleUrl) fetches the bundle, checks sha256 with
// WebCrypto and runs the graphs with onnxruntime-web (WASM). Images are decoded by the browser
// (createImageBitmap, EXIF orientation applied), composited onto white, then preprocessed as in Node.
//
//   import { Captioner } from './js/browser.js';
//   const captioner = await Captioner.create('./bundle/');
//   const { text } = await captioner.caption(file);   // a File, Blob, ArrayBuffer, Uint8Array or URL

import { Captioner as Core, checkThreads, fileTooBig, missingFile } from './captioner.js';
import { BundleError, ImageError, pythonRepr } from './errors.js';
import { checkImageSize, rgbaToRgb } from './preprocess.js';

export * from './errors.js';
export { DEFAULT_OPTIONS, OPTION_NAMES, verifyOptions } from './options.js';

const hex = (buffer) => Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, '0')).join('');

/** A Blob, bytes or a URL -> RGB pixels, decoded by the browser. */
async function decodeImage(source, limits) {
  let blob;
  let name;
  if (typeof Blob !== 'undefined' && source instanceof Blob) {
    blob = source;
    name = (typeof File !== 'undefined' && source instanceof File && source.name) || '<blob>';
  } else if (source instanceof ArrayBuffer || ArrayBuffer.isView(source)) {
    blob = new Blob([/** @type {BlobPart} */ (source)]);
    name = '<bytes>';
  } else if (typeof source === 'string' || source instanceof URL) {
    name = String(source);
    let response;
    try {
      response = await fetch(source);
    } catch (e) {
      throw new ImageError(`${name}: cannot be fetched (${e.message})`);
    }
    if (!response.ok) throw new ImageError(`${name}: cannot be fetched (HTTP ${response.status})`);
    blob = await response.blob();
  } else {
    throw new ImageError(`unsupported image source of type ${source === null ? 'null' : typeof source}`);
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, { imageOrientation: 'from-image', premultiplyAlpha: 'none', colorSpaceConversion: 'none' });
  } catch {
    throw new ImageError(`${name}: corrupt or unreadable image (the browser cannot decode it)`);
  }
  try {
    checkImageSize(name, bitmap.width, bitmap.height, limits);
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const context = canvas.getContext('2d', { willReadFrequently: true });
    if (!context) throw new ImageError(`${name}: the browser gives no 2D canvas to read the image's pixels`);
    context.fillStyle = '#ffffff'; // transparent pixels onto white, as the Python runtime does
    context.fillRect(0, 0, bitmap.width, bitmap.height);
    context.drawImage(bitmap, 0, 0);
    const { data } = context.getImageData(0, 0, bitmap.width, bitmap.height);
    return { image: rgbaToRgb({ width: bitmap.width, height: bitmap.height, data: new Uint8Array(data.buffer) }, false), name };
  } finally {
    bitmap.close();
  }
}

export class Captioner extends Core {
  /**
   * A bundle's URL (a folder ending in /) -> a ready Captioner.
   * @param {string|URL} bundleUrl
   * @param {{ort?: any, threads?: number, limits?: Partial<import('./errors.js').Limits>}} [settings] ort: onnxruntime-web's module
   *   (default: ../ort/ort.wasm.min.mjs next to this file, as `capkit serve-web` serves it);
   *   threads: WASM threads (more than 1 needs a cross-origin isolated page)
   * @returns {Promise<Captioner>}
   */
  static async create(bundleUrl, { ort, threads = 1, limits } = {}) {
    checkThreads(threads, limits);
    const base = new URL(String(bundleUrl).endsWith('/') ? String(bundleUrl) : `${bundleUrl}/`, globalThis.location?.href);
    if (!ort) { // the layout `capkit serve-web` serves: onnxruntime-web's files in ../ort/
      ort = await import(new URL('../ort/ort.wasm.min.mjs', import.meta.url).href);
      ort.env.wasm.wasmPaths = new URL('../ort/', import.meta.url).href;
    }
    ort.env.wasm.numThreads = threads;
    const where = String(bundleUrl);
    // In the browser there are no links to follow: a name stays inside the bundle when its URL does (the manifest's
    // check has refused `..` and absolute names already; this is the lexical check again, on the URL)
    const url = (/** @type {string} */ name) => {
      const found = new URL(name, base);
      if (!found.href.startsWith(base.href)) throw new BundleError(`${where}: ${pythonRepr(name)} points outside the bundle`);
      return found;
    };
    const platform = {
      ort,
      readFile: async (/** @type {string} */ name, maxBytes = 4 * 1024 ** 3) => {
        let response;
        try {
          response = await fetch(url(name), { cache: 'no-store' });
        } catch (e) {
          throw new BundleError(`${where}: ${name} cannot be fetched (${e.message})`);
        }
        if (response.status === 404) throw missingFile(where, name);
        if (!response.ok) throw new BundleError(`${where}: ${name} cannot be fetched (HTTP ${response.status})`);
        if (Number(response.headers.get('content-length')) > maxBytes) throw fileTooBig(where, name, maxBytes);
        return new Uint8Array(await response.arrayBuffer());
      },
      isFile: async (/** @type {string} */ name) => {
        const address = url(name);
        try {
          return (await fetch(address, { method: 'HEAD', cache: 'no-store' })).ok;
        } catch {
          return false;
        }
      },
      sha256: async (bytes) => hex(await crypto.subtle.digest('SHA-256', bytes)),
      decodeImage,
    };
    return /** @type {Promise<Captioner>} */ (super.load(where, platform, { limits, sessionOptions: { executionProviders: ['wasm'] } }));
  }
}
