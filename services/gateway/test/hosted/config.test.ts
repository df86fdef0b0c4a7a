import { generateServiceKeyPair } from "@kilo-cloud/common";
import { describe, expect, it } from "vitest";
import { loadGatewayConfig } from "../../src/config.js";

/** The hosted-compatibility settings of the gateway's config loader (what the chart sets). */

const base = async () => ({
  AUTH_HS256_SECRET: "a".repeat(32),
  INTERNAL_API_SECRET: "internal-secret-123",
  SERVICE_TOKEN_PRIVATE_KEY: (await generateServiceKeyPair()).privateKeyPem,
  STREAM_TICKET_SECRET: "s".repeat(32),
});

describe("gateway config: hosted compatibility", () => {
  it("reads HOSTED_AUTH_SECRET, STREAM_PING_MS and STREAM_ALLOWED_ORIGINS", async () => {
    const config = loadGatewayConfig({
      ...(await base()),
      HOSTED_AUTH_SECRET: "h".repeat(40),
      STREAM_PING_MS: "15000",
      STREAM_ALLOWED_ORIGINS: "https://app.kilo.ai, http://localhost:3000",
    });
    expect(config.hostedAuthSecret).toBe("h".repeat(40));
    expect(config.streamPingMs).toBe(15_000);
    expect(config.streamAllowedOrigins).toEqual(["https://app.kilo.ai", "http://localhost:3000"]);
  });

  it("defaults: no hosted credentials, 30 s pings, any origin", async () => {
    const config = loadGatewayConfig({ ...(await base()), STREAM_ALLOWED_ORIGINS: "" });
    expect(config.hostedAuthSecret).toBeUndefined();
    expect(config.streamPingMs).toBe(30_000);
    expect(config.streamAllowedOrigins).toEqual([]);
  });

  it("refuses a short hosted secret and a too-frequent ping", async () => {
    const env = { ...(await base()), HOSTED_AUTH_SECRET: "short", STREAM_PING_MS: "10" };
    expect(() => loadGatewayConfig(env)).toThrow(
      /HOSTED_AUTH_SECRET[\s\S]*STREAM_PING_MS|STREAM_PING_MS[\s\S]*HOSTED_AUTH_SECRET/,
    );
  });
});
