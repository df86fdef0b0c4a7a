import { createHmac, timingSafeEqual } from "node:crypto";

/**
 * Signing of completion callbacks, in the manner of Stripe's webhooks.
 *
 * Every POST carries
 *   x-kilo-timestamp: <unix seconds when this attempt was sent>
 *   x-kilo-signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>
 *   x-kilo-delivery:  <uuid, the same on every retry of one callback>
 *
 * A receiver verifies by:
 *   1. taking the raw request body as received (before any JSON parsing);
 *   2. recomputing HMAC-SHA256 with the shared secret over `${timestamp}.${body}`;
 *   3. comparing it, in constant time, with each `v1=` entry of x-kilo-signature (a
 *      comma-separated list, so a secret can be rotated by sending two);
 *   4. rejecting a timestamp more than 5 minutes away from its own clock (replay);
 *   5. optionally dropping an x-kilo-delivery id it has already processed (retries are
 *      at-least-once).
 * The timestamp is inside the signed text, so it cannot be altered to pass step 4.
 */
export const SIGNATURE_VERSION = "v1";
export const DEFAULT_TOLERANCE_SECONDS = 300;

function hmacHex(secret: string, timestamp: string, body: string | Uint8Array): string {
  return createHmac("sha256", secret).update(`${timestamp}.`).update(body).digest("hex");
}

/** The x-kilo-signature value for one attempt. */
export function signCallback(secret: string, timestamp: number | string, body: string | Uint8Array): string {
  return `${SIGNATURE_VERSION}=${hmacHex(secret, String(timestamp), body)}`;
}

export interface VerifyOptions {
  /** Largest accepted distance between the timestamp and now; 300 s by default. */
  toleranceSeconds?: number;
  /** Now, in milliseconds since the epoch; Date.now() by default. */
  now?: number;
}

/**
 * True when `signatureHeader` holds a valid v1 signature of `body` at `timestamp` and the
 * timestamp is within tolerance of now. `body` must be the raw bytes or text received.
 */
export function verifyCallbackSignature(
  secret: string,
  timestamp: string | number,
  body: string | Uint8Array,
  signatureHeader: string,
  opts: VerifyOptions = {},
): boolean {
  const ts = String(timestamp);
  if (!/^\d{1,12}$/.test(ts)) return false;
  const nowSeconds = Math.floor((opts.now ?? Date.now()) / 1000);
  if (Math.abs(nowSeconds - Number(ts)) > (opts.toleranceSeconds ?? DEFAULT_TOLERANCE_SECONDS)) return false;

  const expected = Buffer.from(hmacHex(secret, ts, body), "hex");
  let ok = false;
  for (const part of signatureHeader.split(",")) {
    const [version, value] = part.trim().split("=", 2);
    if (version !== SIGNATURE_VERSION || value === undefined || !/^[0-9a-f]{64}$/i.test(value)) continue;
    // No early exit: every candidate is compared, each in constant time.
    if (timingSafeEqual(expected, Buffer.from(value, "hex"))) ok = true;
  }
  return ok;
}
