// The hostile-manifest suite of the JavaScript runtime: every row of the shared table
// (test/fixtures/hostile_manifests.json, which tests/test_manifest_contract.py also reads) applied to a copy
// of the tiny bundle, then loaded in this process and given to the CLI (bin/caption.js) under a memory cap.
// A row holds when both refuse it with the table's line (Python's), or, for a legal row, caption the image.
//
//   node tools/hostile-manifests.mjs     # prints each row that does not hold, then the counts
//
// test/hostile-manifests.test.js runs the same checks; the tampering steps are tests/test_manifest_contract.py's.

import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  copyFileSync, cpSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PNG } from 'pngjs';
import { CapkitError, Captioner } from '../src/node.js';
import { parsePythonJson } from '../src/python-json.js';

const JS = fileURLToPath(new URL('..', import.meta.url));
const FIXTURES = join(JS, 'test', 'fixtures');
export const ROWS = JSON.parse(readFileSync(join(FIXTURES, 'hostile_manifests.json'), 'utf8')).rows;
const MEMORY_CAP_KB = 4 * 1024 * 1024; // the CLI's address space: a regression fails its row, not the machine

/** capkit.json's edits of a row, collected and written once, each value as the row's raw JSON text. */
function manifestEditor(path) {
  const doc = /** @type {any} */ (parsePythonJson(readFileSync(path, 'utf8')));
  const raw = new Map();
  let edited = false;
  const into = (keys) => [keys.slice(0, -1).reduce((d, k) => d[k], doc), keys[keys.length - 1]];
  const set = (container, key, value) => Object.defineProperty(container, key, { value, writable: true, enumerable: true, configurable: true });
  return {
    put(keys, text) {
      edited = true;
      const mark = `@raw${raw.size}@`;
      raw.set(JSON.stringify(mark), text);
      const [container, key] = into(keys);
      if (Array.isArray(container) && key === container.length) container.push(mark);
      else set(container, key, mark); // defineProperty: a key "__proto__" is a key here
    },
    remove(keys) {
      edited = true;
      const [container, key] = into(keys);
      if (Array.isArray(container)) container.splice(key, 1);
      else delete container[key];
    },
    get: (keys) => keys.reduce((d, k) => d[k], doc),
    write() {
      if (!edited) return;
      // the good manifest's floats stay floats (0.0, not 0), as Python writes them back
      let text = JSON.stringify(doc, (_, v) => (v instanceof Number ? `@float${Number.isInteger(+v) ? (+v).toFixed(1) : +v}@` : v))
        .replace(/"@float([^@]*)@"/g, '$1');
      for (const [mark, value] of raw) text = text.replace(mark, () => value);
      writeFileSync(path, text);
    },
  };
}

/** Applies a row's tampering steps to ``bundle`` (with ../outside beside it), as tests/test_manifest_contract.py's tamper. */
export function tamper(bundle, steps) {
  const manifest = manifestEditor(join(bundle, 'capkit.json'));
  const at = (name) => join(bundle, name);
  for (const step of steps) {
    if (step.set) manifest.put(step.set, step.json.repeat(step.repeat ?? 1));
    else if (step.nest) manifest.put(step.nest, '['.repeat(step.levels) + ']'.repeat(step.levels));
    else if (step.delete) manifest.remove(step.delete);
    else if (step.rehash) {
      const file = manifest.get(['graphs', step.rehash, 'file']);
      manifest.put(['graphs', step.rehash, 'sha256'], JSON.stringify(createHash('sha256').update(readFileSync(at(file))).digest('hex')));
    } else if ('document' in step || step.document_hex) {
      writeFileSync(at('capkit.json'), 'document' in step ? step.document : Buffer.from(step.document_hex, 'hex'));
    } else if ('write' in step) {
      rmSync(at(step.write), { force: true });
      writeFileSync(at(step.write), step.hex !== undefined ? Buffer.from(step.hex, 'hex') : step.text);
    } else if (step.copy || step.variant) {
      rmSync(at(step.to), { force: true });
      copyFileSync(step.copy ? at(step.copy) : join(FIXTURES, 'tiny-variants', step.variant), at(step.to));
    } else if (step.move) {
      mkdirSync(dirname(at(step.to)), { recursive: true });
      renameSync(at(step.move), at(step.to));
    } else if (step.remove) rmSync(at(step.remove), { recursive: true });
    else if (step.mkdir) mkdirSync(at(step.mkdir));
    else if (step.symlink) symlinkSync(step.to.replace('@outside', join(dirname(bundle), 'outside')), at(step.symlink));
    else if (step.fifo) execFileSync('mkfifo', [at(step.fifo)]);
    else if (step.bundle === 'missing' || step.bundle === 'file') {
      rmSync(bundle, { recursive: true });
      if (step.bundle === 'file') writeFileSync(bundle, 'not a folder');
    } else throw new Error(`unknown tampering step ${JSON.stringify(step)}`);
  }
  manifest.write();
}

/** A copy of the tiny bundle at root/bundle, tampered as ``row`` says; a copy of its files at root/outside where the row uses them. */
export function hostileBundle(row, root) {
  const bundle = join(root, 'bundle');
  cpSync(join(FIXTURES, 'tiny-bundle'), bundle, { recursive: true });
  if (JSON.stringify(row.tamper).includes('outside')) cpSync(join(FIXTURES, 'tiny-bundle'), join(root, 'outside'), { recursive: true });
  tamper(bundle, row.tamper);
  return bundle;
}

/** What is wrong with a refusal's one line (null: it is the table's). */
export function wrongRefusal(row, bundle, line) {
  if (row.loads) return `a legal bundle refused: ${line}`;
  if (/\n/.test(line)) return `more than one line: ${JSON.stringify(line)}`;
  if ('caption_fails' in row) return line.includes(row.caption_fails) ? null : `not "${row.caption_fails}": ${line}`;
  if ('message' in row && line !== `${bundle}: ${row.message}`) return `not Python's line: ${line}`;
  const lacking = (row.contains ?? []).filter((fragment) => !line.includes(fragment));
  return lacking.length ? `lacks ${JSON.stringify(lacking)}: ${line}` : null;
}

/** A 40 x 30 PNG to caption. */
export function writeGoodImage(folder) {
  const png = new PNG({ width: 40, height: 30 });
  for (let i = 0; i < png.data.length; i += 4) png.data.set([200, 40, 30, 255], i);
  const path = join(folder, 'good.png');
  writeFileSync(path, PNG.sync.write(png));
  return path;
}

/** Loads the row's bundle here and captions ``image``; null when that went as the table says, else the problem. */
export async function inProcessProblem(row, bundle, image) {
  try {
    const captioner = await Captioner.create(bundle, { threads: 1, limits: row.limits });
    const caption = await captioner.caption(image).finally(() => captioner.release());
    if (row.loads) return caption.tokens.length ? null : 'no caption';
    return `accepted: captioned ${JSON.stringify(caption.text)}`;
  } catch (e) {
    if (!(e instanceof CapkitError)) return `not a CapkitError: ${e?.stack ?? e}`;
    return wrongRefusal(row, bundle, e.message);
  }
}

/** The CLI on the row's bundle and ``image``, under the memory cap; null when it answered as the table says. */
export async function cliProblem(row, bundle, image) {
  const cli = join(JS, 'bin', 'caption.js');
  const { status, stdout, stderr } = await new Promise((done) => {
    execFile('/bin/sh', ['-c', `ulimit -v ${MEMORY_CAP_KB} && exec "$0" "$@"`, process.execPath, cli, bundle, image],
      { timeout: 60_000 }, (error, out, err) => done({ status: error ? error.code : 0, stdout: out, stderr: err }));
  });
  if (/^\s+at /m.test(stderr)) return `a stack trace: ${stderr.slice(0, 300)}`;
  if (row.loads) return status === 0 && stdout.startsWith(`${image}: `) && !stderr ? null : `legal, got exit ${status}: ${stdout}${stderr}`;
  const lines = stderr.split('\n').filter(Boolean);
  if (status !== 1 || stdout || lines.length !== 1 || !lines[0].startsWith('Error: ')) {
    return `exit ${status}, stdout ${JSON.stringify(stdout)}, stderr ${JSON.stringify(stderr.slice(0, 300))}`;
  }
  return wrongRefusal(row, bundle, lines[0].slice('Error: '.length));
}

/** Runs ``work`` over ``items``, ``width`` at a time, results in order. */
export async function pool(items, width, work) {
  const results = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await work(items[i], i);
    }
  }));
  return results;
}

async function main() {
  const root = mkdtempSync(join(tmpdir(), 'capkit-hostile-'));
  try {
    const image = writeGoodImage(root);
    const outcomes = await pool(ROWS, 2, async (row, i) => {
      const bundle = hostileBundle(row, join(root, `row${i}`));
      const problems = [await inProcessProblem(row, bundle, image), row.limits ? null : await cliProblem(row, bundle, image)];
      return problems.filter(Boolean);
    });
    outcomes.forEach((problems, i) => problems.forEach((p) => console.log(`${ROWS[i].name}: ${p}`)));
    const held = (want) => ROWS.filter((row, i) => want(row) && !outcomes[i].length).length;
    const legal = (row) => Boolean(row.loads);
    const lost = ROWS.filter((row, i) => legal(row) && outcomes[i].length).length;
    console.log(`hostile manifests, JavaScript runtime: tried ${ROWS.length}; refused cleanly with Python's line `
      + `${held((row) => !legal(row))}/${ROWS.filter((row) => !legal(row)).length}; legal bundles captioned `
      + `${held(legal)}/${ROWS.filter(legal).length}; results lost ${lost}`);
    process.exitCode = outcomes.some((p) => p.length) ? 1 : 0;
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
