// Image files for the Node host: decode (PNG, JPEG) and write PNG. The pixel arithmetic (resize like Pillow's
// BILINEAR, the manifest's normalisation and back) is in pixels.mjs, re-exported here.
import fs from 'node:fs';
import path from 'node:path';
import jpeg from 'jpeg-js';
import pngjs from 'pngjs';
import { HostError } from './errors.mjs';
import { exifOrientation, orient } from './orientation.mjs';
import { rgbaToRgb } from './pixels.mjs';

export { rgbaToRgb, roundHalfEven, resizedSize, resizeBilinear, preprocess, deprocess } from './pixels.mjs';

const { PNG } = pngjs;

/** Decode a PNG or JPEG file to {width, height, rgb}; alpha is composited over white (as nst's Python side
 * does), a JPEG turned upright by its EXIF orientation (as nst's open_image). HostError naming the file for anything
 * unreadable. */
export function readImage(file) {
  let bytes;
  try {
    bytes = fs.readFileSync(file);
  } catch (e) {
    throw new HostError(`${file}: ${e.code === 'ENOENT' ? 'no such file' : e.code === 'EISDIR' ? 'is a directory' : e.message}`);
  }
  let rgba, width, height, orientation = 1;
  try {
    if (bytes.length >= 8 && bytes.readUInt32BE(0) === 0x89504e47) {
      const png = PNG.sync.read(bytes);
      ({ width, height } = png);
      rgba = png.data;
    } else if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) {
      const img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true, maxMemoryUsageInMB: 2048 });
      ({ width, height } = img);
      rgba = img.data;
      orientation = exifOrientation(bytes);
    } else {
      throw new Error('not a PNG or JPEG file');
    }
  } catch (e) {
    throw new HostError(`${file}: cannot decode the image (${String(e.message || e).split('\n')[0]})`);
  }
  if (!(width > 0 && height > 0)) throw new HostError(`${file}: empty image`);
  return orient({ width, height, rgb: rgbaToRgb(rgba, width, height) }, orientation);
}

/** Write 8-bit RGB as a PNG, atomically: a temporary file beside `file`, then rename. */
export function writePng(file, rgb, width, height) {
  const png = new PNG({ width, height, colorType: 2, inputColorType: 2, inputHasAlpha: false });
  png.data = Buffer.from(rgb.buffer, rgb.byteOffset, rgb.byteLength);
  const bytes = PNG.sync.write(png, { colorType: 2, inputColorType: 2, inputHasAlpha: false });
  writeAtomic(file, bytes);
}

/** Write bytes to `file` through a temporary file in the same directory and a rename; HostError on failure. */
export function writeAtomic(file, bytes) {
  const dir = path.dirname(path.resolve(file));
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.tmp`);
  try {
    fs.writeFileSync(tmp, bytes);
    fs.renameSync(tmp, file);
  } catch (e) {
    try { fs.unlinkSync(tmp); } catch { /* not created */ }
    throw new HostError(`${file}: cannot write (${e.code || e.message})`);
  }
}
