import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DecodingOptionsError, pythonRepr } from '../src/errors.js';
import { DEFAULT_OPTIONS, verifyOptions } from '../src/options.js';
import { answer, readTable } from '../tools/option-checks.mjs';

test("every option set of the shared table gets Python's answer: the same checked options, or the same error and line", () => {
  const cases = readTable();
  assert.ok(cases.length >= 20 && cases.some((c) => 'accepted' in c.python) && cases.some((c) => 'error' in c.python));
  for (const c of cases) assert.deepEqual(answer(c.options), c.python, JSON.stringify(c.options));
});

test('JavaScript-only values: a BigInt seed is kept exact, a BigInt beyond float range is refused as Python refuses it', () => {
  const seed = 2n ** 64n + 3n;
  assert.equal(verifyOptions({ ...DEFAULT_OPTIONS, seed }).seed, seed);
  assert.throws(() => verifyOptions({ ...DEFAULT_OPTIONS, temperature: 10n ** 400n }),
    (e) => e instanceof DecodingOptionsError && e.message === 'temperature must be a finite number, got an integer of 401 digits');
  assert.throws(() => verifyOptions({ ...DEFAULT_OPTIONS, beam: undefined }),
    (e) => e instanceof DecodingOptionsError && e.message === 'beam must be an integer, got None');
});

test("values in messages are spelled as Python's repr spells them", () => {
  const cycle = [1];
  cycle.push(cycle);
  const cases = [[null, 'None'], [false, 'False'], [2, '2'], [1e-5, '1e-05'], [-1.5e16, '-1.5e+16'], [Infinity, 'inf'],
    [NaN, 'nan'], ["it's", '"it\'s"'], ['a\tb\u00a0', "'a\\tb\\xa0'"], [{ k: [true] }, "{'k': [True]}"], [cycle, '[1, [...]]']];
  for (const [value, repr] of cases) assert.equal(pythonRepr(value), repr);
});
