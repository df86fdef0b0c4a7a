import { describe, expect, it } from "vitest";
import { isValidBranchName } from "./branch-name.js";

describe("isValidBranchName", () => {
  it("accepts session and typical upstream branches", () => {
    for (const name of [
      "main",
      "develop",
      "session/agent_123e4567-e89b-12d3-a456-426614174000",
      "feature/x.y_z-1",
      "release/2024.10",
    ]) {
      expect(isValidBranchName(name), name).toBe(true);
    }
  });

  it("refuses what git would reject or read as an option or revision", () => {
    for (const name of [
      "",
      "-f",
      "--force",
      "HEAD",
      "a..b",
      "a b",
      "x@{1}",
      "a~1",
      "a^",
      "a:b",
      "/a",
      "a/",
      "a//b",
      ".hidden",
      "a/.b",
      "a.lock",
      "a/b.lock/c",
      "a.",
      "x".repeat(256),
    ]) {
      expect(isValidBranchName(name), name).toBe(false);
    }
  });
});
