// capkit-js in Node: Captioner.create(bundleFolder) reads the bundle with fs, checks sha256 with
// node:crypto and runs the graphs with onnxruntime-node.
//
//   import { Captioner } from 'capkit-js';
//   const captioner = await Captioner.create('runs/latest/bundle');
//   console.log((await captioner.caption('dog.jpg')).text);

import { createHash } from 'node:crypto';
import { closeSync, constants, fstatSync, openSync, readSync, statSync } from 'node:fs';
import { join, resolve, sep } from 'node:path';
import * as ort from 'onnxruntime-node';
import { Captioner as Core, checkThreads } from './captioner.js';
import { BundleError, ImageError } from './errors.js';
import { decodeImageBytes } from './image-node.js';

export * from './errors.js';
export { DEFAULT_OPTIONS, OPTION_NAMES, verifyOptions } from './options.js';
export { defaultRng } from './random.js';
export { parseManifest, checkManifest } from './manifest.js';

const MAX_IMAGE_FILE = 1 << 30;

/** Reads a regular file (a FIFO or a device is refused without blocking). */
function readRegular(path, maxBytes, fail) {
  let fd;
  try {
    fd = openSync(path, constants.O_RDONLY | (constants.O_NONBLOCK || 0));
  } catch (e) {
    throw fail(e.code === 'ENOENT' ? 'is missing' : e.code === 'EISDIR' ? 'is a folder, not a file' : `cannot be read (${e.code || e.message})`);
  }
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) throw fail('is a folder, not a file');
    if (!st.isFile()) throw fail('is not a regular file');
    if (st.size > maxBytes) throw fail(`is over the limit of ${maxBytes} bytes`);
    const out = Buffer.alloc(st.size);
    let off = 0;
    while (off < st.size) {
      const n = readSync(fd, out, off, st.size - off, off);
      if (n === 0) break;
      off += n;
    }
    return new Uint8Array(out.buffer, out.byteOffset, off);
  } finally {
    closeSync(fd);
  }
}

export class Captioner extends Core {
  /**
   * A bundle folder -> a ready Captioner.
   * @param {string} folder @param {{threads?: number, limits?: Partial<import('./errors.js').Limits>}} [settings]
   * @returns {Promise<Captioner>}
   */
  static async create(folder, { threads, limits } = {}) {
    checkThreads(threads, limits);
    const root = resolve(String(folder));
    let st;
    try {
      st = statSync(root);
    } catch {
      throw new BundleError(`${folder}: no such bundle folder (run \`capkit export\`, or pass another folder)`);
    }
    if (!st.isDirectory()) throw new BundleError(`${folder}: not a bundle folder (a bundle is a folder with capkit.json in it)`);
    const platform = {
      ort,
      readFile: async (name, maxBytes = 4 * 1024 ** 3) => {
        const path = resolve(join(root, name));
        if (!(path.startsWith(root + sep))) throw new BundleError(`${folder}: ${name} points outside the bundle`);
        return readRegular(path, maxBytes, (problem) => new BundleError(
          name === 'capkit.json' && problem === 'is missing' ? `${folder}: not a bundle, capkit.json is missing` : `${folder}: ${name} ${problem}`));
      },
      sha256: async (bytes) => createHash('sha256').update(bytes).digest('hex'),
      decodeImage: async (source, lims) => {
        let bytes;
        let name;
        if (typeof source === 'string') {
          name = source;
          bytes = readRegular(source, MAX_IMAGE_FILE, (problem) => new ImageError(
            `${source}: ${problem === 'is missing' ? 'no such file' : problem}`));
        } else if (source instanceof Uint8Array || source instanceof ArrayBuffer) {
          name = '<bytes>';
          bytes = source instanceof ArrayBuffer ? new Uint8Array(source) : source;
        } else {
          throw new ImageError(`unsupported image source of type ${source === null ? 'null' : typeof source}`);
        }
        return { image: await decodeImageBytes(bytes, name, lims), name };
      },
    };
    const sessionOptions = threads ? { intraOpNumThreads: threads, interOpNumThreads: 1 } : { interOpNumThreads: 1 };
    return /** @type {Promise<Captioner>} */ (super.load(String(folder), platform, { limits, sessionOptions }));
  }
}
