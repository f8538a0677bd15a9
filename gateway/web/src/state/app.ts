/** The signed-in app: RPCs, the updates stream, the voice controller, and what they change. */
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { ChunkSchema } from "../gen/voxmesh/common/v1/body_pb";
import { DeleteScope, MessageKind, type MessageHeader } from "../gen/voxmesh/common/v1/message_pb";
import { PresenceState } from "../gen/voxmesh/common/v1/presence_pb";
import { MemberRole, ThreadKind } from "../gen/voxmesh/common/v1/thread_pb";
import { fetchBody, splitChunks } from "../api/bodies";
import { createRouter, errorText, type Router } from "../api/client";
import { deviceId, uuidv7 } from "../api/ids";
import type { Session } from "../auth/session";
import { VoiceController } from "../audio/voice";
import { ChatState, type Effect } from "./chat";
import { UpdatesConnection, type ConnectionState } from "./updates";

export class AppModel {
  readonly router: Router;
  readonly chat: ChatState;
  readonly voice: VoiceController;
  readonly updates: UpdatesConnection;
  readonly device = deviceId();
  connection: ConnectionState = { status: "connecting" };
  errors: { id: number; text: string }[] = [];
  dnd = false;
  openThread: string | null = null;
  olderToken = new Map<string, string>();
  private nextError = 1;
  private unreadTimer: number | undefined;
  private typingSent = 0;

  constructor(readonly session: Session) {
    this.router = createRouter(() => session.token);
    this.chat = new ChatState(session.userId);
    this.voice = new VoiceController(this.router, this.chat, this.device, (t) => this.error(t));
    this.updates = new UpdatesConnection(
      this.router,
      this.device,
      (events) => this.effects(this.chat.apply(events)),
      (s) => {
        const wasLive = this.connection.status === "live";
        this.connection = s;
        if (s.status === "live" && !wasLive) void this.setPresence(PresenceState.ONLINE);
        this.chat.changed();
      },
    );
  }

  async start(): Promise<void> {
    await this.loadThreads();
    this.updates.start();
    document.addEventListener("visibilitychange", () =>
      void this.setPresence(document.hidden ? PresenceState.AWAY : PresenceState.ONLINE),
    );
  }

  stop(): void {
    this.updates.stop();
    this.voice.stop();
  }

  error(text: string): void {
    const id = this.nextError++;
    this.errors = [...this.errors, { id, text }].slice(-4);
    this.chat.changed();
    window.setTimeout(() => this.dismiss(id), 12_000);
  }

  dismiss(id: number): void {
    this.errors = this.errors.filter((e) => e.id !== id);
    this.chat.changed();
  }

  /** Run an RPC; a failure is told to the user in words, never swallowed. */
  async guard<T>(what: string, call: () => Promise<T>): Promise<T | undefined> {
    try {
      return await call();
    } catch (e) {
      this.error(`${what}: ${errorText(e)}`);
      return undefined;
    }
  }

  private effects(effects: Effect[]): void {
    for (const e of effects) {
      switch (e.kind) {
        case "voiceStarted":
          this.voice.voiceStarted(e.header);
          break;
        case "liveChunks":
          this.voice.liveChunks(e.messageId, e.chunks);
          break;
        case "messageEnded":
          this.voice.messageEnded(e.header);
          break;
        case "unreadChanged":
          this.refreshUnreadSoon();
          break;
        case "caughtUp":
          this.refreshUnreadSoon();
          break;
      }
    }
  }

  async loadThreads(): Promise<void> {
    let token = "";
    do {
      const r = await this.guard("Could not load your conversations", () => this.router.listThreads({ pageSize: 100, pageToken: token }));
      if (!r) return;
      for (const t of r.threads) this.chat.upsertThread(t);
      token = r.nextPageToken;
    } while (token);
    await Promise.all(
      [...this.chat.threads.keys()].map(async (id) => {
        const r = await this.router.listMessages({ threadId: id, pageSize: 1 }).catch(() => undefined);
        for (const h of r?.headers ?? []) this.chat.upsertHeader(h);
      }),
    );
    await this.refreshUnread();
    this.chat.changed();
  }

  private refreshUnreadSoon(): void {
    window.clearTimeout(this.unreadTimer);
    this.unreadTimer = window.setTimeout(() => void this.refreshUnread(), 400);
  }

  async refreshUnread(): Promise<void> {
    const r = await this.router.getUnreadCounts({}).catch(() => undefined);
    if (!r) return;
    for (const [id, entry] of this.chat.threads) {
      entry.unread = id === this.openThread ? 0 : Number(r.threadCounts[id] ?? 0n);
    }
    this.chat.changed();
  }

  async open(threadId: string | null): Promise<void> {
    this.openThread = threadId;
    this.voice.openThread = threadId;
    this.chat.changed();
    if (!threadId) return;
    const r = await this.guard("Could not load the messages", () => this.router.listMessages({ threadId, pageSize: 30 }));
    if (r) {
      for (const h of r.headers) this.chat.upsertHeader(h);
      this.olderToken.set(threadId, r.nextPageToken);
    }
    await this.markRead(threadId);
    this.chat.changed();
  }

  async loadOlder(threadId: string): Promise<void> {
    const token = this.olderToken.get(threadId);
    if (!token) return;
    const r = await this.guard("Could not load earlier messages", () => this.router.listMessages({ threadId, pageSize: 30, pageToken: token }));
    if (!r) return;
    for (const h of r.headers) this.chat.upsertHeader(h);
    this.olderToken.set(threadId, r.nextPageToken);
    this.chat.changed();
  }

  async markRead(threadId: string): Promise<void> {
    const msgs = this.chat.threadMessages(threadId);
    const last = msgs[msgs.length - 1];
    const entry = this.chat.threads.get(threadId);
    if (entry) entry.unread = 0;
    if (!last) return;
    if (entry?.thread.userState && entry.thread.userState.readSeq >= last.seq) return;
    await this.guard("Could not mark the conversation read", () =>
      this.router.markRead({ threadId, messageId: last.messageId, deviceId: this.device }),
    );
  }

  async createThread(kind: "direct" | "group", members: string[], title: string): Promise<string | undefined> {
    const r = await this.guard("Could not create the conversation", () =>
      this.router.createThread({
        threadId: kind === "group" ? uuidv7() : "",
        kind: kind === "group" ? ThreadKind.GROUP : ThreadKind.DIRECT,
        title,
        memberUserIds: members,
      }),
    );
    if (!r?.thread) return undefined;
    this.chat.upsertThread(r.thread);
    this.chat.changed();
    return r.thread.threadId;
  }

  async sendText(threadId: string, text: string): Promise<boolean> {
    const r = await this.guard("Your message did not go out", () =>
      this.router.sendText({ messageId: uuidv7(), threadId, deviceId: this.device, text, createdAt: timestampNow() }),
    );
    if (r?.header) {
      this.chat.upsertHeader(r.header);
      this.chat.changed();
    }
    void this.router.setTyping({ threadId, typing: false }).catch(() => {});
    this.typingSent = 0;
    return !!r;
  }

  typing(threadId: string): void {
    const now = Date.now();
    if (now - this.typingSent < 3000) return;
    this.typingSent = now;
    void this.router.setTyping({ threadId, typing: true }).catch(() => {});
  }

  async sendFile(threadId: string, file: File): Promise<void> {
    const bytes = new Uint8Array(await file.arrayBuffer());
    const kind = file.type.startsWith("image/") ? MessageKind.IMAGE : MessageKind.FILE;
    const messageId = uuidv7();
    const parts = splitChunks(bytes);
    let offset = 0;
    const chunks = parts.map((payload, index) => {
      const c = create(ChunkSchema, { index: BigInt(index), offset: BigInt(offset), payload });
      offset += payload.length;
      return c;
    });
    const first = chunks.slice(0, 8);
    const end = { chunkCount: BigInt(chunks.length), sizeBytes: BigInt(bytes.length) };
    await this.guard(`Could not send ${file.name}`, async () => {
      const start = {
        messageId,
        threadId,
        kind,
        contentType: file.type || "application/octet-stream",
        fileName: file.name,
        createdAt: timestampNow(),
      };
      const r = await this.router.startMessage({ deviceId: this.device, start, chunks: first, end: chunks.length <= 8 ? end : undefined });
      let header = r.header;
      for (let i = 8; i < chunks.length; i += 8) {
        await this.router.appendChunks({ threadId, messageId, chunks: chunks.slice(i, i + 8) });
      }
      if (chunks.length > 8) header = (await this.router.endMessage({ threadId, messageId, end })).header;
      if (header) {
        this.chat.upsertHeader(header);
        this.chat.changed();
      }
    });
  }

  async shareLocation(threadId: string): Promise<void> {
    if (!navigator.geolocation) {
      this.error("This browser cannot tell your location.");
      return;
    }
    navigator.geolocation.getCurrentPosition(
      (pos) =>
        void this.guard("Could not share your location", async () => {
          const r = await this.router.startMessage({
            deviceId: this.device,
            start: {
              messageId: uuidv7(),
              threadId,
              kind: MessageKind.LOCATION,
              contentType: "application/geo+json",
              createdAt: timestampNow(),
              location: { latitude: pos.coords.latitude, longitude: pos.coords.longitude, accuracyMeters: pos.coords.accuracy },
            },
            end: { chunkCount: 0n, sizeBytes: 0n },
          });
          if (r.header) {
            this.chat.upsertHeader(r.header);
            this.chat.changed();
          }
        }),
      (err) => this.error(`Your location is not available: ${err.message}`),
    );
  }

  async like(h: MessageHeader): Promise<void> {
    const liked = h.likedByUserIds.includes(this.chat.me);
    const ref = { threadId: h.threadId, messageId: h.messageId };
    const r = await this.guard<{ likeCount: number }>(liked ? "Could not remove the like" : "Could not like it", () =>
      liked ? this.router.unlikeMessage(ref) : this.router.likeMessage(ref),
    );
    if (!r) return;
    h.likeCount = r.likeCount;
    h.likedByUserIds = liked ? h.likedByUserIds.filter((u) => u !== this.chat.me) : [...h.likedByUserIds, this.chat.me];
    this.chat.changed();
  }

  async forward(h: MessageHeader, targetThreadId: string): Promise<void> {
    const r = await this.guard("Could not forward it", () =>
      this.router.forwardMessage({
        source: { threadId: h.threadId, messageId: h.messageId },
        targetThreadId,
        messageId: uuidv7(),
        deviceId: this.device,
      }),
    );
    if (r?.header) {
      this.chat.upsertHeader(r.header);
      this.chat.changed();
    }
  }

  async recall(h: MessageHeader): Promise<void> {
    const r = await this.guard("Could not recall it", () => this.router.recallMessage({ threadId: h.threadId, messageId: h.messageId }));
    if (r?.header) {
      this.chat.upsertHeader(r.header);
      this.chat.changed();
    }
  }

  async remove(h: MessageHeader, everyone: boolean): Promise<void> {
    const r = await this.guard("Could not delete it", () =>
      this.router.deleteMessage({
        threadId: h.threadId,
        messageId: h.messageId,
        scope: everyone ? DeleteScope.FOR_EVERYONE : DeleteScope.FOR_ME,
      }),
    );
    if (!r) return;
    if (everyone && r.header) this.chat.upsertHeader(r.header);
    else this.chat.hidden.add(h.messageId);
    this.chat.changed();
  }

  async mute(threadId: string, muted: boolean): Promise<void> {
    const r = await this.guard(muted ? "Could not mute" : "Could not unmute", () => this.router.muteThread({ threadId, muted }));
    const entry = this.chat.threads.get(threadId);
    if (r?.userState && entry) {
      entry.thread.userState = r.userState;
      this.chat.changed();
    }
  }

  async setDnd(enabled: boolean): Promise<void> {
    const r = await this.guard("Could not change do-not-disturb", () => this.router.setDoNotDisturb({ enabled }));
    if (r) {
      this.dnd = r.enabled;
      this.chat.changed();
    }
  }

  async addMembers(threadId: string, users: string[]): Promise<void> {
    const r = await this.guard("Could not add them", () => this.router.addMembers({ threadId, userIds: users }));
    if (r?.thread) this.chat.upsertThread(r.thread);
    this.chat.changed();
  }

  async removeMember(threadId: string, user: string): Promise<void> {
    const r = await this.guard(`Could not remove ${user}`, () => this.router.removeMember({ threadId, userId: user }));
    if (r?.thread) this.chat.upsertThread(r.thread);
    this.chat.changed();
  }

  async setRole(threadId: string, user: string, admin: boolean): Promise<void> {
    const r = await this.guard(`Could not change ${user}'s role`, () =>
      this.router.setMemberRole({ threadId, userId: user, role: admin ? MemberRole.ADMIN : MemberRole.MEMBER }),
    );
    if (r?.thread) this.chat.upsertThread(r.thread);
    this.chat.changed();
  }

  async leave(threadId: string): Promise<void> {
    const r = await this.guard("Could not leave the conversation", () => this.router.leaveThread({ threadId }));
    if (!r) return;
    this.chat.threads.delete(threadId);
    if (this.openThread === threadId) this.openThread = null;
    this.chat.changed();
  }

  async setPresence(state: PresenceState): Promise<void> {
    await this.router.setPresence({ deviceId: this.device, state }).catch(() => {});
  }

  body(h: MessageHeader): Promise<{ bytes: Uint8Array; contentType: string }> {
    // A forwarded message is read by its own id: the router reads the original's body.
    return fetchBody(this.router, h.threadId, h.messageId);
  }
}
