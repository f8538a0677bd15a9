/** Typed-array helpers shared by the Ogg parser and the time-stretch. */

type Samples = Uint8Array | Float32Array;

/** ``parts`` one after another in a new array made by ``make`` (the part itself if only one). */
export function joined<T extends Samples>(parts: T[], make: (length: number) => T): T {
  if (parts.length === 1) return parts[0]!;
  let length = 0;
  for (const p of parts) length += p.length;
  const out = make(length);
  let at = 0;
  for (const p of parts) {
    (out as Samples).set(p as ArrayLike<number>, at);
    at += p.length;
  }
  return out;
}
