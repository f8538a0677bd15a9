/** Signal measures for the meter, the waveform and the tests' pitch check. */

export function rms(samples: Float32Array): number {
  let sum = 0;
  for (const s of samples) sum += s * s;
  return Math.sqrt(sum / Math.max(1, samples.length));
}

/** The frequency (Hz) of the loudest bin of an analyser's dB spectrum, refined by parabola. */
export function dominantFrequency(db: Float32Array, sampleRate: number, fftSize: number): number {
  let best = 1;
  for (let i = 2; i < db.length - 1; i++) if (db[i]! > db[best]!) best = i;
  const a = db[best - 1] ?? db[best]!;
  const b = db[best]!;
  const c = db[best + 1] ?? db[best]!;
  const denom = a - 2 * b + c;
  const shift = denom === 0 ? 0 : (0.5 * (a - c)) / denom;
  return ((best + shift) * sampleRate) / fftSize;
}

/** ``bars`` peak levels (0..1) across ``samples``: the waveform drawn for a voice message. */
export function waveform(samples: Float32Array, bars: number): number[] {
  const out: number[] = [];
  const step = Math.max(1, Math.floor(samples.length / bars));
  let max = 0;
  for (let b = 0; b < bars; b++) {
    let peak = 0;
    for (let i = b * step; i < Math.min(samples.length, (b + 1) * step); i++) {
      const v = Math.abs(samples[i]!);
      if (v > peak) peak = v;
    }
    out.push(peak);
    if (peak > max) max = peak;
  }
  return max > 0 ? out.map((v) => v / max) : out;
}

export function formatDuration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}
