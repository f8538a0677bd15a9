import { describe, expect, it } from "vitest";
import { dominantFrequency, formatDuration, rms, waveform } from "./analysis";

describe("analysis", () => {
  it("finds the loudest frequency between bins", () => {
    const fft = 4096;
    const rate = 48_000;
    const db = new Float32Array(fft / 2).fill(-120);
    const bin = (440 * fft) / rate; // 37.5
    db[37] = -20;
    db[38] = -20;
    expect(Math.abs(dominantFrequency(db, rate, fft) - bin * (rate / fft))).toBeLessThan(1);
  });

  it("measures level, draws a normalised waveform, formats durations", () => {
    expect(rms(new Float32Array([1, -1, 1, -1]))).toBe(1);
    expect(waveform(new Float32Array([0, 0.5, 0, 0.25]), 2)).toEqual([1, 0.5]);
    expect(formatDuration(61_400)).toBe("1:01");
  });
});
