import { createHash, createHmac } from "node:crypto";
import { type SandboxKey, sandboxId } from "../driver.js";

/**
 * Names and labels of sandbox pods. Org and user ids are whatever the product calls people
 * (emails included), so nothing raw ever reaches the Kubernetes API, where names and
 * labels are listed, logged and exported to monitoring: only hashes do. With a
 * `hashKey` they are HMACs, so an email cannot be confirmed by hashing a guess.
 */

export const LABEL_PREFIX = "cloud-agent.kilo.ai";
export const SANDBOX_LABEL = `${LABEL_PREFIX}/sandbox`;
export const ORG_LABEL = `${LABEL_PREFIX}/org`;
export const USER_LABEL = `${LABEL_PREFIX}/user`;
export const BOT_LABEL = `${LABEL_PREFIX}/bot`;
export const MANAGED_BY = "kilo-cloud-sandbox-manager";
export const SANDBOX_APP_NAME = "kilo-sandbox";
export const POD_NAME_PREFIX = "kc-sandbox-";

/** 32 hex digits (128 bits) of sha256, or of HMAC-SHA256 with `hashKey`; `kind` separates domains. */
export function idHash(kind: "sandbox" | "org" | "user" | "bot", value: string, hashKey?: string): string {
  const text = `kilo-cloud:${kind}:${value}`;
  const h = hashKey ? createHmac("sha256", hashKey) : createHash("sha256");
  return h.update(text, "utf8").digest("hex").slice(0, 32);
}

/** `kc-sandbox-<32 hex>`: a DNS label (43 characters), the same for the same key. */
export function sandboxPodName(key: SandboxKey, hashKey?: string): string {
  return `${POD_NAME_PREFIX}${idHash("sandbox", sandboxId(key), hashKey)}`;
}

/** The labels that select every sandbox pod of one installation. */
export function installationLabels(instance: string): Record<string, string> {
  return {
    "app.kubernetes.io/name": SANDBOX_APP_NAME,
    "app.kubernetes.io/component": "sandbox",
    "app.kubernetes.io/part-of": "kilo-cloud-agent",
    "app.kubernetes.io/managed-by": MANAGED_BY,
    "app.kubernetes.io/instance": instance,
  };
}

/** Every label of a sandbox's pod: the installation's, and hashes of the sandbox, org, user and bot. */
export function sandboxLabels(key: SandboxKey, instance: string, hashKey?: string): Record<string, string> {
  return {
    ...installationLabels(instance),
    [SANDBOX_LABEL]: idHash("sandbox", sandboxId(key), hashKey),
    ...(key.orgId ? { [ORG_LABEL]: idHash("org", key.orgId, hashKey) } : {}),
    [USER_LABEL]: idHash("user", key.userId, hashKey),
    ...(key.botId ? { [BOT_LABEL]: idHash("bot", key.botId, hashKey) } : {}),
  };
}

export function labelSelector(labels: Record<string, string>): string {
  return Object.entries(labels)
    .map(([k, v]) => `${k}=${v}`)
    .join(",");
}
