import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { tiffOrientation } from '../src/image-file.js';
import { applyOrientation, normalize, resizeAndCrop, resizedSize, rgbaToRgb } from '../src/preprocess.js';
import { resize } from '../src/resample.js';

const cases = JSON.parse(readFileSync(new URL('./fixtures/pillow_resize.json', import.meta.url), 'utf8'));

test("resize equals Pillow's Image.resize exactly (bilinear, bicubic, lanczos; shrinking and enlarging)", () => {
  for (const c of cases) {
    const out = resize({ width: c.width, height: c.height, data: Uint8Array.from(c.data) }, c.out_width, c.out_height, c.interpolation);
    assert.deepEqual(Array.from(out.data), c.expected, `${c.width}x${c.height} -> ${c.out_width}x${c.out_height} ${c.interpolation}`);
  }
});

test("resized size and centre crop follow torchvision (Python's round half to even)", () => {
  assert.deepEqual(resizedSize(400, 40, 32), [320, 32]);
  assert.deepEqual(resizedSize(30, 300, 32), [32, 320]);
  const img = { width: 5, height: 4, data: Uint8Array.from({ length: 60 }, (_, i) => Math.floor(i / 3)) };
  const crop = resizeAndCrop(img, { resize: 4, crop: 2, mean: [0, 0, 0], std: [1, 1, 1], interpolation: 'bilinear' });
  // top = round(1.0) = 1, left = round(1.5) = 2 (half to even)
  assert.deepEqual(Array.from(crop.data).filter((_, i) => i % 3 === 0), [7, 8, 12, 13]);
  const padded = resizeAndCrop({ width: 2, height: 2, data: new Uint8Array(12).fill(200) },
    { resize: 2, crop: 4, mean: [0, 0, 0], std: [1, 1, 1], interpolation: 'bilinear' });
  assert.deepEqual(Array.from(padded.data).filter((_, i) => i % 3 === 0), [0, 0, 0, 0, 0, 200, 200, 0, 0, 200, 200, 0, 0, 0, 0, 0]);
});

test('alpha is composited onto white as Pillow does, and normalisation is float32', () => {
  const rgba = { width: 3, height: 1, data: Uint8Array.from([10, 20, 30, 0, 10, 20, 30, 255, 100, 0, 50, 128]) };
  const rgb = rgbaToRgb(rgba, true);
  assert.deepEqual(Array.from(rgb.data), [255, 255, 255, 10, 20, 30, 177, 127, 152]);
  const x = normalize({ width: 1, height: 1, data: Uint8Array.from([255, 0, 128]) }, { mean: [0.5, 0.5, 0.5], std: [0.25, 0.5, 1] });
  assert.deepEqual(Array.from(x), [Math.fround(0.5 / 0.25), -1, Math.fround(Math.fround(128 / 255) - 0.5)]);
});

test('EXIF orientation 6 turns the stored image 90 degrees clockwise; a broken block is ignored', () => {
  const img = { width: 2, height: 1, data: Uint8Array.from([1, 2]) };
  assert.deepEqual(applyOrientation(img, 6, 1), { width: 1, height: 2, data: Uint8Array.from([1, 2]) });
  assert.deepEqual(applyOrientation(img, 8, 1), { width: 1, height: 2, data: Uint8Array.from([2, 1]) });
  assert.deepEqual(applyOrientation(img, 3, 1).data, Uint8Array.from([2, 1]));
  assert.equal(tiffOrientation(Uint8Array.from([0x49, 0x49, 42, 0, 200, 0])), 1);
});
