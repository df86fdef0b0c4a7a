import { type Client, Code, ConnectError } from "@connectrpc/connect";
import { type Event, ExecutionStatus, type SessionService, type StreamService } from "@kilo-cloud/proto";
import { defaultScript, type ModelScript, messageText } from "@kilo-cloud/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type DeployedSystem, GIT_TOKEN, REPO_NAME, startDeployedSystem } from "./harness.js";

/**
 * The as-deployed tier: the Helm chart's four Deployments, each a process started from its
 * main.ts with the environment the chart gives it, on a real PostgreSQL and nats-server,
 * driven through the gateway only with a Connect client, with the real kilo binary.
 */

const TERMINAL = new Set(["complete", "error", "interrupted"]);

/** A run whose prompt says HANG never gets an answer from the model (until interrupted). */
const script: ModelScript = (body, ctx) => {
  const user = body.messages.filter((m) => m.role === "user").map(messageText);
  return user.some((t) => t.includes("HANG")) ? { hang: true } : defaultScript()(body, ctx);
};

async function readUntil(
  stream: Client<typeof StreamService>,
  req: { cloudAgentSessionId: string; ticket: string; fromId?: bigint },
  stop: (e: Event) => boolean,
  timeoutMs = 240_000,
): Promise<Event[]> {
  const out: Event[] = [];
  for await (const res of stream.subscribe(req, { signal: AbortSignal.timeout(timeoutMs) })) {
    if (!res.event) continue;
    out.push(res.event);
    if (stop(res.event)) return out;
  }
  throw new Error(`the stream ended after ${out.map((e) => e.payload.case).join(",")}`);
}
const isTerminal = (e: Event) => TERMINAL.has(e.payload.case ?? "");

describe("as deployed: the chart's four services as processes, through the gateway", {
  timeout: 600_000,
}, () => {
  let system: DeployedSystem;
  let alice: Client<typeof SessionService>;
  beforeAll(async () => {
    system = await startDeployedSystem({ model: script });
    alice = await system.sessions("alice");
    await system.registerInstallation({ userId: "alice" });
  }, 240_000);
  afterAll(async () => {
    await system?.[Symbol.asyncDispose]();
  });

  const ticket = async (cloudAgentSessionId: string) =>
    (await alice.createStreamTicket({ cloudAgentSessionId })).ticket;

  it("prepare → initiate → Subscribe (ticket) → complete → follow-up → resume from an id → GetSession → delete", async () => {
    const { cloudAgentSessionId } = await alice.prepareSession({
      prompt: "Write the first file",
      mode: "code",
      model: "mock-model",
      repository: { case: "githubRepo", value: REPO_NAME },
      githubToken: GIT_TOKEN,
      autoCommit: true,
    });
    const first = readUntil(
      system.stream(),
      { cloudAgentSessionId, ticket: await ticket(cloudAgentSessionId) },
      isTerminal,
    );
    const ack = await alice.initiateSession({ cloudAgentSessionId });
    expect([ExecutionStatus.STARTED, ExecutionStatus.QUEUED]).toContain(ack.status);
    const run1 = await first;
    const end1 = run1.at(-1)!;
    expect(end1.payload.case, system.allLogs().slice(-4000)).toBe("complete");
    if (end1.payload.case === "complete") expect(end1.payload.value.exitCode).toBe(0);
    expect(run1.some((e) => e.payload.case === "kilocode")).toBe(true);
    expect(new Set(run1.map((e) => e.executionId))).toEqual(new Set([ack.executionId]));

    // A follow-up, read by resuming after the first run's last event: nothing of run 1 again.
    const follow = await alice.sendMessage({ cloudAgentSessionId, prompt: "Write the second file" });
    const run2 = await readUntil(
      system.stream(),
      { cloudAgentSessionId, ticket: await ticket(cloudAgentSessionId), fromId: end1.id },
      isTerminal,
    );
    expect(run2[0]!.id).toBeGreaterThan(end1.id);
    expect(new Set(run2.map((e) => e.executionId))).toEqual(new Set([follow.executionId]));
    expect(run2.at(-1)?.payload.case).toBe("complete");
    // kilo continued the same conversation.
    const second = system.model.requests.find((r) =>
      r.body?.messages.some((m) => messageText(m).includes("second file")),
    );
    expect(second?.body?.messages.map(messageText).join("\n")).toContain("Write the first file");

    await expect
      .poll(async () => (await alice.getSession({ cloudAgentSessionId })).session?.runningExecution, {
        timeout: 30_000,
      })
      .toBeUndefined();
    const info = (await alice.getSession({ cloudAgentSessionId })).session!;
    expect(info.queueLength).toBe(0);
    expect(
      await system.git.readFile(REPO_NAME, `session/${cloudAgentSessionId}`, "hello2.txt"),
    ).toBeDefined();

    await alice.deleteSession({ cloudAgentSessionId });
    const gone = await alice.getSession({ cloudAgentSessionId }).catch((e: unknown) => ConnectError.from(e));
    expect(gone).toBeInstanceOf(ConnectError);
    expect((gone as ConnectError).code).toBe(Code.NotFound);
  });

  it("interrupts a hanging run: the stream ends with `interrupted`", async () => {
    const { cloudAgentSessionId } = await alice.prepareSession({
      prompt: "HANG until interrupted",
      mode: "code",
      model: "mock-model",
      repository: { case: "githubRepo", value: REPO_NAME },
      githubToken: GIT_TOKEN,
    });
    // Subscribed before it starts (a ticket is short-lived and checked when the stream opens).
    const stream = readUntil(
      system.stream(),
      { cloudAgentSessionId, ticket: await ticket(cloudAgentSessionId) },
      isTerminal,
    );
    await alice.initiateSession({ cloudAgentSessionId });
    // kilo is running once it has asked the model (which never answers).
    await expect
      .poll(
        () =>
          system.model.requests.some((r) => r.body?.messages.some((m) => messageText(m).includes("HANG"))),
        { timeout: 180_000, interval: 500 },
      )
      .toBe(true);
    const res = await alice.interruptSession({ cloudAgentSessionId });
    expect(res.success).toBe(true);
    const events = await stream;
    expect(events.at(-1)?.payload.case).toBe("interrupted");
    await alice.deleteSession({ cloudAgentSessionId });
  });
});
