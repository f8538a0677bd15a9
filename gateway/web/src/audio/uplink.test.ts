import { describe, expect, it } from "vitest";
import { ChunkUplink, type OutChunk } from "./uplink";

function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
  return { promise, resolve, reject };
}

describe("ChunkUplink", () => {
  it("sends nothing before the start, then one append at a time with what piled up, then the end", async () => {
    const started = deferred<void>();
    const appends: number[][] = [];
    let inFlight = 0;
    let maxInFlight = 0;
    const ends: unknown[] = [];
    const up = new ChunkUplink<string>({
      start: () => started.promise,
      append: async (chunks: OutChunk[]) => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        appends.push(chunks.map((c) => c.index));
        await new Promise((r) => setTimeout(r, 5));
        inFlight--;
        return chunks[chunks.length - 1]!.index + 1;
      },
      end: async (t) => {
        ends.push(t);
        return "header";
      },
    });
    up.push(new Uint8Array(3), 0);
    up.push(new Uint8Array(4), 100);
    await new Promise((r) => setTimeout(r, 10));
    expect(appends).toEqual([]);
    started.resolve();
    await new Promise((r) => setTimeout(r, 1));
    up.push(new Uint8Array(5), 200);
    up.push(new Uint8Array(6), 300);
    expect(await up.finish(400)).toBe("header");
    expect(appends.flat()).toEqual([0, 1, 2, 3]);
    expect(appends[0]).toEqual([0, 1]);
    expect(maxInFlight).toBe(1);
    expect(ends).toEqual([{ chunkCount: 4, sizeBytes: 18, durationMs: 400 }]);
    expect(up.durableCount).toBe(4);
  });

  it("retries transient failures with the same chunks and gives up on others", async () => {
    let calls = 0;
    const up = new ChunkUplink<string>(
      {
        start: async () => {},
        append: async (chunks) => {
          calls++;
          if (calls === 1) throw new Error("unavailable");
          return chunks.length;
        },
        end: async () => "ok",
      },
      { isTransient: (e) => e instanceof Error && e.message === "unavailable", retryDelayMs: () => 1 },
    );
    up.push(new Uint8Array(1), 0);
    expect(await up.finish(10)).toBe("ok");
    expect(calls).toBe(2);

    const refused = new ChunkUplink<string>({
      start: async () => {
        throw new Error("permission denied");
      },
      append: async () => 0,
      end: async () => "never",
    });
    refused.push(new Uint8Array(1), 0);
    await expect(refused.finish(10)).rejects.toThrow("permission denied");
  });
});
