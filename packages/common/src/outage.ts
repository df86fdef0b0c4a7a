/**
 * Tells a dependency's outage (PostgreSQL or NATS unreachable, restarting, or cutting the
 * connection) from other failures, so that callers get the retryable `UNAVAILABLE` for the
 * one and `INTERNAL` for the other. Pure: looks only at the error (and its causes).
 */

/** Socket-level failures: nothing answered, or the connection went away. */
const NETWORK_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

/** SQLSTATEs of a server that is shutting down, starting, or out of connections. */
const PG_OUTAGE_STATES = new Set(["57P01", "57P02", "57P03", "53300", "53400"]);

/** What pg and nats.js say when the connection is gone (they set no code for these). */
const OUTAGE_MESSAGES = [
  /^Connection terminated/,
  /timeout exceeded when trying to connect/,
  /Client has encountered a connection error/,
  /^Client was closed and is not queryable/,
  /Cannot use a pool after calling end/,
];

/** nats.js (v3) error classes of a server that is gone, restarting or not answering. */
const NATS_OUTAGE_NAMES = new Set([
  "ConnectionError",
  "ClosedConnectionError",
  "DrainingConnectionError",
  "TimeoutError",
  "NoResponders",
  "RequestError",
]);

function isOutageItself(err: unknown): boolean {
  if (typeof err !== "object" || err === null) return false;
  const e = err as { code?: unknown; message?: unknown; name?: unknown };
  const code = typeof e.code === "string" ? e.code : undefined;
  if (code && (NETWORK_CODES.has(code) || PG_OUTAGE_STATES.has(code) || code.startsWith("08"))) {
    return true;
  }
  if (typeof e.name === "string" && NATS_OUTAGE_NAMES.has(e.name)) return true;
  const message = typeof e.message === "string" ? e.message : "";
  return OUTAGE_MESSAGES.some((re) => re.test(message));
}

/** True when `err`, or an error in its `cause` chain, is a dependency's outage. */
export function isOutage(err: unknown): boolean {
  for (let e = err, depth = 0; e && depth < 5; depth++) {
    if (isOutageItself(e)) return true;
    if (e instanceof AggregateError && e.errors.some(isOutageItself)) return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}
