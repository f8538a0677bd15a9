/**
 * Talking and listening, walkie-talkie style.
 *
 * Talk: a capture (MediaRecorder now; WebRTC later) feeds a ChunkUplink (unary gRPC-web
 * calls) while the button is held. Listen: a live message from someone else plays at once
 * from the chunks on the updates stream (a gap, e.g. chunks sent before the page saw the
 * header, is read from the body store); a message opened later is read with ReadBody from
 * chunk 0 (stored chunks, then the live tail) at 1×, 1.5× or 2× until it reaches live; the
 * next unheard voice message of the thread follows. Capture, chunk sources and players are
 * separate, so a second transport slots in without touching the rest.
 */
import { create } from "@bufbuild/protobuf";
import { durationMs, durationFromMs, timestampNow } from "@bufbuild/protobuf/wkt";
import { ChunkSchema, ReadOrigin } from "../gen/voxmesh/common/v1/body_pb";
import { MessageKind, MessageState, type MessageHeader } from "../gen/voxmesh/common/v1/message_pb";
import { errorText, isTransient, type Router } from "../api/client";
import { uuidv7 } from "../api/ids";
import { diagnostics } from "../diagnostics";
import type { ChatState } from "../state/chat";
import { MediaRecorderCapture, type VoiceCapture } from "./capture";
import { ChunkAssembler, type BodyChunk } from "./chunks";
import { audioOutput } from "./output";
import { createPlayer, type VoicePlayer } from "./players";
import { ChunkUplink, type OutChunk } from "./uplink";
import { WebRtcVoice } from "./webrtc_voice";
import type { Transport } from "./webrtc";

export const RATES = [1, 1.5, 2] as const;
// A talk call that hangs is retried (DEADLINE_EXCEEDED is transient; chunks are idempotent).
const CALL = { timeoutMs: 10_000 };

interface Listening {
  header: MessageHeader;
  assembler: ChunkAssembler;
  player: VoicePlayer;
  rate: number;
  live: boolean;
  reading: AbortController | null;
  endSeen: boolean;
}

export interface VoiceView {
  talkingIn: string | null;
  talkingMessageId: string | null;
  playing: { threadId: string; messageId: string; rate: number; live: boolean } | null;
  /** How the current talk / playback travels ("webrtc" or "grpc-web"), shown beside it. */
  talkTransport: Transport | null;
  listenTransport: Transport | null;
}

export class VoiceController {
  private capture: VoiceCapture;
  private talk: { threadId: string; messageId: string; uplink: ChunkUplink<MessageHeader>; stopping: boolean } | null = null;
  private listening: Listening | null = null;
  private readonly heard = new Set<string>();
  private readonly seenLive = new Set<string>();
  private readonly listeners = new Set<() => void>();
  openThread: string | null = null;

  constructor(
    private readonly router: Router,
    private readonly chat: ChatState,
    private readonly deviceId: string,
    private readonly onError: (text: string) => void,
  ) {
    this.capture = new MediaRecorderCapture(100, () => audioOutput().ctx);
    this.rtc = new WebRtcVoice(router, deviceId, {
      changed: () => this.changed(),
      onError,
      fallbackListen: (h) => {
        if (!this.listening && !this.talk) this.begin(h, 1, true);
      },
      listened: (h) => {
        this.heard.add(h.messageId);
        void this.router.markListened({ threadId: h.threadId, messageId: h.messageId, deviceId: this.deviceId }).catch(() => {});
      },
      upsertHeader: (h) => {
        this.chat.upsertHeader(h);
        this.chat.changed();
      },
    });
  }

  /** The WebRTC transport (talk and live listen); falls back to the paths below. */
  readonly rtc: WebRtcVoice;

  /** Swap the capture (e.g. a WebRTC capture); only between messages. */
  useCapture(c: VoiceCapture): void {
    if (!this.talk) this.capture = c;
  }

  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private changed(): void {
    for (const fn of this.listeners) fn();
  }

  view(): VoiceView {
    const l = this.listening;
    const r = this.rtc.view();
    return {
      talkingIn: this.talk?.threadId ?? r.talkingIn,
      talkingMessageId: this.talk?.messageId ?? r.talkingMessageId,
      playing: l ? { threadId: l.header.threadId, messageId: l.header.messageId, rate: l.rate, live: l.live } : r.playing,
      talkTransport: this.talk ? "grpc-web" : r.talkingIn ? "webrtc" : null,
      listenTransport: l ? "grpc-web" : r.playing ? "webrtc" : null,
    };
  }

  micLevel(): number {
    return this.talk ? this.capture.level() : this.rtc.micLevel();
  }

  // -- talk --------------------------------------------------------------------------------

  private starting: Promise<void> | null = null;

  startTalking(threadId: string): Promise<void> {
    if (this.talk || this.starting || this.rtc.talking()) return this.starting ?? Promise.resolve();
    this.starting = this.beginTalk(threadId).finally(() => (this.starting = null));
    return this.starting;
  }

  private async beginTalk(threadId: string): Promise<void> {
    void audioOutput().resume();
    if (await this.rtc.tryTalk(threadId)) return;
    const messageId = uuidv7();
    const contentType = this.capture.contentType;
    let first = true;
    // Each call's outcome goes to the diagnostics: a message that never completes says where.
    const traced = async <T,>(call: "start" | "append" | "end", run: () => Promise<T>, chunks?: number): Promise<T> => {
      const began = diagnostics.now();
      const note = (outcome: string) =>
        diagnostics.record({ type: "uplink", messageId, at: began, call, ms: Math.round(diagnostics.now() - began), outcome, chunks });
      try {
        const result = await run();
        note("ok");
        return result;
      } catch (e) {
        note(errorText(e));
        throw e;
      }
    };
    const uplink = new ChunkUplink<MessageHeader>(
      {
        start: () => traced("start", async () => {
          const r = await this.router.startMessage({
            deviceId: this.deviceId,
            start: { messageId, threadId, kind: MessageKind.VOICE, contentType, createdAt: timestampNow() },
          }, CALL);
          if (r.header) {
            this.chat.upsertHeader(r.header);
            this.chat.changed();
          }
        }),
        append: (chunks: OutChunk[]) => traced("append", async () => {
          const r = await this.router.appendChunks({
            threadId,
            messageId,
            chunks: chunks.map((c) =>
              create(ChunkSchema, { index: BigInt(c.index), offset: BigInt(c.offset), mediaTimeMs: BigInt(c.mediaTimeMs), payload: c.payload }),
            ),
          }, CALL);
          return Number(r.ack?.durableChunkCount ?? 0n);
        }, chunks.length),
        end: (t) => traced("end", async () => {
          const r = await this.router.endMessage({
            threadId,
            messageId,
            end: { chunkCount: BigInt(t.chunkCount), sizeBytes: BigInt(t.sizeBytes), duration: durationFromMs(t.durationMs) },
          }, CALL);
          return r.header!;
        }, t.chunkCount),
      },
      { isTransient },
    );
    this.talk = { threadId, messageId, uplink, stopping: false };
    this.changed();
    try {
      await this.capture.start((c) => {
        if (first) {
          first = false;
          diagnostics.record({ type: "firstChunk", messageId, at: diagnostics.now() });
        }
        uplink.push(c.payload, c.mediaTimeMs);
      });
      diagnostics.record({ type: "recordStart", messageId, at: diagnostics.now() });
    } catch (e) {
      this.talk = null;
      this.changed();
      this.onError(errorText(e));
    }
  }

  async stopTalking(): Promise<void> {
    if (this.starting) await this.starting; // released while the microphone was opening
    if (this.rtc.talking()) return this.rtc.stopTalk();
    const talk = this.talk;
    if (!talk || talk.stopping) return;
    talk.stopping = true;
    try {
      const duration = await this.capture.stop();
      const header = await talk.uplink.finish(duration);
      this.chat.upsertHeader(header);
      this.chat.changed();
    } catch (e) {
      this.onError(`Your voice message did not go out: ${errorText(e)}`);
    } finally {
      this.talk = null;
      this.changed();
    }
  }

  // -- listen ------------------------------------------------------------------------------

  /** A voice message from someone else started: walkie-talkie plays it at once. */
  voiceStarted(h: MessageHeader): void {
    if (h.kind !== MessageKind.VOICE) return;
    const thread = this.chat.threads.get(h.threadId);
    if (thread?.thread.userState?.muted) return;
    if (this.listening || this.talk || this.rtc.busy()) return; // played in turn afterwards (next unheard)
    if (this.rtc.tryListen(h)) return;
    this.begin(h, 1, true);
  }

  liveChunks(messageId: string, chunks: BodyChunk[]): void {
    this.rtc.liveChunks(messageId);
    const l = this.listening;
    if (!this.seenLive.has(messageId) && chunks.length) {
      this.seenLive.add(messageId);
      diagnostics.record({
        type: "firstLiveChunk",
        messageId,
        at: diagnostics.now(),
        index: chunks[0]!.index,
        sessionIndex: l && l.header.messageId === messageId ? l.assembler.nextIndex : -1,
      });
    }
    if (l && l.live && l.header.messageId === messageId) {
      l.assembler.add(chunks);
      this.maybeEnd(l);
    }
  }

  messageEnded(h: MessageHeader): void {
    this.rtc.messageEnded(h);
    const l = this.listening;
    if (!l || l.header.messageId !== h.messageId) return;
    l.header = h;
    if (h.state === MessageState.RECALLED || h.state === MessageState.DELETED) {
      this.stop();
      return;
    }
    l.endSeen = true;
    this.maybeEnd(l);
  }

  /** Play a message from its start (catch up to live at ``rate``). */
  play(h: MessageHeader, rate: number): void {
    void audioOutput().resume();
    this.stop();
    this.begin(h, rate, false);
  }

  setRate(rate: number): void {
    const l = this.listening;
    if (!l) return;
    l.rate = rate;
    l.player.setRate(rate);
    this.changed();
  }

  stop(): void {
    this.rtc.stopListening();
    const l = this.listening;
    if (!l) return;
    this.listening = null;
    l.reading?.abort();
    l.player.onEnded = () => {};
    l.player.stop();
    audioOutput().playing(null);
    diagnostics.record({ type: "playEnd", messageId: l.header.messageId, at: diagnostics.now() });
    this.changed();
  }

  private begin(h: MessageHeader, rate: number, live: boolean): void {
    const out = audioOutput();
    const player = createPlayer(h.contentType, out);
    player.setRate(rate);
    const l: Listening = {
      header: h,
      player,
      rate,
      live,
      reading: null,
      endSeen: h.state !== MessageState.LIVE,
      assembler: new ChunkAssembler(
        (c) => player.append(c),
        (from) => this.read(l, from, true),
      ),
    };
    this.listening = l;
    player.onEnded = () => this.finished(l);
    player.onError = (text) => {
      diagnostics.record({ type: "error", messageId: h.messageId, at: diagnostics.now(), text });
      this.onError(text);
      if (this.listening === l) this.stop();
    };
    out.playing(h.messageId);
    diagnostics.record({ type: "playStart", messageId: h.messageId, at: diagnostics.now(), rate, live });
    if (!live) this.read(l, 0, false);
    this.changed();
  }

  /** ReadBody from ``from``: stored chunks, then (unless storedOnly) the live tail and end. */
  private read(l: Listening, from: number, storedOnly: boolean): void {
    if (l.reading) return;
    const abort = new AbortController();
    l.reading = abort;
    void (async () => {
      try {
        const stream = this.router.readBody(
          { threadId: l.header.threadId, messageId: l.header.messageId, origin: ReadOrigin.INDEX, fromIndex: BigInt(from), storedOnly },
          { signal: abort.signal },
        );
        for await (const r of stream) {
          if (r.event.case === "chunks") {
            l.assembler.add(r.event.value.chunks.map((c) => ({ index: Number(c.index), payload: c.payload, mediaTimeMs: Number(c.mediaTimeMs) })));
            if (r.event.value.live && l.rate > 1 && l.player.ahead() < 0.4) {
              l.rate = 1; // caught up to live: real time from here
              l.player.setRate(1);
              this.changed();
            }
          } else if (r.event.case === "end") {
            const state = r.event.value.state;
            if (state === MessageState.RECALLED || state === MessageState.DELETED) {
              if (this.listening === l) this.stop();
              return;
            }
            if (!storedOnly) l.endSeen = true;
          } else if (r.event.case === "stat" && r.event.value.state !== MessageState.LIVE && !storedOnly) {
            l.header = { ...l.header, chunkCount: r.event.value.chunkCount } as MessageHeader;
          }
        }
      } catch (e) {
        if (!abort.signal.aborted && this.listening === l) this.onError(`Cannot play this message: ${errorText(e)}`);
      } finally {
        if (l.reading === abort) l.reading = null;
      }
      if (this.listening === l) this.maybeEnd(l);
    })();
  }

  private maybeEnd(l: Listening): void {
    if (!l.endSeen) return;
    const total = Number(l.header.chunkCount);
    if (l.assembler.nextIndex >= total || (!l.live && !l.reading)) {
      l.player.end();
    } else if (!l.reading) {
      this.read(l, l.assembler.nextIndex, true);
    }
  }

  private finished(l: Listening): void {
    if (this.listening !== l) return;
    this.heard.add(l.header.messageId);
    this.listening = null;
    audioOutput().playing(null);
    diagnostics.record({ type: "playEnd", messageId: l.header.messageId, at: diagnostics.now() });
    void this.router
      .markListened({ threadId: l.header.threadId, messageId: l.header.messageId, deviceId: this.deviceId })
      .catch(() => {});
    this.changed();
    const next = this.nextUnheard(l.header);
    if (next) this.begin(next, l.rate, false);
  }

  /** The thread's next voice message from someone else this page has not played. */
  private nextUnheard(after: MessageHeader): MessageHeader | undefined {
    const thread = this.chat.threads.get(after.threadId);
    if (thread?.thread.userState?.muted) return undefined;
    const listened = thread?.thread.userState?.listenedSeq ?? 0n;
    return this.chat
      .threadMessages(after.threadId)
      .find(
        (h) =>
          h.seq > after.seq &&
          h.seq > listened &&
          h.kind === MessageKind.VOICE &&
          h.senderUserId !== this.chat.me &&
          !this.heard.has(h.messageId) &&
          (h.state === MessageState.LIVE || h.state === MessageState.COMPLETE || h.state === MessageState.ABANDONED),
      );
  }

  durationOf(h: MessageHeader): number {
    return h.duration ? durationMs(h.duration) : 0;
  }
}
