/**
 * MurmurHash3 x86 32-bit: the hash plg's flag bucketing is specified on (docs/growth.md, "Bucketing").
 * The same function as sdk/plg_sdk/murmur3.py; both are pinned by sdk/testdata/flag_buckets.json.
 */

const encoder = new TextEncoder();

/** MurmurHash3_x86_32 of `data` with `seed`, as an unsigned 32-bit integer. */
export function murmur3(data: Uint8Array, seed = 0): number {
  const length = data.length;
  const nblocks = length >>> 2;
  let h = seed >>> 0;
  let i = 0;
  for (let b = 0; b < nblocks; b++, i += 4) {
    let k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24);
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  const tail = length & 3;
  if (tail) {
    let k = 0;
    if (tail === 3) k ^= data[i + 2] << 16;
    if (tail >= 2) k ^= data[i + 1] << 8;
    k ^= data[i];
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
  }
  h ^= length;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** MurmurHash3 of a string's UTF-8 bytes. */
export function murmur3String(text: string, seed = 0): number {
  return murmur3(encoder.encode(text), seed);
}
