import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { MarkKind } from "../gen/voxmesh/common/v1/mark_pb";
import { MessageHeaderSchema, MessageKind, MessageState } from "../gen/voxmesh/common/v1/message_pb";
import { PresenceState } from "../gen/voxmesh/common/v1/presence_pb";
import { ThreadSchema, ThreadUserStateSchema } from "../gen/voxmesh/common/v1/thread_pb";
import { ThreadChangeKind, UpdateEventSchema, type UpdateEvent } from "../gen/voxmesh/common/v1/update_pb";
import { ChatState, supersedes } from "./chat";

const header = (state: MessageState, updatedMs: number, extra: Record<string, unknown> = {}) =>
  create(MessageHeaderSchema, {
    threadId: "t1",
    messageId: "m1",
    seq: 1n,
    senderUserId: "alice",
    kind: MessageKind.VOICE,
    state,
    updatedAt: timestampFromMs(updatedMs),
    ...extra,
  });

const ev = (event: UpdateEvent["event"]): UpdateEvent => create(UpdateEventSchema, { event });

function chat(): ChatState {
  const c = new ChatState("bob");
  c.upsertThread(
    create(ThreadSchema, {
      threadId: "t1",
      members: [{ userId: "alice" }, { userId: "bob" }],
      userState: create(ThreadUserStateSchema, {}),
    }),
  );
  return c;
}

describe("ChatState", () => {
  it("never lets a stale copy undo a newer state", () => {
    expect(supersedes(header(MessageState.RECALLED, 5), header(MessageState.COMPLETE, 9))).toBe(false);
    expect(supersedes(header(MessageState.LIVE, 5), header(MessageState.COMPLETE, 1))).toBe(true);
    expect(supersedes(header(MessageState.COMPLETE, 5), header(MessageState.COMPLETE, 6))).toBe(true);
  });

  it("turns events into state and effects, idempotently", () => {
    const c = chat();
    const live = header(MessageState.LIVE, 1);
    let effects = c.apply([ev({ case: "headerAdded", value: live })]);
    expect(effects.map((e) => e.kind)).toEqual(["unreadChanged", "voiceStarted"]);
    expect(c.apply([ev({ case: "headerAdded", value: live })]).map((e) => e.kind)).toEqual([]);
    c.apply([ev({ case: "talkingNow", value: { threadId: "t1", userId: "alice", messageId: "m1", talking: true } as never })]);
    expect(c.threads.get("t1")!.talking.get("alice")).toBe("m1");
    effects = c.apply([
      ev({ case: "messageStateChanged", value: { header: header(MessageState.RECALLED, 3) } as never }),
    ]);
    expect(effects.map((e) => e.kind)).toContain("messageEnded");
    expect(c.header("t1", "m1")!.state).toBe(MessageState.RECALLED);
    expect(c.threads.get("t1")!.talking.size).toBe(0);
    // A replayed older copy after a reconnect changes nothing.
    c.apply([ev({ case: "headerUpdated", value: header(MessageState.COMPLETE, 2) })]);
    expect(c.header("t1", "m1")!.state).toBe(MessageState.RECALLED);
  });

  it("applies marks from the user's other devices, presence, typing and removal", () => {
    const c = chat();
    c.apply([ev({ case: "mark", value: { userId: "bob", threadId: "t1", seq: 4n, kind: MarkKind.READ } as never })]);
    expect(c.threads.get("t1")!.thread.userState!.readSeq).toBe(4n);
    c.apply([ev({ case: "presence", value: { userId: "alice", state: PresenceState.ONLINE } as never })]);
    expect(c.presenceOf("alice")).toBe(PresenceState.ONLINE);
    c.apply([ev({ case: "typing", value: { threadId: "t1", userId: "alice", typing: true } as never })], 1000);
    expect(c.typingIn("t1", 2000)).toEqual(["alice"]);
    expect(c.typingIn("t1", 60_000)).toEqual([]);
    c.apply([
      ev({
        case: "threadChanged",
        value: { change: ThreadChangeKind.MEMBER_REMOVED, thread: { threadId: "t1" }, userIds: ["bob"] } as never,
      }),
    ]);
    expect(c.threads.has("t1")).toBe(false);
  });

  it("hides a message deleted for me only", () => {
    const c = chat();
    c.upsertHeader(header(MessageState.COMPLETE, 1, { kind: MessageKind.TEXT }));
    c.apply([
      ev({ case: "messageStateChanged", value: { header: header(MessageState.DELETED, 2), forMeOnly: true } as never }),
    ]);
    expect(c.threadMessages("t1")).toEqual([]);
  });
});
