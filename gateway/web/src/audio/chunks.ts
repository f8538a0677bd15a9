/**
 * Chunks of one body in index order, whichever way they arrive: live on the updates stream,
 * from ReadBody (stored, then the live tail), repeated after a reconnect. Duplicates are
 * dropped by index; a gap is reported once so the caller can read the missing chunks.
 */
export interface BodyChunk {
  index: number;
  payload: Uint8Array;
  mediaTimeMs: number;
}

export class ChunkAssembler {
  private next = 0;
  private readonly pending = new Map<number, BodyChunk>();
  private gapReported = -1;

  constructor(
    private readonly emit: (chunk: BodyChunk) => void,
    private readonly onGap: (fromIndex: number, toIndex: number) => void = () => {},
  ) {}

  get nextIndex(): number {
    return this.next;
  }

  add(chunks: Iterable<BodyChunk>): void {
    for (const c of chunks) {
      if (c.index < this.next || this.pending.has(c.index)) continue;
      this.pending.set(c.index, c);
    }
    for (let c = this.pending.get(this.next); c; c = this.pending.get(this.next)) {
      this.pending.delete(this.next);
      this.next += 1;
      this.emit(c);
    }
    if (this.pending.size && this.gapReported !== this.next) {
      this.gapReported = this.next;
      this.onGap(this.next, Math.min(...this.pending.keys()));
    }
  }
}
