import { describe, expect, it } from "vitest";
import { Code, ConnectError } from "@connectrpc/connect";
import { FallbackReason, TransportChooser, listenableOverWebRtc, notYetStored, signalingReason } from "./webrtc";

describe("TransportChooser", () => {
  it("uses gRPC-web when the browser has no RTCPeerConnection", () => {
    const c = new TransportChooser(false);
    expect(c.choose()).toBe("grpc-web");
    c.succeeded();
    expect(c.choose()).toBe("grpc-web");
  });

  it("falls back after an ICE timeout and retries WebRTC after the hold-off", () => {
    let now = 1000;
    const c = new TransportChooser(true, 60_000, () => now);
    expect(c.choose()).toBe("webrtc");
    c.failed(FallbackReason.ICE_TIMEOUT);
    expect(c.choose()).toBe("grpc-web");
    now += 59_999;
    expect(c.choose()).toBe("grpc-web");
    now += 2;
    expect(c.choose()).toBe("webrtc");
  });

  it("falls back after failed signaling too", () => {
    const c = new TransportChooser(true, 60_000, () => 0);
    c.failed(FallbackReason.SIGNALING_FAILED);
    expect(c.choose()).toBe("grpc-web");
    c.succeeded();
    expect(c.choose()).toBe("webrtc");
  });

  it("keeps WebRTC for the next message when only this message could not use it", () => {
    const c = new TransportChooser(true, 60_000, () => 0);
    c.failed(FallbackReason.NOT_OGG_OPUS);
    expect(c.choose()).toBe("webrtc");
    expect(c.lastReason).toBe(FallbackReason.NOT_OGG_OPUS);
  });
});

describe("signaling errors", () => {
  it("FAILED_PRECONDITION means the body is not Ogg/Opus; others mean signaling failed", () => {
    expect(signalingReason(new ConnectError("webm", Code.FailedPrecondition))).toBe(FallbackReason.NOT_OGG_OPUS);
    expect(signalingReason(new ConnectError("down", Code.Unavailable))).toBe(FallbackReason.SIGNALING_FAILED);
    expect(signalingReason(new Error("x"))).toBe(FallbackReason.SIGNALING_FAILED);
  });

  it("NOT_FOUND (no chunk stored yet) is retried, not a fallback", () => {
    expect(notYetStored(new ConnectError("no chunk", Code.NotFound))).toBe(true);
    expect(notYetStored(new ConnectError("no", Code.PermissionDenied))).toBe(false);
  });

  it("only Ogg/Opus bodies are listened to over WebRTC", () => {
    expect(listenableOverWebRtc("audio/ogg;codecs=opus")).toBe(true);
    expect(listenableOverWebRtc("audio/webm;codecs=opus")).toBe(false);
  });
});
