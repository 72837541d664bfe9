// capkit-js in Node: Captioner.create(bundleFolder) reads the bundle with fs, checks sha256 with
// node:crypto and runs the graphs with onnxruntime-node.
//
//   import { Captioner } from 'capkit-js';
//   const captioner = await Captioner.create('runs/latest/bundle');
//   console.log((await captioner.caption('dog.jpg')).text);

import { createHash } from 'node:crypto';
import { closeSync, constants, fstatSync, openSync, readSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve, sep } from 'node:path';
import * as ort from 'onnxruntime-node';
import { Captioner as Core, checkThreads, fileTooBig, missingFile } from './captioner.js';
import { BundleError, ImageError, pythonRepr } from './errors.js';
import { decodeImageBytes } from './image-node.js';
import { MANIFEST_NAME } from './manifest.js';

export * from './errors.js';
export { DEFAULT_OPTIONS, OPTION_NAMES, verifyOptions } from './options.js';
export { defaultRng } from './random.js';
export { parseManifest, checkManifest } from './manifest.js';

const MAX_IMAGE_FILE = 1 << 30;
const IMAGE_PROBLEMS = { missing: 'no such file', folder: 'is a folder, not a file', special: 'is not a regular file',
  'too big': `is over the limit of ${MAX_IMAGE_FILE} bytes` };
const MAX_GRAPH_FILE = 4 * 1024 ** 3; // a Buffer's most
// os.strerror's words for the errors a bundle's files meet, as Python's messages say them (Node names the code)
const REASONS = { ELOOP: 'Too many levels of symbolic links', ENOTDIR: 'Not a directory', EACCES: 'Permission denied',
  ENAMETOOLONG: 'File name too long', EIO: 'Input/output error' };
const reason = (/** @type {any} */ e) => REASONS[e?.code] ?? e?.code ?? String(e?.message ?? e);

/**
 * Reads a regular file (a FIFO or a device is refused without blocking). ``refuse(problem, error)`` makes the error:
 * problem 'missing', 'folder', 'special' (not a regular file), 'too big' or 'unreadable' (with the OS error).
 * @param {string} path @param {number} maxBytes @param {(problem: string, error?: any) => Error} refuse
 */
function readRegular(path, maxBytes, refuse) {
  let fd;
  try {
    fd = openSync(path, constants.O_RDONLY | (constants.O_NONBLOCK || 0));
  } catch (e) {
    throw refuse(e.code === 'ENOENT' ? 'missing' : e.code === 'EISDIR' ? 'folder' : 'unreadable', e);
  }
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) throw refuse('folder');
    if (!st.isFile()) throw refuse('special');
    if (st.size > maxBytes) throw refuse('too big');
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

/**
 * Python's Path.resolve() (strict=False): every link along ``path`` followed, also where what it leads to does
 * not exist (a dangling link still leads somewhere); throws ELOOP on a loop.
 * @param {string} path @returns {string}
 */
function resolveLinks(path, hops = 0) {
  try {
    return realpathSync(path);
  } catch (e) {
    if (e.code !== 'ENOENT' && e.code !== 'ENOTDIR') throw e;
  }
  const parent = dirname(path);
  if (parent === path) return path;
  const here = join(resolveLinks(parent, hops), basename(path));
  let target;
  try {
    target = readlinkSync(here);
  } catch {
    return here; // not a link: nothing there, kept as named
  }
  if (hops >= 40) throw Object.assign(new Error('a symlink loop'), { code: 'ELOOP' });
  return resolveLinks(resolve(dirname(here), target), hops + 1);
}

/**
 * The bundle's reader of its own files (runtime/bundle.py's checks and words): each name the manifest or a graph
 * gives must lead, links followed, inside the folder (capkit.json itself is read where it is, as in Python).
 * @param {string} where the folder as given @param {string} root its real path
 */
function bundleFiles(where, root) {
  const inside = (/** @type {string} */ name) => {
    let path;
    try {
      path = resolveLinks(join(root, name));
    } catch (e) {
      throw new BundleError(`${where}: ${pythonRepr(name)} cannot be resolved (${reason(e)})`);
    }
    if (!path.startsWith(root + sep)) throw new BundleError(`${where}: ${pythonRepr(name)} points outside the bundle`);
    return path;
  };
  const refusal = (/** @type {string} */ name, /** @type {number} */ maxBytes) => (/** @type {string} */ problem, /** @type {any} */ e) => {
    if (problem === 'missing') return missingFile(where, name);
    if (problem === 'unreadable') return new BundleError(`${where}: ${name} cannot be read (${reason(e)})`);
    if (problem === 'too big') return fileTooBig(where, name, maxBytes);
    return new BundleError(`${where}: ${name} is not a regular file`);
  };
  return {
    readFile: async (/** @type {string} */ name, maxBytes = MAX_GRAPH_FILE) => readRegular(
      name === MANIFEST_NAME ? join(root, name) : inside(name), maxBytes, refusal(name, maxBytes)),
    isFile: async (/** @type {string} */ name) => {
      try {
        return statSync(inside(name)).isFile();
      } catch (e) {
        if (e instanceof BundleError) throw e;
        return false;
      }
    },
  };
}

/** The real path of a bundle folder, or BundleError in load_bundle's words. @param {string} where */
function bundleRoot(where) {
  let st;
  try {
    st = statSync(where);
  } catch (e) {
    if (e.code === 'ENOENT') throw new BundleError(`${where}: no such bundle folder (run \`capkit export\`, or pass another folder)`);
    throw new BundleError(`${where}: the bundle folder cannot be read (${reason(e)})`);
  }
  if (!st.isDirectory()) throw new BundleError(`${where}: not a bundle folder (a bundle is a folder with ${MANIFEST_NAME} in it)`);
  return realpathSync(where);
}

export class Captioner extends Core {
  /**
   * A bundle folder -> a ready Captioner.
   * @param {string} folder @param {{threads?: number, limits?: Partial<import('./errors.js').Limits>}} [settings]
   * @returns {Promise<Captioner>}
   */
  static async create(folder, { threads, limits } = {}) {
    checkThreads(threads, limits);
    const where = String(folder);
    const platform = {
      ort,
      ...bundleFiles(where, bundleRoot(where)),
      sha256: async (bytes) => createHash('sha256').update(bytes).digest('hex'),
      decodeImage: async (source, lims) => {
        let bytes;
        let name;
        if (typeof source === 'string') {
          name = source;
          bytes = readRegular(source, MAX_IMAGE_FILE, (problem, e) => new ImageError(
            `${source}: ${IMAGE_PROBLEMS[problem] ?? `cannot be read (${e?.code || e?.message})`}`));
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
    return /** @type {Promise<Captioner>} */ (super.load(where, platform, { limits, sessionOptions }));
  }
}
