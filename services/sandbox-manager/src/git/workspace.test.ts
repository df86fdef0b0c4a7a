import { describe, expect, it } from "vitest";
import { unsafeRemoteConfig } from "./workspace.js";

describe("unsafeRemoteConfig", () => {
  it("lets through what repositories and agents commonly set", () => {
    expect(
      unsafeRemoteConfig([
        "core.hookspath", // husky; overridden for our commands
        "core.fsmonitor",
        "credential.helper", // emptied for our commands
        "http.postbuffer",
        "remote.origin.url",
        "remote.origin.fetch",
        "branch.main.merge",
        "user.name",
        "lfs.repositoryformatversion",
      ]),
    ).toBeUndefined();
  });

  it("names the first setting that could route or weaken an authenticated request", () => {
    expect(unsafeRemoteConfig(["user.name", "http.proxy"])).toBe("http.proxy");
    for (const key of [
      "http.sslverify",
      "http.https://github.com/.sslcainfo",
      "http.https://github.com/.extraheader",
      "http.curloptresolve",
      "http.cookiefile",
      "url.https://evil.example/.insteadof",
      "url.https://evil.example/.pushinsteadof",
      "core.alternateRefsCommand",
      "remote.origin.proxy",
      "remote.origin.vcs",
      "remote.https://github.com/acme/x.git.pushurl",
    ]) {
      expect(unsafeRemoteConfig([key]), key).toBe(key);
    }
  });
});
