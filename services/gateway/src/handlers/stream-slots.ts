import { Code, ConnectError } from "@connectrpc/connect";

export const DEFAULT_MAX_STREAMS_PER_USER = 20;

/**
 * Open Subscribe streams per user on this gateway replica: one more than the limit is
 * refused with RESOURCE_EXHAUSTED. A slot is taken after authentication and given back
 * when the stream ends, however it ends.
 */
export class StreamSlots {
  private readonly open = new Map<string, number>();

  constructor(private readonly maxPerUser: number) {}

  /** Takes a slot for the user; the returned function gives it back (once). */
  acquire(userId: string): () => void {
    const n = this.open.get(userId) ?? 0;
    if (n >= this.maxPerUser) {
      throw new ConnectError(
        `too many open streams (limit ${this.maxPerUser} per user); close one and try again`,
        Code.ResourceExhausted,
      );
    }
    this.open.set(userId, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.open.get(userId) ?? 1) - 1;
      if (left > 0) this.open.set(userId, left);
      else this.open.delete(userId);
    };
  }
}
