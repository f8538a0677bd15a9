/**
 * What the app measured about its own audio (record start, first chunk sent, first sound out,
 * pitch heard), on wall-clock milliseconds so two tabs on one machine compare. The browser
 * tests read it (window.voxmeshDiagnostics); a developer can too, from the console.
 */
export type DiagnosticEvent =
  | { type: "recordStart"; messageId: string; at: number }
  | { type: "firstChunk"; messageId: string; at: number }
  | { type: "playStart"; messageId: string; at: number; rate: number; live: boolean }
  | { type: "firstAudio"; messageId: string; at: number }
  | { type: "firstLiveChunk"; messageId: string; at: number; index: number; sessionIndex: number }
  | { type: "tone"; messageId: string; at: number; hz: number; level: number }
  | { type: "playEnd"; messageId: string; at: number }
  | { type: "error"; messageId: string; at: number; text: string }
  | { type: "uplink"; messageId: string; at: number; call: "start" | "append" | "end"; ms: number; outcome: string; chunks?: number }
  | { type: "transport"; messageId: string; at: number; role: "talk" | "listen"; transport: "webrtc" | "grpc-web"; reason: string };

class Diagnostics {
  readonly events: DiagnosticEvent[] = [];
  now(): number {
    return performance.timeOrigin + performance.now();
  }
  record(e: DiagnosticEvent): void {
    if (this.events.length > 5000) this.events.splice(0, 1000);
    this.events.push(e);
  }
}

export const diagnostics = new Diagnostics();
(globalThis as unknown as { voxmeshDiagnostics: Diagnostics }).voxmeshDiagnostics = diagnostics;
