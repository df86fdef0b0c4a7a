import { describe, expect, it } from "vitest";
import { type EgressPolicy, parseDomains, parseEndpoints, resolveEgress } from "./egress.js";
import { SsrfError } from "./ssrf.js";

const policy = (p: Partial<EgressPolicy> = {}): EgressPolicy => ({
  allow: [],
  domains: [],
  refused: new Set(["203.0.114.7"]),
  ...p,
});
const dns = (table: Record<string, string[]>) => async (host: string) =>
  (table[host] ?? []).map((address) => ({ address, family: address.includes(":") ? 6 : 4 }));

describe("egress policy", () => {
  it("parses host:port and [v6]:port entries and refuses anything else", () => {
    expect(parseEndpoints(" 127.0.0.1:8080, [::1]:9000,git.internal:443 ")).toEqual([
      { host: "127.0.0.1", port: 8080 },
      { host: "::1", port: 9000 },
      { host: "git.internal", port: 443 },
    ]);
    for (const bad of ["127.0.0.1", "host:0", "host:70000", "a b:1", "http://x:1"]) {
      expect(() => parseEndpoints(bad), bad).toThrow(/host:port/);
    }
    expect(parseDomains(".npmjs.org, GitHub.com ,")).toEqual(["npmjs.org", "github.com"]);
  });

  it("allows public addresses and refuses loopback, private, CGNAT, link-local, metadata and the host's own", async () => {
    await expect(resolveEgress("93.184.215.14", 443, policy())).resolves.toHaveLength(1);
    for (const ip of [
      "127.0.0.1",
      "::1",
      "10.1.2.3",
      "192.168.0.1",
      "100.64.1.1",
      "169.254.169.254",
      "0.0.0.0",
      "203.0.114.7",
    ]) {
      await expect(resolveEgress(ip, 80, policy()), ip).rejects.toBeInstanceOf(SsrfError);
    }
  });

  it("checks what a name resolves to: one refused address refuses it (DNS rebinding to loopback)", async () => {
    const resolve = dns({
      "rebind.example": ["93.184.215.14", "127.0.0.1"],
      "ok.example": ["93.184.215.14"],
    });
    await expect(resolveEgress("rebind.example", 443, policy(), resolve)).rejects.toThrow(/loopback/);
    await expect(resolveEgress("ok.example", 443, policy(), resolve)).resolves.toEqual([
      { address: "93.184.215.14", family: 4 },
    ]);
  });

  it("reaches an allowed endpoint whatever its address, only on its port, never a metadata address", async () => {
    const p = policy({ allow: parseEndpoints("127.0.0.1:8080,meta.internal:80") });
    await expect(resolveEgress("127.0.0.1", 8080, p)).resolves.toHaveLength(1);
    await expect(resolveEgress("127.0.0.1", 8081, p)).rejects.toBeInstanceOf(SsrfError);
    const resolve = dns({ "meta.internal": ["169.254.169.254"] });
    await expect(resolveEgress("meta.internal", 80, p, resolve)).rejects.toThrow(/metadata/);
  });

  it("with a domain allowlist, reaches only those domains and their subdomains", async () => {
    const p = policy({ domains: ["npmjs.org"] });
    const resolve = dns({ "registry.npmjs.org": ["104.16.1.1"], "evil.org": ["104.16.1.2"] });
    await expect(resolveEgress("registry.npmjs.org", 443, p, resolve)).resolves.toHaveLength(1);
    await expect(resolveEgress("evil.org", 443, p, resolve)).rejects.toThrow(/not an allowed domain/);
    await expect(resolveEgress("npmjs.org.evil.org", 443, p, resolve)).rejects.toThrow(
      /not an allowed domain/,
    );
  });
});
