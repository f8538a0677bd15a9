import { describe, expect, it } from "vitest";
import { backoffMs } from "./updates";

describe("reconnect backoff", () => {
  it("grows, is capped at 5 s and is jittered", () => {
    expect(backoffMs(0, 0)).toBe(125);
    expect(backoffMs(0, 1)).toBe(250);
    expect(backoffMs(3, 1)).toBe(2000);
    expect(backoffMs(20, 1)).toBe(5000);
    expect(backoffMs(20, 0)).toBe(2500);
  });
});
