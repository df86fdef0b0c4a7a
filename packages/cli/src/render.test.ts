import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { type Event, EventSchema, OutputSource } from "@kilo-cloud/sdk";
import { capturedKiloStream } from "@kilo-cloud/testing";
import { describe, expect, it } from "vitest";
import { eventJson, exitCodeOf, Renderer } from "./render.js";

let id = 0n;
function ev(payload: Event["payload"] | { case: string; value: unknown }): Event {
  return create(EventSchema, {
    id: ++id,
    cloudAgentSessionId: "agent_00000000-0000-0000-0000-000000000001",
    executionId: "exec_1",
    timestamp: timestampNow(),
    payload: payload as never,
  });
}

/** A captured real kilo run, as the service would stream it. */
async function capturedRun(streamFile: string): Promise<Event[]> {
  const lines = (await capturedKiloStream(streamFile)).split("\n").filter(Boolean);
  return [
    ev({ case: "status", value: { message: "Preparing sandbox", step: "sandbox" } }),
    ev({ case: "status", value: { message: "Cloning repository acme/widgets", step: "clone" } }),
    ev({ case: "status", value: { message: "Created branch session/agent_1", step: "branch" } }),
    ev({ case: "status", value: { message: "Starting kilo", step: "kilo" } }),
    ev({ case: "output", value: { content: "INFO some kilo log", source: OutputSource.STDERR } }),
    ...lines.map((l) => ev({ case: "kilocode", value: { payload: JSON.parse(l) } })),
    ev({
      case: "status",
      value: { message: "Committed 0123456789ab and pushed to session/agent_1", step: "commit" },
    }),
    ev({
      case: "complete",
      value: {
        exitCode: 0,
        executionTimeMs: 12_345n,
        branch: "session/agent_1",
        commitSha: "0123456789abcdef0123456789abcdef01234567",
        usage: { inputTokens: 1234n, outputTokens: 56n, cost: 0.0123 },
      },
    }),
  ];
}

describe("rendering a run", () => {
  it("renders a captured write run readably", async () => {
    const r = new Renderer();
    const lines = (await capturedRun("stream-write-tool.jsonl")).flatMap((e) => r.render(e));
    expect(lines).toEqual([
      "· Preparing sandbox",
      "· Cloning repository acme/widgets",
      "· Created branch session/agent_1",
      "· Starting kilo",
      "✓ write hello1.txt",
      "  Done: wrote the file.",
      "· Committed 0123456789ab and pushed to session/agent_1",
      "",
      "── summary",
      "  changed: hello1.txt",
      "  commit:  0123456789ab on session/agent_1",
      "  usage:   1,234 in / 56 out tokens, $0.0123",
      "  time:    12.3 s, exit code 0",
    ]);
    expect(exitCodeOf(r.summary)).toBe(0);
  });

  it("shows tool calls with their targets and failures on one line", async () => {
    const bash = new Renderer().render(
      ev({
        case: "kilocode",
        value: {
          payload: JSON.parse(
            (await capturedKiloStream("stream-bash-tool.jsonl"))
              .split("\n")
              .find((l) => l.includes('"tool_use"')) ?? "{}",
          ),
        },
      }),
    );
    expect(bash).toEqual(["✓ bash echo hi from bash > bash.txt && pwd"]);
    const denied = (await capturedKiloStream("stream-plan-agent-write-denied.jsonl"))
      .split("\n")
      .filter(Boolean)
      .flatMap((l) => new Renderer().render(ev({ case: "kilocode", value: { payload: JSON.parse(l) } })));
    expect(denied.some((l) => l.startsWith("✗ write "))).toBe(true);
  });

  it("shows kilo's errors, service errors and interruptions, with the matching exit codes", async () => {
    const r = new Renderer();
    const lines = (await capturedKiloStream("stream-error-401.jsonl"))
      .split("\n")
      .filter(Boolean)
      .flatMap((l) => r.render(ev({ case: "kilocode", value: { payload: JSON.parse(l) } })));
    expect(lines).toEqual(["✗ mock error 401"]);
    const e = new Renderer();
    expect(
      e.render(ev({ case: "error", value: { error: "setup command failed with exit code 7: npm ci" } })),
    ).toEqual(["✗ setup command failed with exit code 7: npm ci"]);
    expect(exitCodeOf(e.summary)).toBe(1);
    const i = new Renderer();
    expect(i.render(ev({ case: "interrupted", value: { reason: "interrupted by the user" } }))).toEqual([
      "■ interrupted",
    ]);
    expect(exitCodeOf(i.summary)).toBe(130);
    const failed = new Renderer();
    failed.render(ev({ case: "complete", value: { exitCode: 1 } }));
    expect(exitCodeOf(failed.summary)).toBe(1);
  });

  it("hides kilo's own log unless verbose", () => {
    const line = ev({ case: "output", value: { content: "INFO log", source: OutputSource.STDERR } });
    expect(new Renderer().render(line)).toEqual([]);
    expect(new Renderer({ verbose: true }).render(line)).toEqual(["  │ INFO log"]);
  });

  it("--json prints one valid JSON object per event", async () => {
    const events = await capturedRun("stream-bash-tool.jsonl");
    for (const e of events) {
      const parsed = JSON.parse(eventJson(e));
      expect(parsed.id).toBe(e.id.toString());
      expect(parsed.streamEventType).toBe(e.payload.case);
      expect(parsed[e.payload.case as string]).toBeDefined();
    }
  });
});
