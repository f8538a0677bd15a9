import { describe, expect, it } from "vitest";
import { TimeStretch } from "./time_stretch";

const RATE = 48_000;

function tone(hz: number, seconds: number): Float32Array {
  const out = new Float32Array(Math.round(RATE * seconds));
  for (let i = 0; i < out.length; i++) out[i] = 0.5 * Math.sin((2 * Math.PI * hz * i) / RATE);
  return out;
}

/** Pitch by upward zero crossings, over the middle of the signal (edges fade in and out). */
function pitch(x: Float32Array): number {
  const from = Math.floor(x.length * 0.2);
  const to = Math.floor(x.length * 0.8);
  let crossings = 0;
  for (let i = from + 1; i < to; i++) if (x[i - 1]! < 0 && x[i]! >= 0) crossings++;
  return crossings / ((to - from) / RATE);
}

/** Fed as a decoder gives it: 20 ms frames (960 samples). */
function stretch(x: Float32Array, rate: number): Float32Array {
  const s = new TimeStretch(1, rate);
  const parts: Float32Array[] = [];
  for (let at = 0; at < x.length; at += 960) parts.push(s.push([x.subarray(at, at + 960)])[0]!);
  parts.push(s.flush()[0]!);
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

describe("TimeStretch", () => {
  for (const rate of [1.5, 2]) {
    it(`plays ${rate}x faster at the same pitch`, () => {
      const input = tone(440, 3);
      const out = stretch(input, rate);
      expect(out.length / input.length).toBeGreaterThan(1 / rate - 0.03);
      expect(out.length / input.length).toBeLessThan(1 / rate + 0.03);
      expect(Math.abs(pitch(out) - 440)).toBeLessThan(10); // a playbackRate change gives 440 * rate
    });
  }

  it("keeps the level (the windows sum to one)", () => {
    const out = stretch(tone(300, 2), 2);
    const mid = out.subarray(out.length / 4, (out.length * 3) / 4);
    let peak = 0;
    for (const v of mid) peak = Math.max(peak, Math.abs(v));
    expect(peak).toBeGreaterThan(0.45);
    expect(peak).toBeLessThan(0.55);
  });
});
