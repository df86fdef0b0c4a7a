import { createHmac, randomBytes } from "node:crypto";

/**
 * Signing by the Standard Webhooks specification (standardwebhooks.com), so receivers
 * verify with an off-the-shelf library in their language. Every attempt carries
 *
 *   webhook-id:        msg_<executionId>   (the same on every attempt and redelivery)
 *   webhook-timestamp: <unix seconds of this attempt>
 *   webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<raw body>")>
 *
 * The key is the secret's bytes: a `whsec_<base64>` secret is decoded (the form the
 * libraries take as is); any other secret of at least 32 bytes is used as its UTF-8 bytes,
 * and its receivers are given `whsec_` + base64 of it (see `receiverSecret`).
 */
export const WEBHOOK_SECRET_PREFIX = "whsec_";

/** The signing key of a configured secret (see the module comment). */
export function webhookKey(secret: string): Buffer {
  if (secret.startsWith(WEBHOOK_SECRET_PREFIX)) {
    const key = Buffer.from(secret.slice(WEBHOOK_SECRET_PREFIX.length), "base64");
    if (key.length < 24) throw new Error("a whsec_ secret must hold at least 24 bytes (base64)");
    return key;
  }
  if (Buffer.byteLength(secret, "utf8") < 32) {
    throw new Error("the callback signing secret must be whsec_<base64> or at least 32 bytes");
  }
  return Buffer.from(secret, "utf8");
}

/** The secret to give receivers, in the `whsec_` form their libraries take. */
export function receiverSecret(secret: string): string {
  return `${WEBHOOK_SECRET_PREFIX}${webhookKey(secret).toString("base64")}`;
}

/** A new secret in the `whsec_` form (32 random bytes). */
export function generateWebhookSecret(): string {
  return `${WEBHOOK_SECRET_PREFIX}${randomBytes(32).toString("base64")}`;
}

/** The webhook id of an execution's completion callback: stable across every attempt. */
export function webhookId(executionId: string): string {
  return `msg_${executionId}`;
}

/** The three headers of one attempt. */
export function webhookHeaders(
  key: Buffer,
  id: string,
  timestampSeconds: number,
  body: string,
): Record<"webhook-id" | "webhook-timestamp" | "webhook-signature", string> {
  const signature = createHmac("sha256", key).update(`${id}.${timestampSeconds}.${body}`).digest("base64");
  return {
    "webhook-id": id,
    "webhook-timestamp": String(timestampSeconds),
    "webhook-signature": `v1,${signature}`,
  };
}
