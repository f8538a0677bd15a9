/**
 * Microphone capture. MediaRecorder in short timeslices: each slice is a chunk of one
 * WebM/Opus file, sent while recording goes on. A second capture (WebRTC's 20 ms frames)
 * implements the same interface; the talk controller does not care which one runs.
 */
import { rms } from "./analysis";

export interface CapturedChunk {
  payload: Uint8Array;
  mediaTimeMs: number;
}

export interface VoiceCapture {
  readonly contentType: string;
  /** Start recording; ``onChunk`` gets each slice in order. Resolves once frames flow. */
  start(onChunk: (c: CapturedChunk) => void): Promise<void>;
  /** Stop; resolves after the last chunk was handed over, with the recorded duration. */
  stop(): Promise<number>;
  /** The microphone's level now (0..1), for the meter. */
  level(): number;
}

export const WEBM_OPUS = "audio/webm;codecs=opus";

/** The level of a microphone stream (0..1, RMS), for the meter beside the talk button:
 * whichever transport carries the voice (MediaRecorder chunks or a WebRTC track). */
export class MicrophoneMeter {
  private readonly analyser: AnalyserNode;
  private readonly source: MediaStreamAudioSourceNode;
  private readonly samples = new Float32Array(1024);

  constructor(ctx: AudioContext, stream: MediaStream) {
    this.source = ctx.createMediaStreamSource(stream);
    this.analyser = ctx.createAnalyser();
    this.source.connect(this.analyser);
  }

  level(): number {
    this.analyser.getFloatTimeDomainData(this.samples);
    return rms(this.samples);
  }

  close(): void {
    this.source.disconnect();
  }
}

export class MediaRecorderCapture implements VoiceCapture {
  readonly contentType = WEBM_OPUS;
  private stream: MediaStream | null = null;
  private recorder: MediaRecorder | null = null;
  private meter: MicrophoneMeter | null = null;
  private startedAt = 0;
  /** Every slice read so far, in order: stop() resolves only after the last one was handed over. */
  private reads: Promise<void> = Promise.resolve();
  constructor(
    private readonly timesliceMs = 100,
    private readonly ctx: () => AudioContext,
  ) {}

  private async microphone(): Promise<MediaStream> {
    if (this.stream && this.stream.getAudioTracks().some((t) => t.readyState === "live")) return this.stream;
    if (!navigator.mediaDevices?.getUserMedia) throw new Error("this browser gives no microphone access (a secure origin is needed)");
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } });
    } catch (e) {
      throw new Error(`no microphone: ${e instanceof Error ? e.message : String(e)}. Allow microphone access for this site.`);
    }
    this.meter?.close();
    this.meter = new MicrophoneMeter(this.ctx(), this.stream);
    return this.stream;
  }

  async start(onChunk: (c: CapturedChunk) => void): Promise<void> {
    if (!MediaRecorder.isTypeSupported(WEBM_OPUS)) throw new Error("this browser cannot record WebM/Opus");
    const stream = await this.microphone();
    const recorder = new MediaRecorder(stream, { mimeType: WEBM_OPUS, audioBitsPerSecond: 32_000 });
    this.recorder = recorder;
    this.reads = Promise.resolve();
    recorder.addEventListener("dataavailable", (e: BlobEvent) => {
      if (!e.data.size) return;
      const mediaTimeMs = Math.round(performance.now() - this.startedAt);
      // Each slice is read after the one before it, so chunks keep their order however long
      // a read takes on a busy machine.
      const blob = e.data;
      this.reads = this.reads
        .then(() => blob.arrayBuffer())
        .then((b) => onChunk({ payload: new Uint8Array(b), mediaTimeMs }));
    });
    await new Promise<void>((resolve, reject) => {
      recorder.addEventListener("start", () => resolve(), { once: true });
      recorder.addEventListener("error", () => reject(new Error("the recorder failed to start")), { once: true });
      this.startedAt = performance.now();
      recorder.start(this.timesliceMs);
    });
  }

  async stop(): Promise<number> {
    const recorder = this.recorder;
    this.recorder = null;
    if (!recorder || recorder.state === "inactive") return 0;
    await new Promise<void>((resolve) => {
      recorder.addEventListener("stop", () => resolve(), { once: true });
      recorder.stop();
    });
    // The last slice's dataavailable comes before "stop"; its read may finish later.
    await this.reads;
    return Math.round(performance.now() - this.startedAt);
  }

  level(): number {
    return this.meter?.level() ?? 0;
  }
}
