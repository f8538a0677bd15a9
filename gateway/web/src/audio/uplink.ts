/**
 * Sending a message's chunks while it is recorded, over unary gRPC-web calls (browsers cannot
 * client-stream): StartMessage at once, then AppendChunks one call at a time (chunks that
 * pile up meanwhile go together in the next call), then EndMessage once everything is
 * durable. Transient failures are retried with the same chunks (idempotent by index).
 */
export interface OutChunk {
  index: number;
  offset: number;
  mediaTimeMs: number;
  payload: Uint8Array;
}

export interface UplinkCalls<H> {
  start(): Promise<void>;
  /** Returns the durable chunk count after the call. */
  append(chunks: OutChunk[]): Promise<number>;
  end(totals: { chunkCount: number; sizeBytes: number; durationMs: number }): Promise<H>;
}

export interface UplinkOptions {
  maxBatchBytes: number;
  retries: number;
  retryDelayMs: (attempt: number) => number;
  isTransient: (err: unknown) => boolean;
}

const DEFAULTS: UplinkOptions = {
  maxBatchBytes: 256 * 1024,
  retries: 5,
  retryDelayMs: (a) => Math.min(2000, 100 * 2 ** a),
  isTransient: () => false,
};

export class ChunkUplink<H> {
  private readonly queue: OutChunk[] = [];
  private index = 0;
  private offset = 0;
  private durable = 0;
  private readonly started: Promise<void>;
  private pumping: Promise<void> | null = null;
  private failure: unknown = null;
  private readonly opts: UplinkOptions;

  constructor(
    private readonly calls: UplinkCalls<H>,
    opts: Partial<UplinkOptions> = {},
  ) {
    this.opts = { ...DEFAULTS, ...opts };
    this.started = this.retry(() => calls.start());
    this.started.catch((e: unknown) => (this.failure = e));
  }

  get durableCount(): number {
    return this.durable;
  }

  get failed(): unknown {
    return this.failure;
  }

  push(payload: Uint8Array, mediaTimeMs: number): void {
    this.queue.push({ index: this.index++, offset: this.offset, mediaTimeMs, payload });
    this.offset += payload.length;
    this.pump();
  }

  private pump(): void {
    if (this.pumping || this.failure) return;
    this.pumping = (async () => {
      try {
        await this.started;
        while (this.queue.length) {
          const batch: OutChunk[] = [];
          let bytes = 0;
          while (this.queue.length && (batch.length === 0 || bytes + this.queue[0]!.payload.length <= this.opts.maxBatchBytes)) {
            const c = this.queue.shift()!;
            bytes += c.payload.length;
            batch.push(c);
          }
          this.durable = await this.retry(() => this.calls.append(batch));
        }
      } catch (e) {
        this.failure = e;
      } finally {
        this.pumping = null;
      }
    })();
  }

  /** Every chunk pushed is durable, then the message ends; rejects with the first failure. */
  async finish(durationMs: number): Promise<H> {
    this.pump();
    while (this.pumping) await this.pumping;
    if (this.failure) throw this.failure;
    await this.started;
    return this.retry(() => this.calls.end({ chunkCount: this.index, sizeBytes: this.offset, durationMs }));
  }

  private async retry<T>(call: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await call();
      } catch (e) {
        if (attempt >= this.opts.retries || !this.opts.isTransient(e)) throw e;
        await new Promise((r) => setTimeout(r, this.opts.retryDelayMs(attempt)));
      }
    }
  }
}
