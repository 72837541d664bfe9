// The page: choose or drop an image, see its caption; the options re-caption it. The bundle is
// fetched from ./bundle/ next to this page; nothing is sent anywhere.
import { Captioner, OPTION_NAMES } from './js/browser.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const threads = Number(params.get('threads') || 1);
// After loading, the page runs the model on a blank image for this long (?warmup=MS; 0: not at all), so that the
// first caption finds V8's optimised WebAssembly instead of its baseline code (several times slower; docs/js.md)
const warmupMs = Number(params.get('warmup') ?? 3000);
window.capkitWarmUpMs = warmupMs; // for the speed report's table (reports/js_speed.py)
let captioner = null;
let warming = null; // {controller, done}: the warm-up under way
let readyStatus = '';
let current = null; // the chosen File
let run = 0;

function show(state, { caption = '', error = '', status = '' } = {}) {
  document.body.dataset.state = state;
  $('caption').textContent = caption;
  $('error').textContent = error;
  $('status').textContent = status;
}

/** The form's field of each option it has (an input whose id is the option's name). */
const fields = OPTION_NAMES.map((name) => [name, $(name)]).filter(([, field]) => field);

/** The option fields: empty -> the bundle's default; a number where one parses, else the text (refused by the checks). */
function options() {
  const out = {};
  for (const [name, field] of fields) {
    const text = field.value.trim();
    if (text === '') continue;
    // a seed beyond 2**53 stays exact as a BigInt, as the command line reads it
    out[name] = name === 'seed' && /^[0-9]+$/.test(text) ? BigInt(text) : Number.isNaN(Number(text)) ? text : Number(text);
  }
  return out;
}

/** Stops the warm-up after its caption under way, once a real caption is asked for. */
async function stopWarmUp() {
  if (!warming) return;
  warming.controller.abort();
  await warming.done;
  warming = null;
}

async function caption() {
  if (!captioner || !current) return;
  const mine = ++run;
  show('busy', { status: 'Captioning…' });
  try {
    await stopWarmUp();
    if (mine !== run) return;
    const started = performance.now();
    const timings = {};
    const result = await captioner.caption(current, options(), timings);
    const ms = performance.now() - started;
    if (mine !== run) return;
    window.capkitLast = { ...result, ms, timings };
    const t = timings;
    const where = `image ${(t.decode_ms + t.preprocess_ms).toFixed(1)}, encoder ${t.encoder_ms.toFixed(1)}, ${t.steps} steps ${t.steps_ms.toFixed(1)}`;
    show('done', { caption: result.text || '(no words)', status: `${ms.toFixed(1)} ms (${where}), ${threads} WASM thread${threads > 1 ? 's' : ''}` });
  } catch (e) {
    if (mine !== run) return;
    show('error', { error: e.name && e.name.endsWith('Error') && e.name !== 'Error' && e.name !== 'TypeError' ? e.message : `unexpected: ${e.message}` });
  }
}

function choose(file) {
  if (!file) return;
  current = file;
  const preview = $('preview');
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  caption();
}

$('file').addEventListener('change', (e) => choose(e.target.files[0]));
$('options').addEventListener('input', () => caption());
$('options').addEventListener('submit', (e) => e.preventDefault());
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); choose(e.dataTransfer.files[0]); });

try {
  captioner = await Captioner.create(params.get('bundle') || './bundle/', { threads });
  window.capkitCaptioner = captioner;
  for (const [name, field] of fields) { // an empty field means the bundle's default: show it
    const value = captioner.defaults[name];
    if (value !== null) field.placeholder = name === 'temperature' && value === 0 ? '0 (greedy)' : String(value);
  }
  readyStatus = `Ready (${threads} WASM thread${threads > 1 ? 's' : ''}${crossOriginIsolated ? '' : ', not cross-origin isolated'})`;
  if (warmupMs !== 0 && !current) { // a bad ?warmup= reaches warmUp, whose one-line refusal the page shows
    const controller = new AbortController();
    let failed = '';
    const done = captioner.warmUp(warmupMs, { signal: controller.signal }).catch((e) => { failed = e.message; return 0; }).then((runs) => {
      window.capkitWarmUps = runs;
      if (document.body.dataset.state === 'ready') show('ready', { status: readyStatus, error: failed && `no warm-up: ${failed}` });
    });
    warming = { controller, done };
  }
  show('ready', { status: warming ? `${readyStatus.slice(0, -1)}, warming up)` : readyStatus });
  if (current) caption();
} catch (e) {
  show('error', { error: e.message, status: 'The model could not be loaded.' });
}
