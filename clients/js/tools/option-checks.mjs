#!/usr/bin/env node
// JavaScript's answer to each option set of the shared table (test/fixtures/option_checks.json):
// verifyOptions over DEFAULT_OPTIONS with the set's options, as the generator asks verify_options.
// Used by test/options.test.js and by tests/test_js_constants.py (against Python, live):
//   node tools/option-checks.mjs [table.json]   # prints the answers, one a case, as JSON
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { CapkitError } from '../src/errors.js';
import { DEFAULT_OPTIONS, verifyOptions } from '../src/options.js';

export const TABLE = fileURLToPath(new URL('../test/fixtures/option_checks.json', import.meta.url));

/**
 * {accepted: the checked options} or {error: the error's class name, message}.
 * @param {Record<string, unknown>} given
 */
export function answer(given) {
  try {
    return { accepted: verifyOptions({ ...DEFAULT_OPTIONS, ...given }) };
  } catch (e) {
    if (!(e instanceof CapkitError)) throw e;
    return { error: e.name, message: e.message };
  }
}

/** The table's cases. @param {string} path @returns {{options: Record<string, unknown>, python?: object}[]} */
export function readTable(path = TABLE) {
  return JSON.parse(readFileSync(path, 'utf8'));
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const answers = readTable(process.argv[2]).map((c) => answer(c.options));
  process.stdout.write(`${JSON.stringify(answers, (_, v) => (typeof v === 'bigint' ? String(v) : v))}\n`);
}
