import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";

/** How often, and how patiently, calls that are safe to repeat are retried. */
export interface RetryOptions {
  /** Attempts in all, the first one included (default 4; 1 disables retries). */
  maxAttempts?: number;
  /** The first back-off in milliseconds, doubled on each retry (default 200). */
  baseDelayMs?: number;
  /** The longest back-off in milliseconds (default 5000). */
  maxDelayMs?: number;
}

const REPEATABLE = new Set([
  MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS,
  MethodOptions_IdempotencyLevel.IDEMPOTENT,
]);

/** The delay before retry number `retry` (1-based): exponential, capped, with full jitter. */
export function backoffDelay(retry: number, options: RetryOptions = {}): number {
  const base = options.baseDelayMs ?? 200;
  const cap = options.maxDelayMs ?? 5_000;
  const ceiling = Math.min(cap, base * 2 ** (retry - 1));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

/** Waits `ms`, or rejects as soon as `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Retries unary calls whose method the contract declares IDEMPOTENT or NO_SIDE_EFFECTS
 * (GetSession, ListSessions, DeleteSession, InterruptSession, ListCallbackDeliveries) when
 * they fail with UNAVAILABLE, and nothing else: a call with side effects is never repeated.
 */
export function retryInterceptor(options: RetryOptions = {}): Interceptor {
  const attempts = Math.max(1, options.maxAttempts ?? 4);
  return (next) => async (req) => {
    if (req.stream || !REPEATABLE.has(req.method.idempotency)) return next(req);
    for (let attempt = 1; ; attempt++) {
      try {
        return await next(req);
      } catch (err) {
        const code = ConnectError.from(err).code;
        if (code !== Code.Unavailable || attempt >= attempts || req.signal.aborted) throw err;
        await sleep(backoffDelay(attempt, options), req.signal);
      }
    }
  };
}
