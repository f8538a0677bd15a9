/** UUIDv7 (RFC 9562): a millisecond timestamp then random bits, so ids sort by creation. */
export function uuidv7(now: number = Date.now(), random: Uint8Array = randomBytes(10)): string {
  const bytes = new Uint8Array(16);
  let ms = BigInt(Math.floor(now));
  for (let i = 5; i >= 0; i--) {
    bytes[i] = Number(ms & 0xffn);
    ms >>= 8n;
  }
  bytes.set(random.subarray(0, 10), 6);
  bytes[6] = (bytes[6]! & 0x0f) | 0x70; // version 7
  bytes[8] = (bytes[8]! & 0x3f) | 0x80; // variant 10
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  crypto.getRandomValues(out);
  return out;
}

/** This tab's device id: every tab is a device of its own (one updates stream each). */
export function deviceId(storage: Storage = sessionStorage): string {
  let id = storage.getItem("voxmesh.device");
  if (!id) {
    id = `web-${uuidv7().slice(-12)}`;
    storage.setItem("voxmesh.device", id);
  }
  return id;
}
