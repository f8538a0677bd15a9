/**
 * Ogg (RFC 3533) to Opus packets, incrementally: bytes arrive in chunks that need not align
 * with pages, and a packet may continue over pages. Media Source Extensions do not take Ogg,
 * so live Ogg/Opus from native clients is decoded packet by packet with WebCodecs.
 */
import { joined } from "./typed_arrays";

export interface OpusHead {
  channels: number;
  preSkip: number;
  inputSampleRate: number;
  raw: Uint8Array;
}

export class OggOpusParser {
  private buffer: Uint8Array = new Uint8Array(0);
  private partial: Uint8Array[] = [];
  private packetCount = 0;
  head: OpusHead | null = null;

  /** Feed bytes; returns the audio packets completed by them (headers are consumed). */
  push(bytes: Uint8Array): Uint8Array[] {
    this.buffer = concat([this.buffer, bytes]);
    const packets: Uint8Array[] = [];
    let pos = 0;
    while (this.buffer.length - pos >= 27) {
      if (!(this.buffer[pos] === 0x4f && this.buffer[pos + 1] === 0x67 && this.buffer[pos + 2] === 0x67 && this.buffer[pos + 3] === 0x53)) {
        throw new Error("not an Ogg stream (no OggS capture pattern)");
      }
      const segments = this.buffer[pos + 26]!;
      const headerLen = 27 + segments;
      if (this.buffer.length - pos < headerLen) break;
      let bodyLen = 0;
      for (let i = 0; i < segments; i++) bodyLen += this.buffer[pos + 27 + i]!;
      if (this.buffer.length - pos < headerLen + bodyLen) break;
      let offset = pos + headerLen;
      for (let i = 0; i < segments; i++) {
        const lace = this.buffer[pos + 27 + i]!;
        this.partial.push(this.buffer.subarray(offset, offset + lace));
        offset += lace;
        if (lace < 255) {
          const packet = concat(this.partial);
          this.partial = [];
          this.packetCount += 1;
          if (this.packetCount === 1) this.head = parseOpusHead(packet);
          else if (this.packetCount > 2) packets.push(packet); // packet 2 is OpusTags
        }
      }
      pos += headerLen + bodyLen;
    }
    this.buffer = this.buffer.slice(pos);
    return packets;
  }
}

export function parseOpusHead(packet: Uint8Array): OpusHead {
  const magic = new TextDecoder().decode(packet.subarray(0, 8));
  if (magic !== "OpusHead") throw new Error("the Ogg stream is not Opus (no OpusHead)");
  const view = new DataView(packet.buffer, packet.byteOffset, packet.byteLength);
  return {
    channels: packet[9]!,
    preSkip: view.getUint16(10, true),
    inputSampleRate: view.getUint32(12, true),
    raw: packet.slice(),
  };
}

/** Duration of one Opus packet in microseconds, from its TOC byte (RFC 6716 §3.1). */
export function opusPacketDurationUs(packet: Uint8Array): number {
  const toc = packet[0] ?? 0;
  const config = toc >> 3;
  let frameUs: number;
  if (config < 12) frameUs = [10_000, 20_000, 40_000, 60_000][config % 4]!;
  else if (config < 16) frameUs = config % 2 === 0 ? 10_000 : 20_000;
  else frameUs = [2_500, 5_000, 10_000, 20_000][config % 4]!;
  const code = toc & 0x03;
  const frames = code === 0 ? 1 : code === 3 ? (packet[1] ?? 0) & 0x3f : 2;
  return frameUs * frames;
}

export function concat(parts: Uint8Array[]): Uint8Array {
  return joined(parts, (n) => new Uint8Array(n));
}
