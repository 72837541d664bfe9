#!/usr/bin/env node
// capkit-js BUNDLE IMAGE... [--temperature T] [--top-k K] [--top-p P] [--beam N] [--max-length N] [--seed S] [--json]
import { Captioner, CapkitError, OPTION_NAMES } from '../src/node.js';

const flags = OPTION_NAMES.map((name) => `[--${name.replace('_', '-')} ${name.replace('_', '-').toUpperCase()}]`);
const args = process.argv.slice(2);
/** @type {Record<string, number | bigint>} */
const options = {};
const files = [];
let json = false;
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === '--json') json = true;
  else if (a.startsWith('--')) {
    const name = a.slice(2).replace(/-/g, '_');
    const text = String(args[++i]);
    options[name] = name === 'seed' && /^[0-9]+$/.test(text) ? BigInt(text) : Number(text); // a seed beyond 2**53 stays exact
  } else files.push(a);
}
if (files.length < 2) {
  console.error(`usage: capkit-js BUNDLE IMAGE... ${flags.join(' ')} [--json]`);
  process.exit(2);
}
try {
  const captioner = await Captioner.create(files[0]);
  let failed = 0;
  for (const image of files.slice(1)) {
    try {
      const c = await captioner.caption(image, options);
      console.log(json ? JSON.stringify({ image, caption: c.text, tokens: c.tokens, logprob: c.logprob }) : `${image}: ${c.text}`);
    } catch (e) {
      if (!(e instanceof CapkitError)) throw e;
      failed++;
      console.error(`Error: ${e.message}`);
    }
  }
  process.exit(failed ? 1 : 0);
} catch (e) {
  if (!(e instanceof CapkitError)) throw e;
  console.error(`Error: ${e.message}`);
  process.exit(1);
}
