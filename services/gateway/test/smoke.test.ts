import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Stack, startStack } from "./support/stack.js";

describe("smoke", () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack();
    await stack.login("alice");
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  it("prepares and reads a session through the gateway", async () => {
    const c = stack.sessions("alice");
    const prepared = await c.prepareSession({
      prompt: "hello",
      mode: "code",
      model: "mock/model",
      repository: { case: "githubRepo", value: "acme/widgets" },
    });
    expect(prepared.cloudAgentSessionId).toMatch(/^agent_/);
    const got = await c.getSession({ cloudAgentSessionId: prepared.cloudAgentSessionId });
    expect(got.session?.githubRepo).toBe("acme/widgets");
  });
});
