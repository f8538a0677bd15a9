/**
 * Faster (or slower) playback that keeps the pitch: WSOLA (waveform-similarity overlap-add),
 * streaming. Voice caught up at 1.5x or 2x must sound like the same person talking faster,
 * not an octave higher, as an HTMLMediaElement's `preservesPitch` gives the WebM path; the
 * WebCodecs (Ogg/Opus) path plays AudioBuffers, whose `playbackRate` changes pitch, so its
 * decoded PCM goes through this first.
 *
 * Frames of FRAME samples are taken from the input every `rate * HOP` samples (each moved by up
 * to TOLERANCE to where it best continues the previous one) and laid down every HOP samples
 * with a Hann window (which sums to one at 50% overlap).
 */
import { joined } from "./typed_arrays";

const FRAME = 1536; // 32 ms at 48 kHz: a few pitch periods of any voice
const HOP = FRAME / 2;
const TOLERANCE = 384; // how far a frame may move to line up with the waveform (8 ms)
const STEP = 4; // the similarity search looks at every 4th lag, then refines around the best

const WINDOW = (() => {
  const w = new Float32Array(FRAME);
  for (let i = 0; i < FRAME; i++) w[i] = 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / FRAME);
  return w;
})();

export class TimeStretch {
  /** Input not yet consumed, per channel; `base` is the input position of its first sample. */
  private input: Float32Array[];
  private base = 0;
  /** Where the next frame would be taken with no search (input position, fractional). */
  private ideal = 0;
  /** Input position just after the previous frame's first HOP samples: its natural continuation. */
  private natural = -1;
  /** Output being summed: the tail of the previous frame (FRAME - HOP samples). */
  private overlap: Float32Array[];
  rate: number;

  constructor(
    readonly channels: number,
    rate: number,
  ) {
    this.rate = rate;
    this.input = Array.from({ length: channels }, () => new Float32Array(0));
    this.overlap = Array.from({ length: channels }, () => new Float32Array(FRAME - HOP));
  }

  /** Feed decoded samples (one plane per channel, equal lengths); returns the finished output. */
  push(planes: Float32Array[]): Float32Array[] {
    for (let ch = 0; ch < this.channels; ch++) this.input[ch] = joined([this.input[ch]!, planes[ch]!], (n) => new Float32Array(n));
    const out: Float32Array[][] = Array.from({ length: this.channels }, () => []);
    for (;;) {
      const start = this.nextFrame();
      if (start === null) break;
      for (let ch = 0; ch < this.channels; ch++) out[ch]!.push(this.layDown(ch, start - this.base));
      this.natural = start + HOP;
      this.ideal += this.rate * HOP;
      this.trim();
    }
    return out.map((parts) => joined(parts, (n) => new Float32Array(n)));
  }

  /** The rest of the output once the input has ended. */
  flush(): Float32Array[] {
    const tail = this.overlap.map((o) => o.slice());
    this.overlap = this.overlap.map((o) => new Float32Array(o.length));
    this.input = this.input.map(() => new Float32Array(0));
    return tail;
  }

  /** The next frame's input position, or null until enough input is buffered. */
  private nextFrame(): number | null {
    const end = this.base + this.input[0]!.length;
    const ideal = Math.round(this.ideal);
    if (ideal + TOLERANCE + FRAME > end) return null;
    if (this.natural < 0) return ideal; // the first frame: nothing to line up with
    if (this.natural + FRAME > end) return null;
    const lo = Math.max(this.base, ideal - TOLERANCE);
    const hi = ideal + TOLERANCE;
    const score = (at: number) => similarity(this.input[0]!, this.natural - this.base, at - this.base);
    let best = lo;
    let bestScore = -Infinity;
    for (let at = lo; at <= hi; at += STEP) {
      const s = score(at);
      if (s > bestScore) [best, bestScore] = [at, s];
    }
    for (let at = Math.max(lo, best - STEP + 1); at <= Math.min(hi, best + STEP - 1); at++) {
      const s = score(at);
      if (s > bestScore) [best, bestScore] = [at, s];
    }
    return best;
  }

  /** Add the frame at ``from`` (index into this channel's input) and return the HOP finished samples. */
  private layDown(ch: number, from: number): Float32Array {
    const src = this.input[ch]!;
    const overlap = this.overlap[ch]!;
    const summed = new Float32Array(FRAME);
    summed.set(overlap);
    for (let i = 0; i < FRAME; i++) summed[i]! += WINDOW[i]! * src[from + i]!;
    this.overlap[ch] = summed.slice(HOP);
    return summed.slice(0, HOP);
  }

  /** Drop input no later frame can use. */
  private trim(): void {
    const keepFrom = Math.min(Math.round(this.ideal) - TOLERANCE, this.natural);
    const drop = keepFrom - this.base;
    if (drop <= 0) return;
    this.input = this.input.map((plane) => plane.slice(drop));
    this.base += drop;
  }
}

/** Cross-correlation of two FRAME-long stretches of ``x`` (every 2nd sample: enough to align). */
function similarity(x: Float32Array, a: number, b: number): number {
  let sum = 0;
  for (let i = 0; i < FRAME; i += 2) sum += x[a + i]! * x[b + i]!;
  return sum;
}
