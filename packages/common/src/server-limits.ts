import type { EnvReader } from "./config.js";

/** 4 MiB: the API's largest valid request (100 KB prompt, 50 secrets, …) is far below. */
export const DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024;

/** How long a connection may stay silent or slow before it is closed. */
export interface ConnectionTimeouts {
  /** From accept to the first bytes (the protocol sniff) and to complete HTTP/1.1 headers. */
  headersMs: number;
  /** HTTP/1.1: from the request line to the whole request (not the response: streams live on). */
  requestMs: number;
  /** Between requests on a kept-alive HTTP/1.1 connection. */
  keepAliveMs: number;
  /** An HTTP/2 connection with no frame either way (a stream's keep-alives count). */
  h2IdleMs: number;
}

export const DEFAULT_CONNECTION_TIMEOUTS: Readonly<ConnectionTimeouts> = Object.freeze({
  headersMs: 10_000,
  requestMs: 60_000,
  keepAliveMs: 65_000,
  h2IdleMs: 120_000,
});

export interface ServerLimits {
  /** Largest request message, after decompression; larger ones are refused unread. */
  maxRequestBytes: number;
  timeouts: ConnectionTimeouts;
}

/** `MAX_REQUEST_BYTES` and the `HTTP_*_TIMEOUT_MS` variables, for a service's config.ts. */
export function readServerLimits(r: EnvReader): ServerLimits {
  const d = DEFAULT_CONNECTION_TIMEOUTS;
  return {
    maxRequestBytes: r.int("MAX_REQUEST_BYTES", DEFAULT_MAX_REQUEST_BYTES, {
      min: 64 * 1024,
      max: 64 * 1024 * 1024,
    }),
    timeouts: {
      headersMs: r.int("HTTP_HEADERS_TIMEOUT_MS", d.headersMs, { min: 100 }),
      requestMs: r.int("HTTP_REQUEST_TIMEOUT_MS", d.requestMs, { min: 100 }),
      keepAliveMs: r.int("HTTP_KEEPALIVE_TIMEOUT_MS", d.keepAliveMs, { min: 100 }),
      h2IdleMs: r.int("HTTP2_IDLE_TIMEOUT_MS", d.h2IdleMs, { min: 100 }),
    },
  };
}
