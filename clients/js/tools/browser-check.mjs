#!/usr/bin/env node
// Used by tests/test_js_parity.py: drives the page (clients/web) in headless Chromium with puppeteer-core.
//   node tools/browser-check.mjs job.json out.json
// job: {url, tamperedUrl, image, corrupt, outDir, repeats, threads: [1, 4]}; the page captioning `image` is saved as
// outDir/page.png, or as job.screenshot, with the preview shown job.previewScale times its size (pixelated; the
// caption is of the file as it is). With job.screenshotOnly (reports/js_page.py, the README's picture of the page)
// nothing else is checked; with job.timingOnly (reports/js_speed.py) only the timings are taken (out.timings: for each
// of job.threads, the median caption time and the median of each stage, after job.warmup captions whose times are
// kept in warmup_ms: V8 runs WebAssembly on its baseline compiler until it has optimised the hot functions; the page's
// own warm-up is turned off for them), and the first job.early captions of a page left to its warm-up (afterWarmUp_ms).
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';

const job = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const out = { pageErrors: [], timings: {} };
const browser = await puppeteer.launch({
  executablePath: job.chromium || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', `--user-data-dir=${mkdtempSync(join(tmpdir(), 'capkit-chromium-'))}`],
});
const settled = (page, states) => page.waitForFunction((s) => s.includes(document.body.dataset.state), { timeout: 120000 }, states);
const read = (page) => page.evaluate(() => ({ state: document.body.dataset.state, caption: document.getElementById('caption').textContent,
  error: document.getElementById('error').textContent, status: document.getElementById('status').textContent }));

async function open(url) {
  const page = await browser.newPage();
  await page.setViewport({ width: 720, height: 640 });
  page.on('pageerror', (e) => out.pageErrors.push(String(e.message || e)));
  await page.goto(url);
  await settled(page, ['ready', 'error']);
  return page;
}

async function upload(page, file) {
  await page.evaluate(() => { document.body.dataset.state = 'busy'; });
  const input = await page.$('#file');
  await input.uploadFile(file);
  await settled(page, ['done', 'error']);
  return read(page);
}

// the checks after the first caption: errors on the page, speed, a tampered bundle
async function checks(page) {
  // bad option: one line on the page, and the page goes on
  await page.evaluate(() => { document.body.dataset.state = 'busy'; });
  await page.type('#temperature', '-1');
  await settled(page, ['done', 'error']);
  out.badOption = await read(page);
  await page.$eval('#temperature', (el) => { el.value = ''; });
  out.corrupt = await upload(page, job.corrupt);
  out.afterCorrupt = await upload(page, job.image);
  await page.close();
  await timings();

  const badWarmUp = await open(`${job.url}?threads=1&warmup=-1`);
  await badWarmUp.waitForFunction(() => window.capkitWarmUps !== undefined, { timeout: 60000 });
  out.badWarmUp = await read(badWarmUp);
  await badWarmUp.close();

  const tampered = await open(job.tamperedUrl);
  out.tampered = await read(tampered);
  await tampered.close();
}

// the page's caption time, median of job.repeats after job.warmup captions (default 1), for each of job.threads: in
// all and per stage (Captioner.caption's timings)
async function timings() {
  const bytes = [...readFileSync(job.image)];
  for (const threads of job.threads || [1]) {
    const p = await open(`${job.url}?threads=${threads}&warmup=0`);
    out.timings[threads] = await p.evaluate(async (data, repeats, n, warmup) => {
      const captioner = window.capkitCaptioner;
      if (!captioner) return { error: document.getElementById('error').textContent };
      const { timeCaptions } = await import(new URL('./js/timings.js', document.baseURI).href);
      const timed = await timeCaptions(captioner, new Blob([new Uint8Array(data)], { type: 'image/png' }), { repeats, warmup });
      return { ...timed, isolated: crossOriginIsolated, threads: n, cores: navigator.hardwareConcurrency };
    }, bytes, job.repeats || 20, threads, Math.max(1, job.warmup || 1));
    await p.close();
    if (job.early) {
      const q = await open(`${job.url}?threads=${threads}`);
      await q.waitForFunction(() => window.capkitWarmUps !== undefined, { timeout: 60000 });
      Object.assign(out.timings[threads], await q.evaluate(async (data, count) => {
        const { timeCaptions } = await import(new URL('./js/timings.js', document.baseURI).href);
        const blob = new Blob([new Uint8Array(data)], { type: 'image/png' });
        const timed = await timeCaptions(window.capkitCaptioner, blob, { repeats: 0, warmup: count }); // the first `count`
        return { afterWarmUp_ms: timed.warmup_ms, pageWarmUps: window.capkitWarmUps, pageWarmUpMs: window.capkitWarmUpMs };
      }, bytes, job.early));
      await q.close();
    }
  }
}

try {
  if (job.timingOnly) {
    await timings();
  } else {
    const page = await open(`${job.url}?threads=1`);
    out.loaded = await read(page);
    out.good = await upload(page, job.image);
    out.good.tokens = await page.evaluate(() => window.capkitLast && window.capkitLast.tokens);
    out.warmUps = await page.evaluate(() => window.capkitWarmUps); // blank captions run before the upload stopped them
    if (job.previewScale) {
      await page.evaluate((scale) => {
        const preview = document.getElementById('preview');
        preview.style.width = `${preview.naturalWidth * scale}px`;
        preview.style.imageRendering = 'pixelated';
      }, job.previewScale);
    }
    await page.screenshot({ path: job.screenshot || join(job.outDir, 'page.png') });
    if (!job.screenshotOnly) await checks(page);
  }
} finally {
  await browser.close();
}
writeFileSync(process.argv[3], JSON.stringify(out));
