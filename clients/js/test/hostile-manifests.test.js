import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import {
  ROWS, cliProblem, hostileBundle, inProcessProblem, pool, writeGoodImage,
} from '../tools/hostile-manifests.mjs';

// The shared table of hostile manifests (fixtures/hostile_manifests.json; tests/test_manifest_contract.py
// checks that capkit.runtime answers each row with its line): the Node runtime must answer each the same.
const root = mkdtempSync(join(tmpdir(), 'capkit-hostile-'));
after(() => rmSync(root, { recursive: true, force: true }));
const image = writeGoodImage(root);
const bundles = new Map(); // each row's bundle, made once (loading it changes nothing)
const bundleOf = (row) => bundles.get(row) ?? bundles.set(row, hostileBundle(row, join(root, `row${bundles.size}`))).get(row);

test('the Node runtime refuses every hostile manifest of the shared table with Python\'s line, and loads the legal ones', async () => {
  assert.ok(ROWS.length >= 150);
  const problems = await pool(ROWS, 2, async (row) => [row.name, await inProcessProblem(row, bundleOf(row), image)]);
  assert.deepEqual(problems.filter(([, problem]) => problem), []);
});

// Every row through the CLI takes a minute (a Node process each): `node tools/hostile-manifests.mjs` runs them
// all (so does a slow test of tests/test_manifest_contract.py); here the rows whose line is not all capkit's
// (ONNX Runtime's, JSON's), a caption that fails, two legal bundles and every 25th row.
const legal = ROWS.filter((row) => row.loads).slice(0, 2);
const CLI_ROWS = ROWS.filter((row, i) => !row.limits && (legal.includes(row) || row.caption_fails || row.contains || i % 25 === 0));

test(`the CLI answers ${CLI_ROWS.length} rows in one line, exit 1 (exit 0 and a caption for a legal bundle), no stack trace`, async () => {
  const problems = await pool(CLI_ROWS, 2, async (row) => [row.name, await cliProblem(row, bundleOf(row), image)]);
  assert.deepEqual(problems.filter(([, problem]) => problem), []);
});

