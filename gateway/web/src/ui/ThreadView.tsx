import { useEffect, useRef, useState } from "preact/hooks";
import { MemberRole } from "../gen/voxmesh/common/v1/thread_pb";
import type { AppModel } from "../state/app";
import type { ThreadEntry } from "../state/chat";
import { isGroup, presenceLabel } from "./App";
import { useChanges, useTicker } from "./hooks";
import { MessageItem, TransportBadge } from "./Message";

function TalkButton({ app, threadId }: { app: AppModel; threadId: string }) {
  const voice = app.voice;
  useChanges(voice);
  const [locked, setLocked] = useState(false);
  const v = voice.view();
  const talking = v.talkingIn === threadId;
  useTicker(100, talking);
  const down = () => {
    if (locked && talking) void voice.stopTalking();
    else void voice.startTalking(threadId);
  };
  const up = () => {
    if (!locked) void voice.stopTalking();
  };
  // The space bar talks too, unless the user is typing somewhere.
  useEffect(() => {
    const typingTarget = (t: EventTarget | null) => t instanceof HTMLElement && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT", "BUTTON"].includes(t.tagName));
    const kd = (e: KeyboardEvent) => {
      if (e.code !== "Space" || e.repeat || typingTarget(e.target)) return;
      e.preventDefault();
      down();
    };
    const ku = (e: KeyboardEvent) => {
      if (e.code !== "Space" || typingTarget(e.target)) return;
      e.preventDefault();
      up();
    };
    document.addEventListener("keydown", kd);
    document.addEventListener("keyup", ku);
    return () => {
      document.removeEventListener("keydown", kd);
      document.removeEventListener("keyup", ku);
    };
  });
  const level = Math.min(1, voice.micLevel() * 4);
  return (
    <div class="talk">
      <button
        type="button"
        class={`talk-button ${talking ? "on" : ""}`}
        aria-pressed={talking}
        aria-label={locked ? (talking ? "Stop talking" : "Tap to talk") : "Hold to talk"}
        onPointerDown={(e) => { (e.currentTarget as HTMLElement).setPointerCapture(e.pointerId); down(); }}
        onPointerUp={up}
        onPointerCancel={up}
        onKeyDown={(e) => { if ((e.key === " " || e.key === "Enter") && !e.repeat) { e.preventDefault(); down(); } }}
        onKeyUp={(e) => { if (e.key === " " || e.key === "Enter") { e.preventDefault(); up(); } }}
        onContextMenu={(e) => e.preventDefault()}
      >
        🎙 {talking ? "Talking…" : locked ? "Tap to talk" : "Hold to talk"}
        <span class="meter" aria-hidden="true" style={{ width: `${Math.round(level * 100)}%` }} />
      </button>
      {talking && <TransportBadge transport={v.talkTransport} live={true} />}
      <label class="lock">
        <input type="checkbox" checked={locked} onChange={(e) => setLocked((e.target as HTMLInputElement).checked)} /> Hands-free (tap to start and stop)
      </label>
    </div>
  );
}

function Members({ app, entry }: { app: AppModel; entry: ThreadEntry }) {
  const [adding, setAdding] = useState("");
  const t = entry.thread;
  const me = t.members.find((m) => m.userId === app.chat.me);
  const admin = me?.role === MemberRole.ADMIN;
  return (
    <section class="members" aria-label="Members">
      <h3>Members</h3>
      <ul>
        {t.members.map((m) => (
          <li key={m.userId} data-member={m.userId}>
            <span class={`presence ${presenceLabel(app.chat.presenceOf(m.userId))}`} data-presence={presenceLabel(app.chat.presenceOf(m.userId))}>
              {m.userId}
            </span>{" "}
            <span class="role">{m.role === MemberRole.ADMIN ? "admin" : "member"}</span>{" "}
            <span class="sr">({presenceLabel(app.chat.presenceOf(m.userId))})</span>
            {admin && isGroup(entry) && m.userId !== app.chat.me && (
              <>
                <button type="button" onClick={() => void app.setRole(t.threadId, m.userId, m.role !== MemberRole.ADMIN)}>
                  {m.role === MemberRole.ADMIN ? `Make ${m.userId} a member` : `Make ${m.userId} an admin`}
                </button>
                <button type="button" onClick={() => void app.removeMember(t.threadId, m.userId)}>Remove {m.userId}</button>
              </>
            )}
          </li>
        ))}
      </ul>
      {admin && isGroup(entry) && (
        <form onSubmit={(e) => { e.preventDefault(); void app.addMembers(t.threadId, adding.split(/[\s,]+/).filter(Boolean)); setAdding(""); }}>
          <label>Add people <input value={adding} onInput={(e) => setAdding((e.target as HTMLInputElement).value)} /></label>
          <button type="submit">Add</button>
        </form>
      )}
      {isGroup(entry) && <button type="button" onClick={() => void app.leave(t.threadId)}>Leave this conversation</button>}
    </section>
  );
}

export function ThreadView({ app, entry }: { app: AppModel; entry: ThreadEntry }) {
  useChanges(app.chat);
  useTicker(1000);
  const [text, setText] = useState("");
  const [showMembers, setShowMembers] = useState(false);
  const list = useRef<HTMLOListElement>(null);
  const id = entry.thread.threadId;
  const messages = app.chat.threadMessages(id);
  const typing = app.chat.typingIn(id);
  const talking = [...entry.talking.keys()].filter((u) => u !== app.chat.me);
  const muted = !!entry.thread.userState?.muted;
  const count = messages.length;
  useEffect(() => {
    list.current?.lastElementChild?.scrollIntoView({ block: "end" });
    if (count) void app.markRead(id);
  }, [count, id]);
  const send = async (e: Event) => {
    e.preventDefault();
    const body = text.trim();
    if (!body) return;
    if (await app.sendText(id, body)) setText("");
  };
  return (
    <section class="thread-pane" aria-label={`Conversation ${app.chat.displayName(entry.thread)}`}>
      <header>
        <h2>{app.chat.displayName(entry.thread)}</h2>
        <button type="button" aria-pressed={muted} onClick={() => void app.mute(id, !muted)}>{muted ? "Unmute" : "Mute"}</button>
        <button type="button" aria-expanded={showMembers} onClick={() => setShowMembers(!showMembers)}>Members ({entry.thread.members.length})</button>
      </header>
      {showMembers && <Members app={app} entry={entry} />}
      {app.olderToken.get(id) && <button type="button" onClick={() => void app.loadOlder(id)}>Load earlier messages</button>}
      <ol class="messages" ref={list} aria-label="Messages" aria-live="polite">
        {messages.map((h) => <MessageItem key={h.messageId} app={app} header={h} />)}
      </ol>
      <p class="activity" aria-live="polite">
        {talking.length > 0 && <span class="talking-now">🎙 {talking.join(", ")} talking now </span>}
        {typing.length > 0 && <span class="typing">{typing.join(", ")} typing…</span>}
      </p>
      <TalkButton app={app} threadId={id} />
      <form class="composer" onSubmit={send}>
        <label class="sr" for="compose">Message</label>
        <input id="compose" placeholder="Write a message" value={text}
          onInput={(e) => { setText((e.target as HTMLInputElement).value); app.typing(id); }} />
        <button type="submit" disabled={!text.trim()}>Send</button>
        <label class="attach">
          Photo or file
          <input type="file" aria-label="Send a photo or file"
            onChange={(e) => { const f = (e.target as HTMLInputElement).files?.[0]; if (f) void app.sendFile(id, f); (e.target as HTMLInputElement).value = ""; }} />
        </label>
        <button type="button" onClick={() => void app.shareLocation(id)}>Share location</button>
      </form>
    </section>
  );
}
