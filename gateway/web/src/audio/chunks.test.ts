import { describe, expect, it } from "vitest";
import { ChunkAssembler, type BodyChunk } from "./chunks";

const chunk = (index: number): BodyChunk => ({ index, payload: new Uint8Array([index]), mediaTimeMs: index * 100 });

describe("ChunkAssembler", () => {
  it("emits in index order, drops repeats and reports a gap once", () => {
    const out: number[] = [];
    const gaps: [number, number][] = [];
    const a = new ChunkAssembler((c) => out.push(c.index), (from, to) => gaps.push([from, to]));
    a.add([chunk(0), chunk(1)]);
    a.add([chunk(1), chunk(4)]);
    a.add([chunk(5)]);
    expect(out).toEqual([0, 1]);
    expect(gaps).toEqual([[2, 4]]);
    a.add([chunk(2), chunk(3)]);
    expect(out).toEqual([0, 1, 2, 3, 4, 5]);
    expect(a.nextIndex).toBe(6);
    a.add([chunk(0), chunk(3)]);
    expect(out).toHaveLength(6);
  });
});
