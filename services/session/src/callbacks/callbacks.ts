import {
  type Logger,
  type OutboundPolicy,
  type SafeFetch,
  SafeFetchError,
  SsrfError,
  safeFetch,
} from "@kilo-cloud/common";
import { webhookHeaders, webhookKey } from "./standard-webhooks.js";

/**
 * Completion callbacks: when an execution reaches a terminal status and its session has a
 * callback target, the target gets a JSON POST signed by the Standard Webhooks spec (see
 * standard-webhooks.ts). This module makes ONE attempt; the outbox
 * (dispatch/callback-outbox.ts) keeps the delivery and schedules the retries over hours.
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

/**
 * What one attempt came to: `delivered` (2xx), `retry` (408, 429, 5xx, network error or
 * timeout: try again later), or `failed` (a refusal that retrying will not change).
 */
export interface AttemptResult {
  outcome: "delivered" | "retry" | "failed";
  /** HTTP status of the answer, if there was one. */
  httpStatus?: number;
  /** Why it was not delivered: names the host, never the path, headers or body. */
  error?: string;
  /** The receiver's Retry-After (429/503), in milliseconds. */
  retryAfterMs?: number;
}

export interface CallbackSenderDeps {
  /** Per-deployment signing secret shared with receivers (`whsec_…` or ≥ 32 bytes). */
  secret: string;
  policy: OutboundPolicy;
  logger: Logger;
  fetchImpl?: SafeFetch;
  /** Milliseconds since the epoch. */
  clock?: () => number;
  /** Per attempt: a receiver that does not answer within it is tried again later. */
  timeoutMs?: number;
}

const USER_AGENT = "kilo-cloud-agent";

/** Headers we set; a target's header with one of these names (or a transport one) is dropped. */
const RESERVED_HEADERS = new Set([
  "content-type",
  "user-agent",
  "webhook-id",
  "webhook-timestamp",
  "webhook-signature",
  "host",
  "content-length",
  "transfer-encoding",
  "connection",
  "keep-alive",
  "expect",
  "te",
  "upgrade",
]);

/** Only the documented fields, in a fixed order, whatever else the caller's object holds. */
export function callbackBody(payload: CallbackPayload): string {
  return JSON.stringify({
    cloudAgentSessionId: payload.cloudAgentSessionId,
    kiloSessionId: payload.kiloSessionId,
    executionId: payload.executionId,
    status: payload.status,
    errorMessage: payload.errorMessage,
    branch: payload.branch,
  });
}

export class CallbackSender {
  private readonly key: Buffer;
  private readonly policy: OutboundPolicy;
  private readonly log: Logger;
  private readonly fetchImpl: SafeFetch;
  private readonly clock: () => number;
  private readonly timeoutMs: number;

  constructor(deps: CallbackSenderDeps) {
    this.key = webhookKey(deps.secret);
    this.policy = deps.policy;
    this.log = deps.logger;
    this.fetchImpl = deps.fetchImpl ?? safeFetch;
    this.clock = deps.clock ?? Date.now;
    this.timeoutMs = deps.timeoutMs ?? 10_000;
  }

  /** Makes one attempt. Never throws: the outcome is in the result (and the log). */
  async attempt(
    target: CallbackTarget,
    payload: CallbackPayload,
    id: string,
    opts: { signal?: AbortSignal } = {},
  ): Promise<AttemptResult> {
    const host = hostOf(target.url);
    const ctx = { host, webhookId: id, executionId: payload.executionId };
    const headers = this.targetHeaders(target, ctx);
    if (!headers) return { outcome: "failed", error: "a callback header has an invalid name or value" };
    const body = callbackBody(payload);
    const signed = webhookHeaders(this.key, id, Math.floor(this.clock() / 1000), body);
    for (const [name, value] of Object.entries(signed)) headers.set(name, value);
    headers.set("content-type", "application/json");
    headers.set("user-agent", USER_AGENT);
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
      return this.judge(res.status, res.headers.get("retry-after"), ctx);
    } catch (err) {
      return this.failure(err, ctx);
    }
  }

  /** The target's own headers, less ours; undefined when one is not a valid header. */
  private targetHeaders(target: CallbackTarget, ctx: object): Headers | undefined {
    const headers = new Headers();
    try {
      for (const [name, value] of Object.entries(target.headers ?? {})) {
        if (!RESERVED_HEADERS.has(name.toLowerCase())) headers.set(name, value);
      }
      return headers;
    } catch {
      this.log.warn(ctx, "callback not sent: a target header has an invalid name or value");
      return undefined;
    }
  }

  private judge(status: number, retryAfter: string | null, ctx: { host: string }): AttemptResult {
    if (status >= 200 && status < 300) {
      this.log.info({ ...ctx, status }, "callback delivered");
      return { outcome: "delivered", httpStatus: status };
    }
    const error = `${ctx.host} answered HTTP ${status}`;
    const retryable = status === 408 || status === 429 || status >= 500;
    if (!retryable) {
      // 3xx included: we never follow a redirect, and retrying will not change it.
      this.log.warn({ ...ctx, status }, "callback refused by the receiver; not retrying");
      return { outcome: "failed", httpStatus: status, error };
    }
    this.log.warn({ ...ctx, status }, "callback attempt failed");
    const retryAfterMs = parseRetryAfter(retryAfter, this.clock());
    return {
      outcome: "retry",
      httpStatus: status,
      error,
      ...(retryAfterMs !== undefined ? { retryAfterMs } : {}),
    };
  }

  private failure(err: unknown, ctx: { host: string }): AttemptResult {
    if (err instanceof SsrfError) {
      this.log.warn({ host: err.host, reason: err.reason }, "callback refused by outbound policy");
      return { outcome: "failed", error: err.message };
    }
    const kind = err instanceof SafeFetchError ? err.kind : "network";
    this.log.warn({ ...ctx, error: kind }, "callback attempt failed");
    return {
      outcome: "retry",
      error: err instanceof SafeFetchError ? err.message : `request to ${ctx.host} failed`,
    };
  }
}

/** Seconds (or an HTTP date) → milliseconds to wait; undefined when absent or unreadable. */
export function parseRetryAfter(value: string | null, nowMs: number): number | undefined {
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
