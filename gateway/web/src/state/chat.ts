/**
 * The client's picture of the user's world, built from RPC answers and updates-stream events.
 * Every event applies idempotently (the stream may repeat events after a reconnect), and a
 * stale copy of a header never undoes a newer state (a recall stays recalled).
 */
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { MarkKind } from "../gen/voxmesh/common/v1/mark_pb";
import { MessageState, type MessageHeader } from "../gen/voxmesh/common/v1/message_pb";
import { PresenceState } from "../gen/voxmesh/common/v1/presence_pb";
import type { Thread } from "../gen/voxmesh/common/v1/thread_pb";
import { ThreadChangeKind, type UpdateEvent } from "../gen/voxmesh/common/v1/update_pb";

const RANK: Record<number, number> = {
  [MessageState.UNSPECIFIED]: 0,
  [MessageState.LIVE]: 1,
  [MessageState.COMPLETE]: 2,
  [MessageState.ABANDONED]: 2,
  [MessageState.RECALLED]: 3,
  [MessageState.DELETED]: 3,
};

function ms(t: Timestamp | undefined): number {
  return t ? timestampMs(t) : 0;
}

/** Whether ``incoming`` should replace ``current`` (same message). */
export function supersedes(current: MessageHeader | undefined, incoming: MessageHeader): boolean {
  if (!current) return true;
  const a = RANK[current.state] ?? 0;
  const b = RANK[incoming.state] ?? 0;
  if (a !== b) return b > a;
  return ms(incoming.updatedAt) >= ms(current.updatedAt);
}

export function isGone(h: MessageHeader): boolean {
  return h.state === MessageState.RECALLED || h.state === MessageState.DELETED;
}

export interface ThreadEntry {
  thread: Thread;
  unread: number;
  last?: MessageHeader;
  talking: Map<string, string>; // user -> live message id
  typing: Map<string, number>; // user -> expiry (ms)
}

/** What the app must act on beyond redrawing (audio, notifications). */
export type Effect =
  | { kind: "voiceStarted"; header: MessageHeader }
  | { kind: "liveChunks"; threadId: string; messageId: string; chunks: { index: number; payload: Uint8Array; mediaTimeMs: number }[] }
  | { kind: "messageEnded"; header: MessageHeader }
  | { kind: "unreadChanged" }
  | { kind: "caughtUp" };

export class ChatState {
  readonly threads = new Map<string, ThreadEntry>();
  readonly messages = new Map<string, Map<string, MessageHeader>>();
  readonly hidden = new Set<string>(); // deleted for me
  readonly presence = new Map<string, PresenceState>();
  private version = 0;
  private readonly listeners = new Set<() => void>();

  constructor(readonly me: string) {}

  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  get revision(): number {
    return this.version;
  }

  changed(): void {
    this.version++;
    for (const fn of this.listeners) fn();
  }

  upsertThread(thread: Thread): ThreadEntry {
    const e = this.threads.get(thread.threadId);
    if (e) {
      e.thread = thread;
      return e;
    }
    const entry: ThreadEntry = { thread, unread: 0, talking: new Map(), typing: new Map() };
    this.threads.set(thread.threadId, entry);
    return entry;
  }

  /** Threads, the most recently active first. */
  sortedThreads(): ThreadEntry[] {
    const key = (e: ThreadEntry) => Math.max(ms(e.last?.startedAt), ms(e.thread.updatedAt));
    return [...this.threads.values()].sort((a, b) => key(b) - key(a));
  }

  /** A thread's visible messages by seq. */
  threadMessages(threadId: string): MessageHeader[] {
    const m = this.messages.get(threadId);
    if (!m) return [];
    return [...m.values()].filter((h) => !this.hidden.has(h.messageId)).sort((a, b) => Number(a.seq - b.seq));
  }

  upsertHeader(h: MessageHeader): boolean {
    let m = this.messages.get(h.threadId);
    if (!m) {
      m = new Map();
      this.messages.set(h.threadId, m);
    }
    const current = m.get(h.messageId);
    if (!supersedes(current, h)) return false;
    m.set(h.messageId, h);
    const t = this.threads.get(h.threadId);
    if (t && (!t.last || h.seq >= t.last.seq)) t.last = h;
    return true;
  }

  header(threadId: string, messageId: string): MessageHeader | undefined {
    return this.messages.get(threadId)?.get(messageId);
  }

  displayName(thread: Thread): string {
    if (thread.title) return thread.title;
    const others = thread.members.map((m) => m.userId).filter((u) => u !== this.me);
    return others.join(", ") || "Just you";
  }

  apply(events: UpdateEvent[], now: number = Date.now()): Effect[] {
    const effects: Effect[] = [];
    for (const ev of events) this.applyOne(ev, now, effects);
    if (events.length) this.changed();
    return effects;
  }

  private applyOne(ev: UpdateEvent, now: number, effects: Effect[]): void {
    const e = ev.event;
    switch (e.case) {
      case "headerAdded":
      case "headerUpdated":
      case "messageStateChanged": {
        const h = e.case === "messageStateChanged" ? e.value.header : e.value;
        if (!h) return;
        if (e.case === "messageStateChanged" && e.value.forMeOnly) {
          this.hidden.add(h.messageId);
          return;
        }
        const before = this.header(h.threadId, h.messageId);
        if (!this.upsertHeader(h)) return;
        if (h.senderUserId !== this.me && !before) effects.push({ kind: "unreadChanged" });
        if (h.state === MessageState.LIVE && !before && h.senderUserId !== this.me) effects.push({ kind: "voiceStarted", header: h });
        if (before?.state === MessageState.LIVE && h.state !== MessageState.LIVE) effects.push({ kind: "messageEnded", header: h });
        if (isGone(h)) {
          const t = this.threads.get(h.threadId);
          for (const [user, id] of t?.talking ?? []) if (id === h.messageId) t!.talking.delete(user);
          effects.push({ kind: "messageEnded", header: h });
        }
        return;
      }
      case "liveChunks":
        effects.push({
          kind: "liveChunks",
          threadId: e.value.threadId,
          messageId: e.value.messageId,
          chunks: e.value.chunks.map((c) => ({ index: Number(c.index), payload: c.payload, mediaTimeMs: Number(c.mediaTimeMs) })),
        });
        return;
      case "mark": {
        const mark = e.value;
        const t = this.threads.get(mark.threadId);
        if (!t || mark.userId !== this.me) return;
        const us = t.thread.userState;
        if (us) {
          if (mark.kind === MarkKind.READ && mark.seq > us.readSeq) us.readSeq = mark.seq;
          if (mark.kind === MarkKind.LISTENED && mark.seq > us.listenedSeq) us.listenedSeq = mark.seq;
        }
        effects.push({ kind: "unreadChanged" });
        return;
      }
      case "likeChanged": {
        const like = e.value.like;
        if (!like) return;
        const h = this.header(like.threadId, like.messageId);
        if (!h) return;
        h.likeCount = e.value.likeCount;
        const others = h.likedByUserIds.filter((u) => u !== like.userId);
        h.likedByUserIds = e.value.liked ? [...others, like.userId] : others;
        return;
      }
      case "threadChanged": {
        const { change, thread } = e.value;
        if (!thread) return;
        const gone =
          (change === ThreadChangeKind.MEMBER_REMOVED || change === ThreadChangeKind.MEMBER_LEFT) &&
          e.value.userIds.includes(this.me);
        if (gone) {
          this.threads.delete(thread.threadId);
          return;
        }
        const existing = this.threads.get(thread.threadId);
        if (existing && !thread.members.length) {
          // A partial thread (e.g. a mute change carries only the user's state).
          if (thread.userState) existing.thread.userState = thread.userState;
          return;
        }
        if (existing && !thread.userState) thread.userState = existing.thread.userState;
        this.upsertThread(thread);
        return;
      }
      case "presence":
        this.presence.set(e.value.userId, e.value.state);
        return;
      case "typing": {
        const t = this.threads.get(e.value.threadId);
        if (!t) return;
        if (e.value.typing) t.typing.set(e.value.userId, e.value.expiresAt ? ms(e.value.expiresAt) : now + 6000);
        else t.typing.delete(e.value.userId);
        return;
      }
      case "talkingNow": {
        const t = this.threads.get(e.value.threadId);
        if (!t) return;
        if (e.value.talking) t.talking.set(e.value.userId, e.value.messageId);
        else t.talking.delete(e.value.userId);
        return;
      }
      case "caughtUp":
        effects.push({ kind: "caughtUp" });
        return;
      default:
        return;
    }
  }

  /** Who is typing in a thread now (expired indicators dropped). */
  typingIn(threadId: string, now: number = Date.now()): string[] {
    const t = this.threads.get(threadId);
    if (!t) return [];
    for (const [u, exp] of t.typing) if (exp < now) t.typing.delete(u);
    return [...t.typing.keys()].filter((u) => u !== this.me);
  }

  presenceOf(user: string): PresenceState {
    return this.presence.get(user) ?? PresenceState.UNSPECIFIED;
  }
}
