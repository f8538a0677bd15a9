/**
 * The page's audio output: one AudioContext, everything played goes through one analyser to
 * the speakers. The analyser drives the level meter and tells when sound first comes out of a
 * message (mouth-to-ear latency) and at what pitch.
 */
import { dominantFrequency, rms } from "./analysis";
import { diagnostics } from "../diagnostics";

export class AudioOutput {
  readonly ctx: AudioContext;
  readonly input: GainNode;
  readonly analyser: AnalyserNode;
  private current: string | null = null;
  private heard = new Set<string>();
  private timer: number | undefined;
  level = 0;

  constructor() {
    this.ctx = new AudioContext({ latencyHint: "interactive" });
    this.input = this.ctx.createGain();
    this.analyser = this.ctx.createAnalyser();
    this.analyser.fftSize = 4096;
    this.analyser.smoothingTimeConstant = 0;
    this.input.connect(this.analyser);
    this.analyser.connect(this.ctx.destination);
  }

  async resume(): Promise<void> {
    if (this.ctx.state !== "running") await this.ctx.resume();
  }

  /** The message whose sound is coming out now (for the meter and the measurements). */
  playing(messageId: string | null): void {
    this.current = messageId;
    if (messageId && this.timer === undefined) {
      this.timer = window.setInterval(() => this.sample(), 10);
    } else if (!messageId && this.timer !== undefined) {
      window.clearInterval(this.timer);
      this.timer = undefined;
      this.level = 0;
    }
  }

  private readonly time = new Float32Array(2048);
  private freq: Float32Array<ArrayBuffer> | null = null;
  private lastTone = 0;

  private sample(): void {
    const id = this.current;
    if (!id) return;
    this.analyser.getFloatTimeDomainData(this.time);
    this.level = rms(this.time);
    if (this.level < 0.01) return;
    const now = diagnostics.now();
    if (!this.heard.has(id)) {
      this.heard.add(id);
      diagnostics.record({ type: "firstAudio", messageId: id, at: now });
    }
    if (now - this.lastTone >= 100) {
      this.lastTone = now;
      this.freq ??= new Float32Array(this.analyser.frequencyBinCount);
      this.analyser.getFloatFrequencyData(this.freq);
      const hz = dominantFrequency(this.freq, this.ctx.sampleRate, this.analyser.fftSize);
      diagnostics.record({ type: "tone", messageId: id, at: now, hz, level: this.level });
    }
  }
}

let output: AudioOutput | null = null;

/** Created on first use, after a user gesture (the browser's autoplay rule). */
export function audioOutput(): AudioOutput {
  output ??= new AudioOutput();
  return output;
}
