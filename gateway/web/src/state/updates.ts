/**
 * The device's updates stream, kept open: on any failure it reconnects with a growing,
 * jittered delay and resumes from the last cursor (no gap; repeats are applied idempotently).
 * A "moved" refusal (the user's home router changed) reconnects at once.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import type { UpdateEvent } from "../gen/voxmesh/common/v1/update_pb";
import type { Router } from "../api/client";
import { errorText } from "../api/client";

export type ConnectionState = { status: "connecting" | "live" } | { status: "retrying"; reason: string; inMs: number };

export function backoffMs(attempt: number, random: number = Math.random()): number {
  const cap = Math.min(5000, 250 * 2 ** attempt);
  return Math.round(cap / 2 + (random * cap) / 2);
}

export class UpdatesConnection {
  private abort: AbortController | null = null;
  private running = false;
  cursor: string;

  constructor(
    private readonly router: Router,
    private readonly deviceId: string,
    private readonly onEvents: (events: UpdateEvent[]) => void,
    private readonly onState: (s: ConnectionState) => void,
    private readonly storage: Storage = sessionStorage,
  ) {
    this.cursor = storage.getItem(`voxmesh.cursor.${deviceId}`) ?? "";
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    void this.loop();
  }

  stop(): void {
    this.running = false;
    this.abort?.abort();
  }

  /** Drop the current stream now and reconnect (tests, network changes). */
  reconnect(): void {
    this.abort?.abort();
  }

  private async loop(): Promise<void> {
    let attempt = 0;
    while (this.running) {
      this.abort = new AbortController();
      this.onState({ status: "connecting" });
      let reason = "the stream ended";
      try {
        for await (const frame of this.router.updates({ deviceId: this.deviceId, cursor: this.cursor }, { signal: this.abort.signal })) {
          attempt = 0;
          this.onState({ status: "live" });
          if (frame.events.length) this.onEvents(frame.events);
          if (frame.cursor) {
            this.cursor = frame.cursor;
            this.storage.setItem(`voxmesh.cursor.${this.deviceId}`, frame.cursor);
          }
        }
      } catch (e) {
        if (!this.running) return;
        reason = errorText(e);
        if (e instanceof ConnectError && e.code === Code.FailedPrecondition) attempt = 0;
        if (e instanceof ConnectError && e.code === Code.Unauthenticated) {
          this.onState({ status: "retrying", reason, inMs: -1 });
          this.running = false;
          return;
        }
      }
      if (!this.running) return;
      const wait = reason.includes("moved") ? 0 : backoffMs(attempt++);
      this.onState({ status: "retrying", reason, inMs: wait });
      await new Promise((r) => setTimeout(r, wait));
    }
  }
}
