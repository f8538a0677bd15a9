/**
 * The WebRTC side of VoiceController: talk over a peer connection when the chooser says so, and
 * hear a live Ogg/Opus message from someone else as a track at its live edge. Every failure hands
 * the work back to the controller's gRPC-web path (MediaRecorder chunks, chunk playback).
 */
import { MessageState, type MessageHeader } from "../gen/voxmesh/common/v1/message_pb";
import { errorText, type Router } from "../api/client";
import { uuidv7 } from "../api/ids";
import { diagnostics } from "../diagnostics";
import { MicrophoneMeter } from "./capture";
import { audioOutput } from "./output";
import {
  FallbackReason,
  TransportChooser,
  WebRtcListen,
  WebRtcTalk,
  WebRtcUnavailable,
  gathersCandidates,
  listenableOverWebRtc,
  notYetStored,
  peerConnectionAvailable,
} from "./webrtc";

export interface WebRtcHost {
  changed(): void;
  onError(text: string): void;
  /** Play this live message over the chunk path instead. */
  fallbackListen(h: MessageHeader): void;
  listened(h: MessageHeader): void;
  upsertHeader(h: MessageHeader): void;
}

interface Talking {
  threadId: string;
  messageId: string;
  session: WebRtcTalk;
  mic: MediaStream;
  meter: MicrophoneMeter;
}

interface Hearing {
  header: MessageHeader;
  session: WebRtcListen | null;
  opening: boolean;
  tries: number;
}

/** Playout after the end is seen before the track is closed (the jitter buffer drains). */
const DRAIN_MS = 400;

export class WebRtcVoice {
  readonly chooser: TransportChooser;
  private talk: Talking | null = null;
  private hearing: Hearing | null = null;

  constructor(
    private readonly router: Router,
    private readonly deviceId: string,
    private readonly host: WebRtcHost,
  ) {
    const disabled = new URLSearchParams(globalThis.location?.search ?? "").get("transport") === "grpc-web";
    this.chooser = new TransportChooser(peerConnectionAvailable() && !disabled);
    if (this.chooser.choose() === "webrtc") {
      void gathersCandidates().then((ok) => {
        if (ok) return;
        this.chooser.failed(FallbackReason.ICE_TIMEOUT);
        this.transport("", "talk", "grpc-web", `${FallbackReason.ICE_TIMEOUT}: no ICE candidate gathered`);
      });
    }
  }

  view(): {
    talkingIn: string | null;
    talkingMessageId: string | null;
    playing: { threadId: string; messageId: string; rate: number; live: boolean } | null;
  } {
    const h = this.hearing;
    return {
      talkingIn: this.talk?.threadId ?? null,
      talkingMessageId: this.talk?.messageId ?? null,
      playing: h?.session ? { threadId: h.header.threadId, messageId: h.header.messageId, rate: 1, live: true } : null,
    };
  }

  talking(): boolean {
    return this.talk !== null;
  }

  busy(): boolean {
    return this.talk !== null || this.hearing !== null;
  }

  private transport(messageId: string, role: "talk" | "listen", transport: "webrtc" | "grpc-web", reason = ""): void {
    diagnostics.record({ type: "transport", messageId, at: diagnostics.now(), role, transport, reason });
  }

  /** Talk over WebRTC if it can be had; false means "use the gRPC-web path". */
  async tryTalk(threadId: string): Promise<boolean> {
    if (this.chooser.choose() !== "webrtc") return false;
    const messageId = uuidv7();
    let mic: MediaStream;
    try {
      mic = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } });
    } catch {
      return false; // the gRPC-web path asks again and reports the error
    }
    try {
      const session = await WebRtcTalk.open(this.router, this.deviceId, threadId, messageId, mic);
      diagnostics.record({ type: "recordStart", messageId, at: diagnostics.now() });
      diagnostics.record({ type: "firstChunk", messageId, at: diagnostics.now() });
      this.chooser.succeeded();
      this.talk = { threadId, messageId, session, mic, meter: new MicrophoneMeter(audioOutput().ctx, mic) };
      this.host.upsertHeader(session.header);
      this.transport(messageId, "talk", "webrtc");
      this.host.changed();
      return true;
    } catch (e) {
      for (const t of mic.getTracks()) t.stop();
      const reason = e instanceof WebRtcUnavailable ? e.reason : FallbackReason.SIGNALING_FAILED;
      this.chooser.failed(reason);
      this.transport(messageId, "talk", "grpc-web", errorText(e));
      return false;
    }
  }

  async stopTalk(): Promise<void> {
    const t = this.talk;
    if (!t) return;
    this.talk = null; // the button is free for the next message at once
    this.host.changed();
    try {
      const header = await t.session.end();
      this.host.upsertHeader(header);
    } catch (e) {
      this.host.onError(`Your voice message did not end cleanly: ${errorText(e)}`);
    } finally {
      t.meter.close();
      for (const track of t.mic.getTracks()) track.stop();
    }
  }

  /** The microphone's level while talking over WebRTC (0 otherwise). */
  micLevel(): number {
    return this.talk?.meter.level() ?? 0;
  }

  /** A live message from someone else: hear it over WebRTC once its first chunk is stored. */
  tryListen(h: MessageHeader): boolean {
    if (this.chooser.choose() !== "webrtc" || !listenableOverWebRtc(h.contentType) || h.state !== MessageState.LIVE) return false;
    this.hearing = { header: h, session: null, opening: false, tries: 0 };
    return true;
  }

  liveChunks(messageId: string): void {
    const h = this.hearing;
    if (h && h.header.messageId === messageId && !h.session && !h.opening) this.open(h);
  }

  private open(h: Hearing): void {
    h.opening = true;
    h.tries += 1;
    const out = audioOutput();
    void out.resume();
    void WebRtcListen.open(this.router, h.header, out)
      .then((session) => {
        h.opening = false;
        if (this.hearing !== h) return session.stop();
        h.session = session;
        out.playing(h.header.messageId);
        this.chooser.succeeded();
        this.transport(h.header.messageId, "listen", "webrtc");
        diagnostics.record({ type: "playStart", messageId: h.header.messageId, at: diagnostics.now(), rate: 1, live: true });
        this.host.changed();
      })
      .catch((e: unknown) => {
        h.opening = false;
        if (this.hearing !== h) return;
        if (notYetStored(e) && h.tries < 3) return; // the next live chunk tries again
        if (e instanceof WebRtcUnavailable) this.chooser.failed(e.reason);
        this.hearing = null;
        this.transport(h.header.messageId, "listen", "grpc-web", errorText(e));
        this.host.fallbackListen(h.header);
      });
  }

  messageEnded(header: MessageHeader): void {
    const h = this.hearing;
    if (!h || h.header.messageId !== header.messageId) return;
    if (!h.session) {
      // ended before the track was up: play what was stored over the chunk path
      this.hearing = null;
      this.host.fallbackListen(header);
      return;
    }
    setTimeout(() => {
      if (this.hearing !== h) return;
      this.finish(h);
      this.host.listened(header);
    }, DRAIN_MS);
  }

  private finish(h: Hearing): void {
    this.hearing = null;
    if (h.session) audioOutput().playing(null);
    h.session?.stop();
    diagnostics.record({ type: "playEnd", messageId: h.header.messageId, at: diagnostics.now() });
    this.host.changed();
  }

  stopListening(): void {
    if (this.hearing) this.finish(this.hearing);
  }
}
