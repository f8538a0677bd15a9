/** Whole bodies (photos, files, waveforms) by byte range, and the chunks to upload one. */
import type { Router } from "./client";

export async function fetchBody(router: Router, threadId: string, messageId: string): Promise<{ bytes: Uint8Array; contentType: string }> {
  const parts: Uint8Array[] = [];
  let offset = 0n;
  let total = -1n;
  let contentType = "";
  while (total < 0n || offset < total) {
    const r = await router.readBodyRange({ threadId, messageId, offset, length: 0n });
    contentType = r.contentType;
    total = r.totalSizeBytes;
    if (!r.data.length) break;
    parts.push(r.data);
    offset += BigInt(r.data.length);
  }
  const out = new Uint8Array(Number(offset));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return { bytes: out, contentType };
}

/** ``bytes`` cut into chunks of at most ``size`` bytes (the mesh's chunk limit is 64 KiB). */
export function splitChunks(bytes: Uint8Array, size = 48 * 1024): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += size) out.push(bytes.subarray(i, Math.min(bytes.length, i + size)));
  return out.length ? out : [new Uint8Array(0)];
}
