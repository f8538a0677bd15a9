import { useState } from "preact/hooks";
import { MessageKind, MessageState, type MessageHeader } from "../gen/voxmesh/common/v1/message_pb";
import { PresenceState } from "../gen/voxmesh/common/v1/presence_pb";
import { ThreadKind } from "../gen/voxmesh/common/v1/thread_pb";
import { signOut } from "../auth/session";
import type { AppModel } from "../state/app";
import type { ThreadEntry } from "../state/chat";
import { useChanges } from "./hooks";
import { ThreadView } from "./ThreadView";

export function snippet(h: MessageHeader | undefined): string {
  if (!h) return "No messages yet";
  if (h.state === MessageState.RECALLED) return "Message recalled";
  if (h.state === MessageState.DELETED) return "Message deleted";
  switch (h.kind) {
    case MessageKind.VOICE:
      return h.state === MessageState.LIVE ? "Voice message (live)" : "Voice message";
    case MessageKind.TEXT:
      return h.text;
    case MessageKind.IMAGE:
      return "Photo";
    case MessageKind.FILE:
      return `File: ${h.fileName}`;
    case MessageKind.LOCATION:
      return "Location";
    default:
      return "Message";
  }
}

export function presenceLabel(p: PresenceState): string {
  return p === PresenceState.ONLINE ? "online" : p === PresenceState.AWAY ? "away" : p === PresenceState.OFFLINE ? "offline" : "unknown";
}

function ThreadItem({ app, entry, selected }: { app: AppModel; entry: ThreadEntry; selected: boolean }) {
  const name = app.chat.displayName(entry.thread);
  const talking = [...entry.talking.keys()].filter((u) => u !== app.chat.me);
  const sender = entry.last && entry.last.senderUserId !== app.chat.me ? `${entry.last.senderUserId}: ` : entry.last ? "You: " : "";
  return (
    <li>
      <button
        type="button"
        class={`thread ${selected ? "selected" : ""}`}
        aria-current={selected ? "true" : undefined}
        data-thread-id={entry.thread.threadId}
        onClick={() => void app.open(entry.thread.threadId)}
      >
        <span class="name">{name}</span>
        {entry.thread.userState?.muted && <span class="muted" aria-label="muted">🔕</span>}
        {entry.unread > 0 && (
          <span class="badge" aria-label={`${entry.unread} unread`} data-unread={entry.unread}>
            {entry.unread}
          </span>
        )}
        <span class="last">{sender}{snippet(entry.last)}</span>
        {talking.length > 0 && (
          <span class="talking-now" aria-live="polite">
            🎙 {talking.join(", ")} talking now
          </span>
        )}
      </button>
    </li>
  );
}

function NewThread({ app, onDone }: { app: AppModel; onDone: () => void }) {
  const [kind, setKind] = useState<"direct" | "group">("direct");
  const [members, setMembers] = useState("");
  const [title, setTitle] = useState("");
  const submit = async (e: Event) => {
    e.preventDefault();
    const users = members.split(/[\s,]+/).filter(Boolean);
    const id = await app.createThread(kind, users, kind === "group" ? title : "");
    if (id) {
      onDone();
      await app.open(id);
    }
  };
  return (
    <form class="new-thread" onSubmit={submit} aria-label="New conversation">
      <fieldset>
        <legend>Kind</legend>
        <label><input type="radio" name="kind" checked={kind === "direct"} onChange={() => setKind("direct")} /> Direct</label>
        <label><input type="radio" name="kind" checked={kind === "group"} onChange={() => setKind("group")} /> Group</label>
      </fieldset>
      {kind === "group" && (
        <label>Group name <input name="title" value={title} required onInput={(e) => setTitle((e.target as HTMLInputElement).value)} /></label>
      )}
      <label>
        {kind === "direct" ? "With (user name)" : "Members (user names, comma separated)"}
        <input name="members" value={members} required onInput={(e) => setMembers((e.target as HTMLInputElement).value)} />
      </label>
      <button type="submit">Create</button>
      <button type="button" onClick={onDone}>Cancel</button>
    </form>
  );
}

export function App({ app, onSignOut }: { app: AppModel; onSignOut: () => void }) {
  useChanges(app.chat);
  const [creating, setCreating] = useState(false);
  const open = app.openThread ? app.chat.threads.get(app.openThread) : undefined;
  const conn = app.connection;
  const total = [...app.chat.threads.values()].reduce((n, t) => n + t.unread, 0);
  return (
    <div class="app">
      <header class="top">
        <h1>voxmesh</h1>
        <span class="me" aria-label="Signed in as">{app.chat.me}</span>
        <span class={`conn ${conn.status}`} role="status" data-connection={conn.status}>
          {conn.status === "retrying" ? `Reconnecting: ${conn.reason}` : conn.status === "live" ? "Connected" : "Connecting…"}
        </span>
        <label class="dnd">
          <input type="checkbox" checked={app.dnd} onChange={(e) => void app.setDnd((e.target as HTMLInputElement).checked)} /> Do not disturb
        </label>
        <button type="button" onClick={() => { app.stop(); signOut(); onSignOut(); }}>Sign out</button>
      </header>
      <div class="errors" role="alert" aria-live="assertive">
        {app.errors.map((e) => (
          <p key={e.id} class="error">
            {e.text} <button type="button" aria-label="Dismiss" onClick={() => app.dismiss(e.id)}>×</button>
          </p>
        ))}
      </div>
      <nav class="threads" aria-label={`Conversations${total ? `, ${total} unread` : ""}`}>
        <button type="button" onClick={() => setCreating(true)}>New conversation</button>
        {creating && <NewThread app={app} onDone={() => setCreating(false)} />}
        <ul>
          {app.chat.sortedThreads().map((t) => (
            <ThreadItem key={t.thread.threadId} app={app} entry={t} selected={t.thread.threadId === app.openThread} />
          ))}
        </ul>
        {app.chat.threads.size === 0 && <p class="hint">No conversations yet: start one.</p>}
      </nav>
      <main class="thread-view">
        {open ? <ThreadView key={open.thread.threadId} app={app} entry={open} /> : <p class="hint">Pick a conversation.</p>}
      </main>
    </div>
  );
}

export const isGroup = (e: ThreadEntry) => e.thread.kind === ThreadKind.GROUP;
