// JPEG EXIF orientation for the Node host, as nst's Python side applies it (PIL's ImageOps.exif_transpose): read
// tag 0x0112 from the APP1 "Exif" segment's first IFD, then flip / rotate the decoded RGB pixels upright.

/** The EXIF orientation (1..8) of JPEG `bytes`, 1 when there is none or it cannot be read. */
export function exifOrientation(bytes) {
  let p = 2;                                             // after SOI
  while (p + 4 <= bytes.length && bytes[p] === 0xff) {
    const marker = bytes[p + 1];
    const length = (bytes[p + 2] << 8) | bytes[p + 3];
    if (marker === 0xda || marker === 0xd9) break;       // start of scan / end of image: no more metadata
    if (marker === 0xe1 && length >= 16 && String.fromCharCode(...bytes.subarray(p + 4, p + 8)) === 'Exif') {
      return tiffOrientation(bytes.subarray(p + 10, p + 2 + length));
    }
    p += 2 + length;
  }
  return 1;
}

function tiffOrientation(tiff) {
  if (tiff.length < 8) return 1;
  const little = tiff[0] === 0x49 && tiff[1] === 0x49;   // "II": little-endian, "MM": big-endian
  const u16 = (o) => (little ? tiff[o] | (tiff[o + 1] << 8) : (tiff[o] << 8) | tiff[o + 1]);
  const u32 = (o) => (little ? u16(o) + u16(o + 2) * 65536 : u16(o) * 65536 + u16(o + 2));
  const ifd = u32(4);
  if (ifd + 2 > tiff.length) return 1;
  const entries = u16(ifd);
  for (let i = 0; i < entries; i++) {
    const e = ifd + 2 + 12 * i;
    if (e + 12 > tiff.length) return 1;
    if (u16(e) === 0x0112) {                             // Orientation, type SHORT, the value in the entry itself
      const value = u16(e + 8);
      return value >= 1 && value <= 8 ? value : 1;
    }
  }
  return 1;
}

/** {width, height, rgb} turned upright for EXIF orientation `o`: 2 mirror, 3 rotate 180, 4 flip, 5 transpose,
 * 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise (1: the image itself). */
export function orient(image, o) {
  if (!(o >= 2 && o <= 8)) return image;
  const { width: w, height: h, rgb } = image;
  const swap = o >= 5;
  const W = swap ? h : w;
  const H = swap ? w : h;
  const out = new Uint8Array(rgb.length);
  for (let i = 0; i < H; i++) {
    for (let j = 0; j < W; j++) {
      let y; let x;                                      // the source pixel of output row i, column j
      switch (o) {
        case 2: y = i; x = w - 1 - j; break;
        case 3: y = h - 1 - i; x = w - 1 - j; break;
        case 4: y = h - 1 - i; x = j; break;
        case 5: y = j; x = i; break;
        case 6: y = h - 1 - j; x = i; break;
        case 7: y = h - 1 - j; x = w - 1 - i; break;
        default: y = j; x = w - 1 - i; break;           // 8
      }
      const s = 3 * (y * w + x);
      const d = 3 * (i * W + j);
      out[d] = rgb[s]; out[d + 1] = rgb[s + 1]; out[d + 2] = rgb[s + 2];
    }
  }
  return { width: W, height: H, rgb: out };
}
