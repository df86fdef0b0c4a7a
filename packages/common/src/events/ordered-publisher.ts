/**
 * Pipelined, ordered, idempotent publishing over one connection.
 *
 * Many publishes may be in flight at once; the store keeps them in the order they were
 * started, because one connection delivers them in order and the server stores what it
 * receives in order (what it stores of one connection is always a prefix of what was sent).
 * Order could only break across connections: an earlier publish lost with the old
 * connection, a later one stored over the new one. So:
 *
 * - while the connection is down, nothing new is started;
 * - after any failure (an error, a timeout, a lost connection), nothing new is started
 *   until every publish in flight has settled; then the failed ones are sent again, one
 *   at a time and in their order, with the same message id (a copy the server already has
 *   is answered as a duplicate with its original sequence), and only then do the held
 *   publishes go out.
 *
 * A publish that still fails after `retryForMs` is rejected (keep that below the server's
 * duplicate window, or a late retry could store a second copy).
 */

export interface Sent {
  seq: bigint;
  duplicate: boolean;
}

export interface OrderedPublisherOptions {
  /** One attempt: publish and wait for the acknowledgement (or throw). */
  send(subject: string, data: Uint8Array, msgId: string): Promise<Sent>;
  /** Give up on a publish this long after its first failure (default 60 s). */
  retryForMs?: number;
  /** True once the connection is closed for good: no more retries. */
  closed(): boolean;
}

interface Job {
  subject: string;
  data: Uint8Array;
  msgId: string;
  order: number;
  failedAt?: number;
  resolve(r: Sent): void;
  reject(err: unknown): void;
}

export class OrderedPublisher {
  private readonly inflight = new Set<Job>();
  private readonly failed: Job[] = [];
  private readonly held: Job[] = [];
  private connected = true;
  private recovering = false;
  private order = 0;

  constructor(private readonly opts: OrderedPublisherOptions) {}

  /** Number of publishes started or held and not yet settled. */
  get pending(): number {
    return this.inflight.size + this.failed.length + this.held.length;
  }

  publish(subject: string, data: Uint8Array, msgId: string): Promise<Sent> {
    return new Promise<Sent>((resolve, reject) => {
      const job: Job = { subject, data, msgId, order: this.order++, resolve, reject };
      if (this.blocked()) this.held.push(job);
      else this.start(job);
    });
  }

  /** The connection went down: hold new publishes until it is back and the old ones settled. */
  disconnected(): void {
    this.connected = false;
  }

  reconnected(): void {
    this.connected = true;
    this.release();
  }

  private blocked(): boolean {
    return !this.connected || this.recovering || this.failed.length > 0 || this.held.length > 0;
  }

  private start(job: Job): void {
    this.inflight.add(job);
    this.opts.send(job.subject, job.data, job.msgId).then(
      (sent) => {
        this.inflight.delete(job);
        job.resolve(sent);
        this.release();
      },
      () => {
        this.inflight.delete(job);
        job.failedAt ??= Date.now();
        this.failed.push(job);
        this.release();
      },
    );
  }

  /** Once nothing is in flight (and the connection is up): retry the failed, then start the held. */
  private release(): void {
    if (this.recovering || this.inflight.size > 0 || !this.connected) return;
    if (this.failed.length > 0) {
      void this.recover();
      return;
    }
    while (this.held.length > 0 && this.connected && this.failed.length === 0 && !this.recovering) {
      this.start(this.held.shift()!);
    }
  }

  private async recover(): Promise<void> {
    this.recovering = true;
    try {
      this.failed.sort((a, b) => a.order - b.order);
      while (this.failed.length > 0) {
        const job = this.failed.shift()!;
        await this.retry(job);
      }
    } finally {
      this.recovering = false;
    }
    this.release();
  }

  /** Sends one publish again until it is acknowledged or its time is up. */
  private async retry(job: Job): Promise<void> {
    const retryForMs = this.opts.retryForMs ?? 60_000;
    for (let attempt = 0; ; attempt++) {
      while (!this.connected && !this.opts.closed()) await new Promise((r) => setTimeout(r, 50));
      try {
        job.resolve(await this.opts.send(job.subject, job.data, job.msgId));
        return;
      } catch (err) {
        if (this.opts.closed() || Date.now() - (job.failedAt ?? 0) > retryForMs) {
          job.reject(err);
          return;
        }
        await new Promise((r) => setTimeout(r, Math.min(50 * 2 ** attempt, 1_000)));
      }
    }
  }
}
