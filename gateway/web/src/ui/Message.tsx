import { useEffect, useState } from "preact/hooks";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { MessageKind, MessageState, type MessageHeader } from "../gen/voxmesh/common/v1/message_pb";
import { formatDuration, waveform } from "../audio/analysis";
import { audioOutput } from "../audio/output";
import { RATES } from "../audio/voice";
import { errorText } from "../api/client";
import type { AppModel } from "../state/app";
import { useChanges } from "./hooks";

const waveforms = new Map<string, number[]>();
const blobs = new Map<string, string>();

function useBlobUrl(app: AppModel, h: MessageHeader, enabled: boolean): [string, string] {
  const [url, setUrl] = useState(blobs.get(h.messageId) ?? "");
  const [error, setError] = useState("");
  useEffect(() => {
    if (!enabled || url) return;
    let live = true;
    app.body(h).then(
      ({ bytes, contentType }) => {
        const u = URL.createObjectURL(new Blob([bytes as Uint8Array<ArrayBuffer>], { type: contentType || h.contentType }));
        blobs.set(h.messageId, u);
        if (live) setUrl(u);
      },
      (e: unknown) => live && setError(errorText(e)),
    );
    return () => {
      live = false;
    };
  }, [enabled, h.messageId]);
  return [url, error];
}

function Waveform({ app, h }: { app: AppModel; h: MessageHeader }) {
  const [bars, setBars] = useState(waveforms.get(h.messageId));
  const complete = h.state === MessageState.COMPLETE;
  useEffect(() => {
    if (bars || !complete) return;
    let live = true;
    app
      .body(h)
      .then(({ bytes }) => audioOutput().ctx.decodeAudioData(bytes.slice().buffer))
      .then((audio) => {
        const w = waveform(audio.getChannelData(0), 40);
        waveforms.set(h.messageId, w);
        if (live) setBars(w);
      })
      .catch(() => {});
    return () => {
      live = false;
    };
  }, [complete, h.messageId]);
  const values = bars ?? Array.from({ length: 40 }, () => 0.08);
  return (
    <svg class="waveform" viewBox="0 0 80 20" width="160" height="40" aria-hidden="true">
      {values.map((v, i) => (
        <rect key={i} x={i * 2} y={10 - Math.max(0.5, v * 9)} width="1.4" height={Math.max(1, v * 18)} />
      ))}
    </svg>
  );
}

/** How this audio travels: "live via WebRTC" or "via gRPC-web". */
export function TransportBadge({ transport, live }: { transport: "webrtc" | "grpc-web" | null; live: boolean }) {
  if (!transport) return null;
  const text = transport === "webrtc" ? "live via WebRTC" : live ? "live via gRPC-web" : "via gRPC-web";
  return <span class="transport" data-transport={transport}>{text}</span>;
}

function Voice({ app, h }: { app: AppModel; h: MessageHeader }) {
  useChanges(app.voice);
  const [rate, setRate] = useState<number>(1);
  const playing = app.voice.view().playing;
  const isPlaying = playing?.messageId === h.messageId;
  const live = h.state === MessageState.LIVE;
  const duration = app.voice.durationOf(h);
  return (
    <div class="voice" data-playing={isPlaying ? "true" : "false"}>
      {isPlaying ? (
        <button type="button" onClick={() => app.voice.stop()} aria-label="Stop playing">⏹</button>
      ) : (
        <button type="button" onClick={() => app.voice.play(h, rate)} aria-label={live ? "Play from the start and catch up to live" : "Play voice message"}>▶</button>
      )}
      <Waveform app={app} h={h} />
      <span class="duration">{live ? "live" : formatDuration(duration)}</span>
      {isPlaying && <TransportBadge transport={app.voice.view().listenTransport} live={playing!.live} />}
      <label>
        Speed{" "}
        <select
          aria-label="Playback speed"
          value={String(isPlaying ? playing!.rate : rate)}
          onChange={(e) => {
            const r = Number((e.target as HTMLSelectElement).value);
            setRate(r);
            if (isPlaying) app.voice.setRate(r);
          }}
        >
          {RATES.map((r) => <option key={r} value={String(r)}>{r}×</option>)}
        </select>
      </label>
    </div>
  );
}

function Body({ app, h }: { app: AppModel; h: MessageHeader }) {
  const complete = h.state === MessageState.COMPLETE;
  const [url, error] = useBlobUrl(app, h, complete && (h.kind === MessageKind.IMAGE || h.kind === MessageKind.FILE));
  switch (h.kind) {
    case MessageKind.VOICE:
      return <Voice app={app} h={h} />;
    case MessageKind.TEXT:
      return <p class="text">{h.text}</p>;
    case MessageKind.IMAGE:
      if (error) return <p class="error">The photo cannot be shown: {error}</p>;
      return url ? <img class="photo" src={url} alt={h.fileName ? `Photo ${h.fileName}` : "Photo"} /> : <p>Loading photo…</p>;
    case MessageKind.FILE:
      if (error) return <p class="error">The file cannot be fetched: {error}</p>;
      return url ? <a href={url} download={h.fileName || "file"}>Download {h.fileName || "file"}</a> : <p>{h.fileName}</p>;
    case MessageKind.LOCATION: {
      const l = h.location;
      if (!l) return <p>Location</p>;
      const label = `${l.latitude.toFixed(5)}, ${l.longitude.toFixed(5)}`;
      return <a href={`geo:${l.latitude},${l.longitude}`}>📍 {l.label || label}</a>;
    }
    default:
      return <p>Unsupported message</p>;
  }
}

export function MessageItem({ app, header: h }: { app: AppModel; header: MessageHeader }) {
  const [forwarding, setForwarding] = useState(false);
  const mine = h.senderUserId === app.chat.me;
  const when = h.startedAt ? timestampDate(h.startedAt) : h.createdAt ? timestampDate(h.createdAt) : null;
  const gone = h.state === MessageState.RECALLED || h.state === MessageState.DELETED;
  const liked = h.likedByUserIds.includes(app.chat.me);
  return (
    <li class={`message ${mine ? "mine" : ""}`} data-message-id={h.messageId} data-state={MessageState[h.state]} data-kind={MessageKind[h.kind]}>
      <div class="meta">
        <span class="sender">{mine ? "You" : h.senderUserId}</span>
        {when && <time dateTime={when.toISOString()}>{when.toLocaleTimeString()}</time>}
        {h.forwardedFrom && <span class="fwd">forwarded</span>}
      </div>
      {gone ? <p class="gone">{h.state === MessageState.RECALLED ? "Message recalled" : "Message deleted"}</p> : <Body app={app} h={h} />}
      {!gone && (
        <div class="actions">
          <button type="button" aria-pressed={liked} aria-label={liked ? "Unlike" : "Like"} onClick={() => void app.like(h)}>
            ♥ {h.likeCount > 0 ? h.likeCount : ""}
          </button>
          <button type="button" onClick={() => setForwarding(!forwarding)}>Forward</button>
          {mine && <button type="button" onClick={() => void app.recall(h)}>Recall</button>}
          <button type="button" onClick={() => void app.remove(h, false)}>Delete for me</button>
          {mine && <button type="button" onClick={() => void app.remove(h, true)}>Delete for everyone</button>}
        </div>
      )}
      {forwarding && (
        <label>
          Forward to{" "}
          <select
            aria-label="Forward to conversation"
            onChange={(e) => {
              const target = (e.target as HTMLSelectElement).value;
              if (target) void app.forward(h, target);
              setForwarding(false);
            }}
          >
            <option value="">Choose…</option>
            {app.chat.sortedThreads().map((t) => (
              <option key={t.thread.threadId} value={t.thread.threadId}>{app.chat.displayName(t.thread)}</option>
            ))}
          </select>
        </label>
      )}
    </li>
  );
}
