/**
 * Publishes in batches, in call order: whatever was published while the previous batch
 * was being stored goes out as the next batch (up to `maxBatch`), so a burst costs one
 * round trip per batch instead of one per event, and a lone event is not delayed. A batch
 * that fails with a transient error is sent again whole, with the same message ids (the
 * store deduplicates), before anything after it: no loss, no duplicate, order kept.
 */

export interface BatchPublisherOptions<In, Out> {
  /** Stores one batch; answers one result per input, in order. */
  store(batch: In[]): Promise<Out[]>;
  /** Whether an error is worth sending the batch again for. */
  transient(err: unknown): boolean;
  /** Most inputs per batch (default 256). */
  maxBatch?: number;
  /** Give up on a batch this long after its first failure (default 60 s). */
  retryForMs?: number;
  /** Resolves after `ms`, or at once when the owner closes. */
  sleep(ms: number): Promise<void>;
  closed(): boolean;
}

interface Job<In, Out> {
  input: In;
  resolve(out: Out): void;
  reject(err: unknown): void;
}

export class BatchPublisher<In, Out> {
  private queue: Job<In, Out>[] = [];
  private running = false;

  constructor(private readonly opts: BatchPublisherOptions<In, Out>) {}

  publish(input: In): Promise<Out> {
    return new Promise<Out>((resolve, reject) => {
      this.queue.push({ input, resolve, reject });
      if (!this.running) void this.run();
    });
  }

  private async run(): Promise<void> {
    this.running = true;
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.opts.maxBatch ?? 256);
        await this.storeWithRetries(batch);
      }
    } finally {
      this.running = false;
    }
  }

  private async storeWithRetries(batch: Job<In, Out>[]): Promise<void> {
    const firstFailure = { at: 0 };
    for (let attempt = 0; ; attempt++) {
      try {
        const out = await this.opts.store(batch.map((j) => j.input));
        for (const [i, j] of batch.entries()) j.resolve(out[i]!);
        return;
      } catch (err) {
        firstFailure.at ||= Date.now();
        const expired = Date.now() - firstFailure.at > (this.opts.retryForMs ?? 60_000);
        if (this.opts.closed() || expired || !this.opts.transient(err)) {
          for (const j of batch) j.reject(err);
          return;
        }
        await this.opts.sleep(Math.min(100 * 2 ** attempt, 2_000));
      }
    }
  }
}
