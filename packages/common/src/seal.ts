import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";

/**
 * Sealing of values a service must keep but never show: AES-256-GCM under a service key,
 * with associated data that binds each ciphertext to where it is stored (e.g. the session
 * id and column), so a sealed value copied to another row does not open.
 *
 * Format: `v1.<keyId>.<base64url(iv[12] | ciphertext | tag[16])>`. Several keys can be
 * configured for rotation: the first seals, all open.
 */
export interface SealingKey {
  id: string;
  key: Buffer;
}

export class SealError extends Error {
  override name = "SealError";
}

const KEY_ID = /^[A-Za-z0-9_-]{1,32}$/;

/** Parses `id:base64key[,id:base64key...]`; each key must be 32 bytes. */
export function parseSealingKeys(spec: string): SealingKey[] {
  const keys = spec
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .map((entry) => {
      const i = entry.indexOf(":");
      if (i <= 0) throw new SealError("a sealing key must look like <id>:<base64 of 32 bytes>");
      const id = entry.slice(0, i);
      const key = Buffer.from(entry.slice(i + 1), "base64");
      if (!KEY_ID.test(id)) throw new SealError(`sealing key id "${id}" must match ${KEY_ID}`);
      if (key.length !== 32) throw new SealError(`sealing key "${id}" must be 32 bytes (base64)`);
      return { id, key };
    });
  if (keys.length === 0) throw new SealError("at least one sealing key is required");
  return keys;
}

export class Sealer {
  private readonly byId: Map<string, Buffer>;
  private readonly current: SealingKey;

  constructor(keys: SealingKey[]) {
    const first = keys[0];
    if (!first) throw new SealError("at least one sealing key is required");
    this.current = first;
    this.byId = new Map(keys.map((k) => [k.id, k.key]));
  }

  seal(plaintext: string, context: string): string {
    const iv = randomBytes(12);
    const cipher = createCipheriv("aes-256-gcm", this.current.key, iv);
    cipher.setAAD(Buffer.from(context, "utf8"));
    const ct = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()]);
    const tag = cipher.getAuthTag();
    return `v1.${this.current.id}.${Buffer.concat([iv, ct, tag]).toString("base64url")}`;
  }

  open(sealed: string, context: string): string {
    const [version, keyId, body] = sealed.split(".");
    if (version !== "v1" || !keyId || body === undefined) throw new SealError("not a sealed value");
    const key = this.byId.get(keyId);
    if (!key) throw new SealError(`sealed with unknown key "${keyId}"`);
    const raw = Buffer.from(body, "base64url");
    if (raw.length < 28) throw new SealError("sealed value is truncated");
    const decipher = createDecipheriv("aes-256-gcm", key, raw.subarray(0, 12));
    decipher.setAAD(Buffer.from(context, "utf8"));
    decipher.setAuthTag(raw.subarray(raw.length - 16));
    try {
      return Buffer.concat([decipher.update(raw.subarray(12, raw.length - 16)), decipher.final()]).toString(
        "utf8",
      );
    } catch {
      throw new SealError("sealed value does not open (wrong key, context or tampered)");
    }
  }

  sealJson(value: unknown, context: string): string {
    return this.seal(JSON.stringify(value), context);
  }

  openJson<T>(sealed: string, context: string): T {
    return JSON.parse(this.open(sealed, context)) as T;
  }
}
