import { generateKeyPairSync, randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { loadTokenConfig } from "./config.js";

const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
const APP_KEY = rsa.privateKey.export({ type: "pkcs1", format: "pem" }).toString();
const ed = generateKeyPairSync("ed25519");

const env = {
  DATABASE_URL: "postgres://u:p@db:5432/kilo",
  GITHUB_APP_ID: "123456",
  GITHUB_APP_PRIVATE_KEY: APP_KEY.replace(/\n/g, "\\n"),
  TOKEN_SEALING_KEYS: `k1:${randomBytes(32).toString("base64")}`,
  INTERNAL_API_SECRET: "0123456789abcdef0123",
  SERVICE_TOKEN_PUBLIC_KEY: ed.publicKey.export({ type: "spki", format: "pem" }).toString(),
};

describe("loadTokenConfig", () => {
  it("reads the environment with defaults, and keys written on one line", () => {
    const c = loadTokenConfig(env);
    expect(c).toMatchObject({
      port: 8083,
      host: "0.0.0.0",
      githubAppId: "123456",
      githubApiUrl: "https://api.github.com",
      githubTimeoutMs: 10_000,
      cacheMarginMs: 5 * 60_000,
      logLevel: "info",
    });
    expect(c.githubAppPrivateKey).toBe(APP_KEY);
    expect(c.sealingKeys).toHaveLength(1);
    expect(Object.isFrozen(c)).toBe(true);
  });

  it("takes a GitHub Enterprise API URL", () => {
    const c = loadTokenConfig({ ...env, GITHUB_API_URL: "https://ghe.example.com/api/v3/" });
    expect(c.githubApiUrl).toBe("https://ghe.example.com/api/v3");
  });

  it("lists every problem at once, never echoing the private key", () => {
    const bad =
      "-----BEGIN RSA PRIVATE KEY-----\\nnot-really-a-key-SECRETSECRET\\n-----END RSA PRIVATE KEY-----";
    let message = "";
    try {
      loadTokenConfig({ GITHUB_APP_PRIVATE_KEY: bad, GITHUB_APP_ID: "abc", INTERNAL_API_SECRET: "short" });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain("DATABASE_URL is required");
    expect(message).toContain("GITHUB_APP_ID must be the App's numeric id");
    expect(message).toContain("GITHUB_APP_PRIVATE_KEY is not a PEM private key");
    expect(message).toContain("TOKEN_SEALING_KEYS is required");
    expect(message).toContain("INTERNAL_API_SECRET must be at least 16 characters");
    expect(message).toContain("SERVICE_TOKEN_PUBLIC_KEY is required");
    expect(message).not.toContain("SECRETSECRET");
  });

  it("refuses a key that is not RSA", () => {
    const pem = ed.privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    expect(() => loadTokenConfig({ ...env, GITHUB_APP_PRIVATE_KEY: pem })).toThrow(/must be an RSA key/);
  });
});
