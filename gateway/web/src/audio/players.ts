/**
 * Playing one voice message while its chunks still arrive. Two ways in, by content type:
 * - audio/webm;codecs=opus (browsers' MediaRecorder): Media Source Extensions, an <audio>
 *   element fed chunk by chunk;
 * - audio/ogg;codecs=opus (native clients): MSE does not take Ogg, so Opus packets are cut
 *   out of the Ogg pages and decoded with WebCodecs, then scheduled on the AudioContext.
 * Both end in the page's AudioOutput (meter, measurements). The chunk source (the updates
 * stream, ReadBody, or later a WebRTC track) is the caller's business: a player only takes
 * ordered chunks.
 */
import type { BodyChunk } from "./chunks";
import { OggOpusParser, opusPacketDurationUs } from "./ogg";
import type { AudioOutput } from "./output";
import { TimeStretch } from "./time_stretch";

export interface VoicePlayer {
  append(chunk: BodyChunk): void;
  /** No more chunks will come. */
  end(): void;
  setRate(rate: number): void;
  /** Seconds of audio received but not played yet. */
  ahead(): number;
  stop(): void;
  onEnded: () => void;
  onError: (text: string) => void;
}

export function isOgg(contentType: string): boolean {
  return contentType.toLowerCase().startsWith("audio/ogg");
}

export function createPlayer(contentType: string, out: AudioOutput): VoicePlayer {
  return isOgg(contentType) ? new WebCodecsOpusPlayer(out) : new MediaSourcePlayer(contentType, out);
}

class MediaSourcePlayer implements VoicePlayer {
  onEnded: () => void = () => {};
  onError: (text: string) => void = () => {};
  private readonly audio = new Audio();
  private readonly source = new MediaSource();
  private buffer: SourceBuffer | null = null;
  private readonly queue: Uint8Array[] = [];
  private ended = false;
  private stopped = false;
  private rate = 1;

  constructor(contentType: string, out: AudioOutput) {
    const mime = contentType.replace(/codecs=([^;"]+)/, 'codecs="$1"');
    this.audio.src = URL.createObjectURL(this.source);
    this.audio.preservesPitch = true;
    out.ctx.createMediaElementSource(this.audio).connect(out.input);
    this.source.addEventListener("sourceopen", () => {
      try {
        this.buffer = this.source.addSourceBuffer(MediaSource.isTypeSupported(mime) ? mime : 'audio/webm; codecs="opus"');
      } catch (e) {
        this.onError(`this browser cannot play ${contentType}: ${String(e)}`);
        return;
      }
      this.buffer.mode = "sequence";
      this.buffer.addEventListener("updateend", () => this.flush());
      this.flush();
    });
    this.audio.addEventListener("ended", () => this.finish());
    this.audio.addEventListener("error", () => {
      if (!this.stopped) this.onError(`playback failed: ${this.audio.error?.message ?? "media error"}`);
    });
  }

  private finish(): void {
    if (this.stopped) return;
    this.stopped = true;
    URL.revokeObjectURL(this.audio.src);
    this.onEnded();
  }

  append(chunk: BodyChunk): void {
    this.queue.push(chunk.payload);
    this.flush();
  }

  end(): void {
    this.ended = true;
    this.flush();
  }

  private flush(): void {
    const b = this.buffer;
    if (!b || b.updating || this.stopped) return;
    const next = this.queue.shift();
    if (next) {
      b.appendBuffer(next as Uint8Array<ArrayBuffer>);
      if (this.audio.paused) {
        this.audio.playbackRate = this.rate;
        this.audio.play().catch((e: unknown) => this.onError(`the browser blocked playback: ${String(e)}`));
      }
      return;
    }
    if (this.ended && this.source.readyState === "open") {
      this.source.endOfStream();
      if (!b.buffered.length) this.finish();
    }
  }

  setRate(rate: number): void {
    this.rate = rate;
    this.audio.playbackRate = rate;
  }

  ahead(): number {
    const b = this.buffer;
    if (!b || !b.buffered.length) return 0;
    return b.buffered.end(b.buffered.length - 1) - this.audio.currentTime;
  }

  stop(): void {
    this.audio.pause();
    this.finish();
  }
}

class WebCodecsOpusPlayer implements VoicePlayer {
  onEnded: () => void = () => {};
  onError: (text: string) => void = () => {};
  private readonly parser = new OggOpusParser();
  private decoder: AudioDecoder | null = null;
  private timestampUs = 0;
  private nextStart = 0;
  private rate = 1;
  private readonly sources = new Set<AudioBufferSourceNode>();
  private ended = false;
  private stopped = false;
  private skip = 0;
  private stretch: TimeStretch | null = null;

  constructor(private readonly out: AudioOutput) {
    if (typeof AudioDecoder === "undefined") {
      queueMicrotask(() => this.onError("this browser has no WebCodecs audio decoder: it cannot play Ogg/Opus live"));
    }
  }

  private ensureDecoder(): AudioDecoder | null {
    if (this.decoder || !this.parser.head || typeof AudioDecoder === "undefined") return this.decoder;
    const head = this.parser.head;
    this.skip = head.preSkip;
    this.decoder = new AudioDecoder({
      output: (data) => this.schedule(data),
      error: (e) => this.onError(`Opus decoding failed: ${e.message}`),
    });
    this.decoder.configure({
      codec: "opus",
      sampleRate: 48_000,
      numberOfChannels: head.channels,
      description: head.raw as Uint8Array<ArrayBuffer>,
    });
    return this.decoder;
  }

  append(chunk: BodyChunk): void {
    let packets: Uint8Array[];
    try {
      packets = this.parser.push(chunk.payload);
    } catch (e) {
      this.onError(String(e));
      return;
    }
    try {
      const decoder = this.ensureDecoder();
      if (!decoder) return;
      for (const p of packets) {
        decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: this.timestampUs, data: p }));
        this.timestampUs += opusPacketDurationUs(p);
      }
    } catch (e) {
      this.onError(`cannot decode Opus: ${String(e)}`);
    }
  }

  private schedule(data: AudioData): void {
    if (this.stopped) {
      data.close();
      return;
    }
    let planes: Float32Array[];
    try {
      planes = decodedPlanes(data);
    } catch (e) {
      this.onError(`cannot play decoded Opus audio: ${String(e)}`);
      return;
    } finally {
      data.close();
    }
    if (this.skip > 0) {
      const skipped = Math.min(this.skip, planes[0]!.length);
      this.skip -= skipped;
      planes = planes.map((p) => p.subarray(skipped));
    }
    if (this.rate !== 1 && !this.stretch) this.stretch = new TimeStretch(planes.length, this.rate);
    // Faster playback keeps the pitch (as the WebM path's preservesPitch does).
    this.play(this.stretch ? this.stretch.push(planes) : planes);
  }

  private play(planes: Float32Array[]): void {
    const frames = planes[0]?.length ?? 0;
    if (!frames) return;
    const ctx = this.out.ctx;
    const buf = ctx.createBuffer(planes.length, frames, 48_000);
    planes.forEach((plane, ch) => buf.copyToChannel(plane as Float32Array<ArrayBuffer>, ch));
    const src = ctx.createBufferSource();
    src.buffer = buf;
    src.connect(this.out.input);
    const at = Math.max(this.nextStart, ctx.currentTime + 0.02);
    src.start(at);
    this.nextStart = at + buf.duration;
    this.sources.add(src);
    src.onended = () => {
      this.sources.delete(src);
      this.maybeFinish();
    };
  }

  end(): void {
    this.ended = true;
    const done = () => {
      if (this.stretch && !this.stopped) this.play(this.stretch.flush());
      this.maybeFinish();
    };
    if (this.decoder) this.decoder.flush().then(done, done);
    else done();
  }

  private maybeFinish(): void {
    if (this.stopped || !this.ended || this.sources.size) return;
    if (this.decoder && this.decoder.decodeQueueSize > 0) return;
    this.stopped = true;
    this.onEnded();
  }

  setRate(rate: number): void {
    this.rate = rate;
    if (this.stretch) this.stretch.rate = rate;
  }

  ahead(): number {
    return Math.max(0, this.nextStart - this.out.ctx.currentTime);
  }

  stop(): void {
    this.stopped = true;
    for (const s of this.sources) s.stop();
    this.sources.clear();
    if (this.decoder && this.decoder.state !== "closed") this.decoder.close();
    this.onEnded();
  }
}

/** A decoded frame's samples, one Float32Array per channel. */
function decodedPlanes(data: AudioData): Float32Array[] {
  const frames = data.numberOfFrames;
  const channels = data.numberOfChannels;
  if (data.format === "f32-planar") {
    return Array.from({ length: channels }, (_, ch) => {
      const plane = new Float32Array(frames);
      data.copyTo(plane, { planeIndex: ch });
      return plane;
    });
  }
  // Interleaved (Chromium's Opus decoder gives f32): one copy, then split channels.
  const all = new Float32Array(frames * channels);
  data.copyTo(all, { planeIndex: 0, format: "f32" });
  return Array.from({ length: channels }, (_, ch) => {
    const plane = new Float32Array(frames);
    for (let i = 0; i < frames; i++) plane[i] = all[i * channels + ch]!;
    return plane;
  });
}
