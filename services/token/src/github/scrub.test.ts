import { describe, expect, it } from "vitest";
import { scrub } from "./scrub.js";

describe("scrub", () => {
  it("removes tokens, JWTs, PEM blocks and credentials after an auth scheme", () => {
    const text = [
      "token ghs_16C7e42F292c6912E7710c838347Ae178B4a was refused",
      "jwt eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOjF9.c2ln",
      "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
      "authorization: bearer abcdefghijklmnopqrstuvwxyz",
    ].join(" | ");
    const clean = scrub(text);
    expect(clean).not.toMatch(/ghs_|eyJ|MIIEow|abcdefghijklmnop/);
    expect(clean).toContain("[token] was refused");
  });

  it("keeps GitHub's ordinary messages and bounds the length", () => {
    expect(scrub("A JSON web token could not be decoded")).toBe("A JSON web token could not be decoded");
    expect(scrub("x".repeat(1000)).length).toBe(301);
  });
});
