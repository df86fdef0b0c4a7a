import { createPrivateKey } from "node:crypto";
import { type Env, EnvReader, parseSealingKeys, type SealingKey } from "@kilo-cloud/common";

export interface TokenConfig {
  port: number;
  host: string;
  databaseUrl: string;
  githubAppId: string;
  /** PEM (PKCS#1 as GitHub hands it out, or PKCS#8). Only this service holds it. */
  githubAppPrivateKey: string;
  /** `https://api.github.com`, or `https://<host>/api/v3` for GitHub Enterprise Server. */
  githubApiUrl: string;
  /** Deadline of one call to GitHub. */
  githubTimeoutMs: number;
  /** Seal cached tokens at rest (the first key seals, all open). */
  sealingKeys: SealingKey[];
  /** The `x-internal-api-key` that RegisterInstallation and RemoveInstallation need. */
  internalApiSecret: string;
  /** sandbox-manager's public key (PEM, Ed25519) for the service tokens it signs. */
  serviceTokenPublicKey: string;
  /** A cached token is reused until this long before it expires. */
  cacheMarginMs: number;
  logLevel: string;
}

const unescapeNewlines = (pem: string) => pem.replace(/\\n/g, "\n");

export function loadTokenConfig(env: Env): Readonly<TokenConfig> {
  const r = new EnvReader(env);
  const sealing = r.string("TOKEN_SEALING_KEYS");
  let sealingKeys: SealingKey[] = [];
  if (sealing) {
    try {
      sealingKeys = parseSealingKeys(sealing);
    } catch (err) {
      r.problem(`TOKEN_SEALING_KEYS: ${(err as Error).message}`);
    }
  }
  const githubAppId = r.string("GITHUB_APP_ID");
  // GitHub App ids are integers; the App's client id (Iv1.…/Iv23…) is accepted as issuer too.
  if (githubAppId && !/^(?:[1-9][0-9]{0,18}|Iv[0-9A-Za-z.]{4,40})$/.test(githubAppId)) {
    r.problem("GITHUB_APP_ID must be the App's numeric id (or its client id)");
  }
  const githubAppPrivateKey = unescapeNewlines(r.string("GITHUB_APP_PRIVATE_KEY"));
  if (githubAppPrivateKey) {
    try {
      const key = createPrivateKey(githubAppPrivateKey);
      if (key.asymmetricKeyType !== "rsa") r.problem("GITHUB_APP_PRIVATE_KEY must be an RSA key");
    } catch {
      // Never echo the value: it is the App's private key.
      r.problem("GITHUB_APP_PRIVATE_KEY is not a PEM private key (newlines may be written as \\n)");
    }
  }
  const githubApiUrl = r.url("GITHUB_API_URL", "https://api.github.com").replace(/\/+$/, "");
  if (githubApiUrl && !/^https?:\/\//.test(githubApiUrl)) r.problem("GITHUB_API_URL must be http(s)");
  const internalApiSecret = r.string("INTERNAL_API_SECRET");
  if (internalApiSecret && internalApiSecret.length < 16) {
    r.problem("INTERNAL_API_SECRET must be at least 16 characters");
  }
  const config: TokenConfig = {
    port: r.int("PORT", 8083, { min: 0, max: 65535 }),
    host: r.string("HOST", "0.0.0.0"),
    databaseUrl: r.url("DATABASE_URL"),
    githubAppId,
    githubAppPrivateKey,
    githubApiUrl,
    githubTimeoutMs: r.int("GITHUB_TIMEOUT_MS", 10_000, { min: 100, max: 120_000 }),
    sealingKeys,
    internalApiSecret,
    serviceTokenPublicKey: unescapeNewlines(r.string("SERVICE_TOKEN_PUBLIC_KEY")),
    // GitHub's tokens live 1 h; a margin of more than 50 min would mint on nearly every call.
    cacheMarginMs: r.int("CACHE_MARGIN_MS", 5 * 60_000, { min: 0, max: 50 * 60_000 }),
    logLevel: r.string("LOG_LEVEL", "info"),
  };
  r.done();
  return Object.freeze(config);
}
