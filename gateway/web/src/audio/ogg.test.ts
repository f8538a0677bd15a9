import { describe, expect, it } from "vitest";
import { OggOpusParser, opusPacketDurationUs } from "./ogg";

/** One Ogg page with the given packets (lacing values computed), CRC left zero. */
function page(packets: Uint8Array[], continued = false): Uint8Array {
  const lacing: number[] = [];
  for (const p of packets) {
    let n = p.length;
    while (n >= 255) {
      lacing.push(255);
      n -= 255;
    }
    lacing.push(n);
  }
  const body = packets.reduce((a, p) => a + p.length, 0);
  const out = new Uint8Array(27 + lacing.length + body);
  out.set([0x4f, 0x67, 0x67, 0x53]);
  out[5] = continued ? 1 : 0;
  out[26] = lacing.length;
  out.set(lacing, 27);
  let o = 27 + lacing.length;
  for (const p of packets) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

const head = () => {
  const h = new Uint8Array(19);
  h.set(new TextEncoder().encode("OpusHead"));
  h[8] = 1;
  h[9] = 2; // channels
  h[10] = 0x38; // pre-skip 312
  h[11] = 0x01;
  h.set([0x80, 0xbb, 0, 0], 12); // 48000
  return h;
};

describe("OggOpusParser", () => {
  it("reads the head, skips the tags, and returns audio packets across arbitrary chunk cuts", () => {
    const audio = [new Uint8Array(300).fill(7), new Uint8Array([0xfc, 1, 2]), new Uint8Array([0x78, 9])];
    const stream = new Uint8Array([
      ...page([head()]),
      ...page([new TextEncoder().encode("OpusTags....")]),
      ...page([audio[0]!, audio[1]!]),
      ...page([audio[2]!]),
    ]);
    const parser = new OggOpusParser();
    const got: Uint8Array[] = [];
    for (let i = 0; i < stream.length; i += 17) got.push(...parser.push(stream.subarray(i, i + 17)));
    expect(parser.head).toMatchObject({ channels: 2, preSkip: 312, inputSampleRate: 48000 });
    expect(got.map((p) => Array.from(p))).toEqual(audio.map((p) => Array.from(p)));
  });

  it("refuses a stream that is not Ogg", () => {
    expect(() => new OggOpusParser().push(new Uint8Array(40).fill(1))).toThrow(/not an Ogg stream/);
  });

  it("knows packet durations from the TOC byte", () => {
    expect(opusPacketDurationUs(new Uint8Array([0xfc]))).toBe(20_000); // CELT 20 ms, one frame
    expect(opusPacketDurationUs(new Uint8Array([0x78 | 1]))).toBe(40_000); // SILK 20 ms, two frames
    expect(opusPacketDurationUs(new Uint8Array([0x5b, 3]))).toBe(180_000); // 60 ms x 3
  });
});
