import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { test } from 'node:test';
import ts from 'typescript';

// Files a newcomer can hold: no source file over MAX_FILE_LINES lines, no function over MAX_FUNCTION_LINES.
const MAX_FILE_LINES = 300;
const MAX_FUNCTION_LINES = 60;
const FOLDERS = ['src', 'bin', 'tools'];

const sources = FOLDERS.flatMap((folder) => readdirSync(new URL(`../${folder}/`, import.meta.url))
  .filter((name) => /\.m?js$/.test(name)).map((name) => `${folder}/${name}`));

/** Every function, method and arrow function of a file: [its name or position, its lines]. */
function functionLengths(path) {
  const text = readFileSync(new URL(`../${path}`, import.meta.url), 'utf8');
  const file = ts.createSourceFile(path, text, ts.ScriptTarget.Latest, true);
  const lengths = [];
  const visit = (node) => {
    if (ts.isFunctionLike(node) && 'body' in node && node.body) {
      const first = file.getLineAndCharacterOfPosition(node.getStart(file)).line;
      const last = file.getLineAndCharacterOfPosition(node.getEnd()).line;
      lengths.push([`${path}:${first + 1} ${node.name ? node.name.getText(file) : '(anonymous)'}`, last - first + 1]);
    }
    ts.forEachChild(node, visit);
  };
  visit(file);
  return lengths;
}

test(`no source file is over ${MAX_FILE_LINES} lines, no function over ${MAX_FUNCTION_LINES}`, () => {
  assert.ok(sources.includes('src/preprocess.js') && sources.includes('bin/caption.js'));
  for (const path of sources) {
    const lines = readFileSync(new URL(`../${path}`, import.meta.url), 'utf8').split('\n').length - 1;
    assert.ok(lines <= MAX_FILE_LINES, `${path} has ${lines} lines`);
    for (const [where, length] of functionLengths(path)) assert.ok(length <= MAX_FUNCTION_LINES, `${where} has ${length} lines`);
  }
});
