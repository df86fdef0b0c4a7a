import { describe, expect, it } from "vitest";
import { GitError } from "./git-error.js";
import { isNonPublicHost, parseRemoteUrl } from "./remote-url.js";

describe("parseRemoteUrl", () => {
  it("accepts a public https URL and scopes credentials to its origin", () => {
    expect(parseRemoteUrl("https://GitHub.com/acme/widgets.git")).toEqual({
      url: "https://github.com/acme/widgets.git",
      origin: "https://github.com",
    });
    expect(parseRemoteUrl("https://git.example.com:8443/a/b").origin).toBe("https://git.example.com:8443");
  });

  it("refuses other schemes, http unless allowed, and credentials in any form", () => {
    for (const url of [
      "ssh://git@github.com/a/b.git",
      "file:///etc",
      "git://github.com/a/b",
      "ext::sh -c x",
    ]) {
      expect(() => parseRemoteUrl(url, { allowHttp: true })).toThrow(GitError);
    }
    expect(() => parseRemoteUrl("http://github.com/a/b.git")).toThrow(/only https/);
    expect(parseRemoteUrl("http://github.com/a/b.git", { allowHttp: true }).origin).toBe("http://github.com");
    for (const url of ["https://tok@github.com/a/b", "https://x-access-token:ghs_x@github.com/a/b"]) {
      const run = () => parseRemoteUrl(url);
      expect(run).toThrow(/must not contain credentials/);
      expect(run).not.toThrow(/ghs_x/);
    }
    expect(() => parseRemoteUrl("https://github.com/a/b?x=1")).toThrow(/query or fragment/);
  });

  it("refuses loopback and private hosts unless allowed", () => {
    for (const url of [
      "https://localhost/a",
      "https://api.localhost/a",
      "https://127.0.0.1/a",
      "https://2130706433/a",
      "https://0x7f.1/a",
      "https://10.0.0.1/a",
      "https://172.20.1.1/a",
      "https://192.168.1.1/a",
      "https://169.254.169.254/latest",
      "https://[::1]/a",
      "https://[::ffff:127.0.0.1]/a",
      "https://[fd00::1]/a",
      "https://[fe80::1]/a",
    ]) {
      expect(() => parseRemoteUrl(url), url).toThrow(/loopback or private/);
      expect(() => parseRemoteUrl(url, { allowLoopback: true }), url).not.toThrow();
    }
  });

  it("treats public addresses as public", () => {
    for (const host of ["github.com", "8.8.8.8", "172.32.0.1", "100.128.0.1", "[2606:4700::1111]"]) {
      expect(isNonPublicHost(host), host).toBe(false);
    }
  });
});
