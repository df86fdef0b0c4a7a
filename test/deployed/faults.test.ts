import type { Client } from "@connectrpc/connect";
import type { Event, SessionService, StreamService } from "@kilo-cloud/proto";
import { defaultScript, type ModelScript, messageText, startPrivatePostgres } from "@kilo-cloud/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type DeployedSystem, GIT_TOKEN, REPO_NAME, startDeployedSystem } from "./harness.js";

/**
 * The chaos tier: the chart's four services as processes (the as-deployed harness), with a
 * dependency or a service taken away mid-run. Each case checks what a user sees: no
 * process dies of it, every execution ends with exactly one terminal event, the queue goes
 * on. The measured times are printed for docs/architecture.md's fault table.
 */

const TERMINAL = new Set(["complete", "error", "interrupted"]);
const isTerminal = (e: Event) => TERMINAL.has(e.payload.case ?? "");

/** A run whose prompt says HANG never gets an answer from the model. */
const script: ModelScript = (body, ctx) => {
  const user = body.messages.filter((m) => m.role === "user").map(messageText);
  return user.some((t) => t.includes("HANG")) ? { hang: true } : defaultScript()(body, ctx);
};

/** Every event of the session until `done` says so (timestamps of arrival kept beside). */
async function follow(
  stream: Client<typeof StreamService>,
  req: { cloudAgentSessionId: string; ticket: string },
  done: (events: Event[]) => boolean,
  timeoutMs = 300_000,
): Promise<Array<{ event: Event; at: number }>> {
  const out: Array<{ event: Event; at: number }> = [];
  for await (const res of stream.subscribe(req, { signal: AbortSignal.timeout(timeoutMs) })) {
    if (!res.event) continue;
    out.push({ event: res.event, at: Date.now() });
    if (done(out.map((o) => o.event))) return out;
  }
  throw new Error("the stream ended early");
}

async function prepare(alice: Client<typeof SessionService>, prompt: string) {
  return alice.prepareSession({
    prompt,
    mode: "code",
    model: "mock-model",
    repository: { case: "githubRepo", value: REPO_NAME },
    githubToken: GIT_TOKEN,
  });
}

const HEARTBEAT_MS = 2_000;

describe("chaos: sandbox-manager killed mid-run", { timeout: 600_000 }, () => {
  let system: DeployedSystem;
  let alice: Client<typeof SessionService>;
  beforeAll(async () => {
    system = await startDeployedSystem({
      model: script,
      env: {
        "sandbox-manager": { HEARTBEAT_INTERVAL_MS: String(HEARTBEAT_MS) },
        // Three heartbeat intervals, as the defaults are (30 s → 90 s).
        session: {
          EXECUTION_STALE_MS: String(3 * HEARTBEAT_MS),
          HEARTBEAT_STALE_MS: String(1.5 * HEARTBEAT_MS),
        },
      },
    });
    alice = await system.sessions("alice");
    await system.registerInstallation({ userId: "alice" });
  }, 240_000);
  afterAll(async () => {
    await system?.[Symbol.asyncDispose]();
  });

  it("ends the lost run with one error event within a few heartbeat intervals, then runs the next message", async () => {
    const { cloudAgentSessionId } = await prepare(alice, "HANG until the manager dies");
    const ticket = (await alice.createStreamTicket({ cloudAgentSessionId })).ticket;
    const first = await alice.initiateSession({ cloudAgentSessionId });
    const second = await alice.sendMessage({ cloudAgentSessionId, prompt: "Write the second file" });
    const events = follow(system.stream(), { cloudAgentSessionId, ticket }, (es) =>
      es.some((e) => e.executionId === second.executionId && isTerminal(e)),
    );

    // kilo of the first run is waiting on the model: take its manager away (SIGKILL).
    await system.model.waitForRequest(
      (r) => (r.body?.messages ?? []).some((m) => messageText(m).includes("HANG")),
      {
        timeoutMs: 240_000,
      },
    );
    const killedAt = Date.now();
    await system.services["sandbox-manager"].kill();
    await system.services["sandbox-manager"].start();
    for (const s of ["gateway", "session", "token"] as const) expect(system.services[s].running).toBe(true);

    const seen = await events;
    const terminalsOf = (id: string) => seen.filter((o) => o.event.executionId === id && isTerminal(o.event));
    const [lost] = terminalsOf(first.executionId);
    expect(terminalsOf(first.executionId)).toHaveLength(1);
    expect(lost?.event.payload.case).toBe("error");
    const nextStart = seen.find((o) => o.event.executionId === second.executionId);
    const [done] = terminalsOf(second.executionId);
    expect(terminalsOf(second.executionId)).toHaveLength(1);
    expect(done?.event.payload.case).toBe("complete");
    const toError = (lost?.at ?? 0) - killedAt;
    const toNext = (nextStart?.at ?? 0) - killedAt;
    console.info(
      `[faults] sandbox-manager SIGKILL: error event after ${toError} ms, next message's first event after ${toNext} ms (heartbeat ${HEARTBEAT_MS} ms, reaper ${3 * HEARTBEAT_MS} ms, sweep 5000 ms)`,
    );
    // Three heartbeat intervals, plus at most one sweep period and a loaded machine's slack.
    expect(toError).toBeLessThan(3 * HEARTBEAT_MS + 5_000 + 10_000);
    const info = await alice.getSession({ cloudAgentSessionId });
    expect(info.session?.queueLength).toBe(0);
  });
});

describe("chaos: PostgreSQL restarted under the services", { timeout: 600_000 }, () => {
  let system: DeployedSystem;
  let alice: Client<typeof SessionService>;
  let pg: Awaited<ReturnType<typeof startPrivatePostgres>>;
  beforeAll(async () => {
    pg = await startPrivatePostgres();
    system = await startDeployedSystem({ model: script, databaseUrl: pg.url });
    alice = await system.sessions("alice");
    await system.registerInstallation({ userId: "alice" });
  }, 240_000);
  afterAll(async () => {
    await system?.[Symbol.asyncDispose]();
    await pg?.dispose();
  });

  it("no process exits, calls during the outage answer UNAVAILABLE or succeed, and a run started after it completes", async () => {
    const { cloudAgentSessionId } = await prepare(alice, "Write the first file");
    const codes: string[] = [];
    for (let round = 0; round < 3; round++) {
      await pg.restart();
      // Calls right after the restart: each succeeds or answers a retryable UNAVAILABLE.
      for (let i = 0; i < 5; i++) {
        await alice.getSession({ cloudAgentSessionId }).then(
          () => codes.push("ok"),
          (err: { code?: number; rawMessage?: string }) => {
            codes.push(String(err.code));
            expect(err.rawMessage ?? "").not.toMatch(/SELECT|INSERT|127\.0\.0\.1|:\d{4,5}\b|\n\s+at /);
          },
        );
      }
      for (const s of ["gateway", "session", "sandbox-manager", "token"] as const) {
        expect(system.services[s].running, `${s} after restart ${round + 1}`).toBe(true);
      }
    }
    // 14 = UNAVAILABLE; nothing else (no INTERNAL/UNKNOWN) while the database comes back.
    expect(
      codes.every((c) => c === "ok" || c === "14"),
      codes.join(","),
    ).toBe(true);

    const ticket = (await alice.createStreamTicket({ cloudAgentSessionId })).ticket;
    const run = await alice.initiateSession({ cloudAgentSessionId });
    const seen = await follow(system.stream(), { cloudAgentSessionId, ticket }, (es) =>
      es.some((e) => e.executionId === run.executionId && isTerminal(e)),
    );
    expect(seen.filter((o) => isTerminal(o.event)).map((o) => o.event.payload.case)).toEqual(["complete"]);
  });
});
