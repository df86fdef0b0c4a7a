import { randomUUID } from "node:crypto";
import { setTimeout as delay } from "node:timers/promises";
import {
  type Logger,
  type OutboundPolicy,
  type SafeFetch,
  SafeFetchError,
  SsrfError,
  safeFetch,
} from "@kilo-cloud/common";
import { signCallback } from "./signature.js";

export { signCallback, type VerifyOptions, verifyCallbackSignature } from "./signature.js";

/**
 * Completion callbacks: when an execution reaches a terminal status and its session has a
 * callback target, the target gets one signed JSON POST (see signature.ts for the scheme),
 * retried on 429, 5xx and network errors with exponential backoff. Delivery is
 * at-least-once; the x-kilo-delivery id lets a receiver drop duplicates.
 *
 * The URL is caller-supplied, so every attempt goes through safeFetch: SSRF policy checked
 * at connect time, no redirects.
 */
export type TerminalStatus = "completed" | "failed" | "interrupted" | "expired";

export interface CallbackTarget {
  url: string;
  /** Sent with every attempt (e.g. the receiver's own auth); cannot replace ours. */
  headers?: Readonly<Record<string, string>>;
}

export interface CallbackPayload {
  cloudAgentSessionId: string;
  kiloSessionId: string;
  executionId: string;
  status: TerminalStatus;
  errorMessage?: string;
  branch?: string;
}

export interface CallbackResult {
  delivered: boolean;
  attempts: number;
  /** HTTP status of the last answer, if there was one. */
  lastStatus?: number;
  /** Why it was not delivered: names the host, never the path, headers or body. */
  error?: string;
}

export interface CallbackSenderDeps {
  /** Per-deployment signing secret shared with receivers; at least 32 bytes. */
  secret: string;
  policy: OutboundPolicy;
  logger: Logger;
  fetchImpl?: SafeFetch;
  /** Milliseconds since the epoch. */
  clock?: () => number;
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** In [0, 1); jitters the backoff. */
  random?: () => number;
  maxAttempts?: number;
  /** First retry delay; doubled for each further retry (1 s, 2 s, 4 s, 8 s by default). */
  baseDelayMs?: number;
  timeoutMs?: number;
}

/** A Retry-After beyond this is ignored in favour of our own backoff. */
const MAX_RETRY_AFTER_MS = 60_000;

const USER_AGENT = "kilo-cloud-agent";

/** Headers we set; a target's header with one of these names (or a transport one) is dropped. */
const RESERVED_HEADERS = new Set([
  "content-type",
  "user-agent",
  "x-kilo-timestamp",
  "x-kilo-signature",
  "x-kilo-delivery",
  "host",
  "content-length",
  "transfer-encoding",
  "connection",
  "keep-alive",
  "expect",
  "te",
  "upgrade",
]);

export class CallbackSender {
  private readonly secret: string;
  private readonly policy: OutboundPolicy;
  private readonly log: Logger;
  private readonly fetchImpl: SafeFetch;
  private readonly clock: () => number;
  private readonly sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  private readonly random: () => number;
  private readonly maxAttempts: number;
  private readonly baseDelayMs: number;
  private readonly timeoutMs: number;

  constructor(deps: CallbackSenderDeps) {
    if (Buffer.byteLength(deps.secret, "utf8") < 32) {
      throw new Error("the callback signing secret must be at least 32 bytes");
    }
    this.secret = deps.secret;
    this.policy = deps.policy;
    this.log = deps.logger;
    this.fetchImpl = deps.fetchImpl ?? safeFetch;
    this.clock = deps.clock ?? Date.now;
    this.sleep = deps.sleep ?? ((ms, signal) => delay(ms, undefined, signal ? { signal } : {}));
    this.random = deps.random ?? Math.random;
    this.maxAttempts = Math.max(1, deps.maxAttempts ?? 5);
    this.baseDelayMs = deps.baseDelayMs ?? 1000;
    this.timeoutMs = deps.timeoutMs ?? 10_000;
  }

  /**
   * Delivers one callback. Never throws: the outcome is in the result (and the log).
   * `signal` stops further attempts, e.g. on shutdown.
   */
  async send(
    target: CallbackTarget,
    payload: CallbackPayload,
    opts: { signal?: AbortSignal } = {},
  ): Promise<CallbackResult> {
    // Only the documented fields, in a fixed order, whatever else the caller's object holds.
    const body = JSON.stringify({
      cloudAgentSessionId: payload.cloudAgentSessionId,
      kiloSessionId: payload.kiloSessionId,
      executionId: payload.executionId,
      status: payload.status,
      errorMessage: payload.errorMessage,
      branch: payload.branch,
    });
    const deliveryId = randomUUID();
    const host = hostOf(target.url);
    const ctx = { host, deliveryId, executionId: payload.executionId };

    const extra = new Headers();
    const dropped: string[] = [];
    try {
      for (const [name, value] of Object.entries(target.headers ?? {})) {
        if (RESERVED_HEADERS.has(name.toLowerCase())) dropped.push(name.toLowerCase());
        else extra.set(name, value);
      }
    } catch {
      this.log.warn(ctx, "callback not sent: a target header has an invalid name or value");
      return { delivered: false, attempts: 0, error: "a callback header has an invalid name or value" };
    }
    if (dropped.length > 0) this.log.debug({ ...ctx, dropped }, "callback target headers ignored");

    let lastStatus: number | undefined;
    let error: string | undefined;
    for (let attempt = 1; attempt <= this.maxAttempts; attempt++) {
      if (opts.signal?.aborted) return this.abandoned(ctx, attempt - 1, lastStatus);

      const timestamp = Math.floor(this.clock() / 1000);
      const headers = new Headers(extra);
      headers.set("content-type", "application/json");
      headers.set("user-agent", USER_AGENT);
      headers.set("x-kilo-timestamp", String(timestamp));
      headers.set("x-kilo-signature", signCallback(this.secret, timestamp, body));
      headers.set("x-kilo-delivery", deliveryId);

      let retryAfterMs: number | undefined;
      try {
        const res = await this.fetchImpl(target.url, {
          method: "POST",
          headers,
          body,
          policy: this.policy,
          timeoutMs: this.timeoutMs,
          ...(opts.signal ? { signal: opts.signal } : {}),
        });
        // We only need the status; do not leave the response open.
        await res.body?.cancel().catch(() => {});
        lastStatus = res.status;
        if (res.status >= 200 && res.status < 300) {
          this.log.info({ ...ctx, attempt, status: res.status }, "callback delivered");
          return { delivered: true, attempts: attempt, lastStatus };
        }
        error = `${host} answered HTTP ${res.status}`;
        if (res.status !== 429 && res.status < 500) {
          // 3xx included: we never follow a redirect, and retrying will not change it.
          this.log.warn({ ...ctx, attempt, status: res.status }, "callback rejected; not retrying");
          return { delivered: false, attempts: attempt, lastStatus, error };
        }
        if (res.status === 429 || res.status === 503) {
          retryAfterMs = parseRetryAfter(res.headers.get("retry-after"), this.clock());
        }
        this.log.warn({ ...ctx, attempt, status: res.status }, "callback attempt failed");
      } catch (err) {
        if (err instanceof SsrfError) {
          this.log.warn(
            { host: err.host, reason: err.reason, deliveryId },
            "callback refused by outbound policy",
          );
          return { delivered: false, attempts: attempt, error: err.message };
        }
        if (err instanceof SafeFetchError && err.kind === "aborted") {
          return this.abandoned(ctx, attempt, lastStatus);
        }
        error = err instanceof SafeFetchError ? err.message : `request to ${host} failed`;
        lastStatus = undefined;
        this.log.warn(
          { ...ctx, attempt, error: err instanceof SafeFetchError ? err.kind : "network" },
          "callback attempt failed",
        );
      }

      if (attempt < this.maxAttempts) {
        const backoff = this.baseDelayMs * 2 ** (attempt - 1) * (0.75 + 0.5 * this.random());
        const wait =
          retryAfterMs !== undefined && retryAfterMs <= MAX_RETRY_AFTER_MS
            ? Math.max(retryAfterMs, backoff)
            : backoff;
        try {
          await this.sleep(Math.round(wait), opts.signal);
        } catch {
          return this.abandoned(ctx, attempt, lastStatus);
        }
      }
    }
    this.log.warn(
      { ...ctx, attempts: this.maxAttempts, status: lastStatus },
      "callback not delivered; giving up",
    );
    return {
      delivered: false,
      attempts: this.maxAttempts,
      ...(lastStatus !== undefined ? { lastStatus } : {}),
      ...(error !== undefined ? { error } : {}),
    };
  }

  private abandoned(ctx: object, attempts: number, lastStatus: number | undefined): CallbackResult {
    this.log.warn({ ...ctx, attempts }, "callback abandoned: shutting down");
    return {
      delivered: false,
      attempts,
      ...(lastStatus !== undefined ? { lastStatus } : {}),
      error: "aborted",
    };
  }
}

/** Seconds (or an HTTP date) → milliseconds to wait; undefined when absent or unreadable. */
function parseRetryAfter(value: string | null, nowMs: number): number | undefined {
  if (value === null) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - nowMs);
}

function hostOf(url: string): string {
  try {
    return new URL(url).host;
  } catch {
    return "(invalid URL)";
  }
}
