/**
 * Live audio over WebRTC: the microphone as an Opus track to a router (StartWebRtcTalk), and a
 * live Ogg/Opus message as an audio track from a router (ListenWebRtc). Signaling is one unary
 * gRPC-web call each way (non-trickle: the offer carries every candidate). Whenever WebRTC cannot
 * be had (no RTCPeerConnection, signaling refused, ICE not connected within a few seconds, e.g.
 * UDP blocked) the caller falls back to the gRPC-web path (MediaRecorder chunks, chunk playback);
 * `TransportChooser` remembers such a failure so the next message does not wait again.
 */
import { fromBinary, toBinary, create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { ReadOrigin } from "../gen/voxmesh/common/v1/body_pb";
import { MessageKind, type MessageHeader } from "../gen/voxmesh/common/v1/message_pb";
import { SendRequestSchema, SendResponseSchema } from "../gen/voxmesh/router/v1/router_service_pb";
import { Code, ConnectError, type Router } from "../api/client";
import type { AudioOutput } from "./output";

export type Transport = "webrtc" | "grpc-web";

export const OGG_OPUS = "audio/ogg;codecs=opus";

/** Why WebRTC was not used (shown in diagnostics; the user sees only the transport). */
export enum FallbackReason {
  NO_PEER_CONNECTION = "no RTCPeerConnection",
  SIGNALING_FAILED = "signaling failed",
  ICE_TIMEOUT = "ICE did not connect",
  NOT_OGG_OPUS = "the message is not Ogg/Opus",
}

export class WebRtcUnavailable extends Error {
  constructor(
    readonly reason: FallbackReason,
    detail = "",
  ) {
    super(detail ? `${reason}: ${detail}` : reason);
  }
}

/**
 * Which transport the next talk or listen tries. WebRTC unless the browser lacks it or a recent
 * attempt failed for a network reason (then gRPC-web for `retryAfterMs`, so a blocked UDP path
 * costs the ICE timeout once, not on every press of the button).
 */
export class TransportChooser {
  private failedAt = -Infinity;
  lastReason: FallbackReason | null = null;

  constructor(
    private readonly hasPeerConnection: boolean,
    private readonly retryAfterMs = 60_000,
    private readonly now: () => number = () => Date.now(),
  ) {}

  choose(): Transport {
    if (!this.hasPeerConnection) return "grpc-web";
    return this.now() - this.failedAt < this.retryAfterMs ? "grpc-web" : "webrtc";
  }

  /** An attempt failed; only network-level reasons make later attempts skip WebRTC. */
  failed(reason: FallbackReason): void {
    this.lastReason = reason;
    if (reason === FallbackReason.ICE_TIMEOUT || reason === FallbackReason.SIGNALING_FAILED) this.failedAt = this.now();
  }

  succeeded(): void {
    this.failedAt = -Infinity;
    this.lastReason = null;
  }
}

/** Whether a listener should try ListenWebRtc for this message (live Ogg/Opus only). */
export function listenableOverWebRtc(contentType: string): boolean {
  return contentType.toLowerCase().startsWith("audio/ogg");
}

/** A signaling error that means "not this message" (fall back for it) rather than "WebRTC is broken". */
export function signalingReason(err: unknown): FallbackReason {
  if (err instanceof ConnectError && err.code === Code.FailedPrecondition) return FallbackReason.NOT_OGG_OPUS;
  return FallbackReason.SIGNALING_FAILED;
}

/** NOT_FOUND from ListenWebRtc: no chunk stored yet, worth one more try shortly. */
export function notYetStored(err: unknown): boolean {
  return err instanceof ConnectError && err.code === Code.NotFound;
}

export function peerConnectionAvailable(): boolean {
  return typeof globalThis.RTCPeerConnection === "function";
}

function gathered(pc: RTCPeerConnection, timeoutMs: number): Promise<void> {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", done);
        clearTimeout(timer);
        resolve();
      }
    };
    const timer = setTimeout(resolve, timeoutMs); // use what was gathered so far
    pc.addEventListener("icegatheringstatechange", done);
  });
}

function connected(pc: RTCPeerConnection, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = () => {
      const s = pc.connectionState;
      if (s === "connected") finish(null);
      else if (s === "failed" || s === "closed") finish(new WebRtcUnavailable(FallbackReason.ICE_TIMEOUT, s));
    };
    const finish = (err: Error | null) => {
      clearTimeout(timer);
      pc.removeEventListener("connectionstatechange", check);
      if (err) reject(err);
      else resolve();
    };
    const timer = setTimeout(() => finish(new WebRtcUnavailable(FallbackReason.ICE_TIMEOUT, `not connected after ${timeoutMs} ms`)), timeoutMs);
    pc.addEventListener("connectionstatechange", check);
    check();
  });
}

async function offer(pc: RTCPeerConnection, gatherMs: number): Promise<string> {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc, gatherMs);
  const sdp = pc.localDescription!.sdp;
  // No candidate at all (UDP disabled by policy or blocked): ICE cannot connect, say so now.
  if (!/^a=candidate:/m.test(sdp)) throw new WebRtcUnavailable(FallbackReason.ICE_TIMEOUT, "no ICE candidate (UDP blocked?)");
  return sdp;
}

/**
 * Whether this browser gathers any ICE candidate at all (none when WebRTC may not use UDP):
 * checked once at start so the first message does not wait to find out. Local only.
 */
export async function gathersCandidates(gatherMs = 1500): Promise<boolean> {
  if (!peerConnectionAvailable()) return false;
  const pc = new RTCPeerConnection({ iceServers: [] });
  try {
    pc.createDataChannel("probe");
    await offer(pc, gatherMs);
    return true;
  } catch {
    return false;
  } finally {
    pc.close();
  }
}

export interface WebRtcTiming {
  gatherMs: number;
  connectMs: number;
}

const DEFAULT_TIMING: WebRtcTiming = { gatherMs: 2000, connectMs: 4000 };

/** One message talked over WebRTC: the router writes the chunks; acks come on the data channel. */
export class WebRtcTalk {
  private completed: ((h: MessageHeader) => void) | null = null;
  private stoppedWith: ((e: Error) => void) | null = null;
  durableChunks = 0;

  private constructor(
    private readonly pc: RTCPeerConnection,
    private readonly channel: RTCDataChannel,
    readonly header: MessageHeader,
  ) {
    channel.binaryType = "arraybuffer";
    channel.onmessage = (ev: MessageEvent<ArrayBuffer>) => {
      const r = fromBinary(SendResponseSchema, new Uint8Array(ev.data));
      if (r.event.case === "ack") this.durableChunks = Number(r.event.value.durableChunkCount);
      else if (r.event.case === "completed" && r.event.value.header) this.completed?.(r.event.value.header);
      else if (r.event.case === "stopped") this.stoppedWith?.(new Error(`${r.event.value.message} (code ${r.event.value.code})`));
    };
  }

  /** Offer the microphone track, start the message, wait for ICE; throws WebRtcUnavailable. */
  static async open(
    router: Router,
    deviceId: string,
    threadId: string,
    messageId: string,
    mic: MediaStream,
    timing: WebRtcTiming = DEFAULT_TIMING,
  ): Promise<WebRtcTalk> {
    if (!peerConnectionAvailable()) throw new WebRtcUnavailable(FallbackReason.NO_PEER_CONNECTION);
    const pc = new RTCPeerConnection({ iceServers: [] });
    try {
      for (const track of mic.getAudioTracks()) pc.addTrack(track, mic);
      const channel = pc.createDataChannel("voxmesh");
      const sdp = await offer(pc, timing.gatherMs);
      let answer;
      try {
        answer = await router.startWebRtcTalk({
          deviceId,
          start: { messageId, threadId, kind: MessageKind.VOICE, createdAt: timestampNow() },
          offerSdp: sdp,
        });
      } catch (e) {
        throw new WebRtcUnavailable(signalingReason(e), e instanceof Error ? e.message : String(e));
      }
      await pc.setRemoteDescription({ type: "answer", sdp: answer.answerSdp });
      await connected(pc, timing.connectMs);
      return new WebRtcTalk(pc, channel, answer.header!);
    } catch (e) {
      pc.close();
      throw e;
    }
  }

  /** End the message (MessageEnd on the data channel) and wait for the completed header. */
  async end(timeoutMs = 10_000): Promise<MessageHeader> {
    const header = new Promise<MessageHeader>((resolve, reject) => {
      this.completed = resolve;
      this.stoppedWith = reject;
      // The router hangs up once the message is complete; its final header also comes on the
      // updates stream, so a hang-up before `completed` arrived is not an error.
      this.pc.addEventListener("connectionstatechange", () => {
        if (["closed", "failed", "disconnected"].includes(this.pc.connectionState)) resolve(this.header);
      });
      this.channel.addEventListener("close", () => resolve(this.header));
      setTimeout(() => reject(new Error("the router did not confirm the end of the message")), timeoutMs);
    });
    const send = () => this.channel.send(toBinary(SendRequestSchema, create(SendRequestSchema, { end: {} })));
    if (this.channel.readyState === "open") send();
    else this.channel.addEventListener("open", send, { once: true });
    try {
      return await header;
    } finally {
      this.pc.close();
    }
  }

  close(): void {
    this.pc.close();
  }
}

/** A live message heard as an audio track from a router. */
export class WebRtcListen {
  private constructor(
    private readonly pc: RTCPeerConnection,
    private readonly audio: HTMLAudioElement,
    private readonly disconnect: () => void,
  ) {}

  static async open(router: Router, h: MessageHeader, output: AudioOutput, timing: WebRtcTiming = DEFAULT_TIMING): Promise<WebRtcListen> {
    if (!peerConnectionAvailable()) throw new WebRtcUnavailable(FallbackReason.NO_PEER_CONNECTION);
    if (!listenableOverWebRtc(h.contentType)) throw new WebRtcUnavailable(FallbackReason.NOT_OGG_OPUS);
    const pc = new RTCPeerConnection({ iceServers: [] });
    // Chromium feeds a remote track to Web Audio only while a media element also holds it.
    const audio = new Audio();
    audio.muted = true;
    let source: MediaStreamAudioSourceNode | null = null;
    try {
      pc.addTransceiver("audio", { direction: "recvonly" });
      pc.ontrack = (ev) => {
        const stream = ev.streams[0] ?? new MediaStream([ev.track]);
        audio.srcObject = stream;
        void audio.play().catch(() => {});
        source = output.ctx.createMediaStreamSource(stream);
        source.connect(output.input); // the page's one output: meter, firstAudio and tone diagnostics
      };
      const sdp = await offer(pc, timing.gatherMs);
      let answer;
      try {
        answer = await router.listenWebRtc({
          threadId: h.threadId,
          messageId: h.messageId,
          origin: ReadOrigin.LIVE_EDGE,
          offerSdp: sdp,
        });
      } catch (e) {
        if (notYetStored(e)) throw e;
        throw new WebRtcUnavailable(signalingReason(e), e instanceof Error ? e.message : String(e));
      }
      await pc.setRemoteDescription({ type: "answer", sdp: answer.answerSdp });
      await connected(pc, timing.connectMs);
      return new WebRtcListen(pc, audio, () => source?.disconnect());
    } catch (e) {
      pc.close();
      throw e;
    }
  }

  stop(): void {
    this.disconnect();
    this.audio.srcObject = null;
    this.pc.close();
  }
}
