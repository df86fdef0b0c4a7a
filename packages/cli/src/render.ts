import { type Event, EventSchema, OutputSource, toJson } from "@kilo-cloud/sdk";

/**
 * Turns a session's events into lines a person reads: infrastructure steps, one line per
 * tool call with its target, the model's text when it completes, errors, and a summary at
 * the end (changed files, commit, usage, time). Pure: the CLI adds colour and a spinner.
 */
export interface RenderOptions {
  /** Show stderr output lines too (kilo's own log). */
  verbose?: boolean;
}

export interface RunSummary {
  changedFiles: string[];
  exitCode?: number;
  commitSha?: string;
  branch?: string;
  inputTokens: bigint;
  outputTokens: bigint;
  cost: number;
  executionTimeMs?: bigint;
  outcome?: "complete" | "error" | "interrupted";
  error?: string;
}

type Json = Record<string, unknown>;

const EDIT_TOOLS = new Set(["write", "edit", "patch", "apply_patch", "multiedit"]);

function str(v: unknown): string | undefined {
  return typeof v === "string" && v !== "" ? v : undefined;
}

function oneLine(text: string, max = 80): string {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}

/** The thing a tool call acted on, for its one line. */
export function toolTarget(tool: string, input: Json): string {
  const target =
    str(input.filePath) ??
    str(input.path) ??
    str(input.command) ??
    str(input.pattern) ??
    str(input.url) ??
    str(input.query) ??
    str(input.description);
  return target ? oneLine(target, 72) : tool;
}

export class Renderer {
  readonly summary: RunSummary = { changedFiles: [], inputTokens: 0n, outputTokens: 0n, cost: 0 };

  constructor(private readonly opts: RenderOptions = {}) {}

  /** The lines for one event (often none). */
  render(event: Event): string[] {
    const p = event.payload;
    switch (p.case) {
      case "status":
        return [`· ${p.value.message}`];
      case "output":
        if (p.value.source === OutputSource.STDERR && !this.opts.verbose) return [];
        return p.value.content.trim() ? [`  │ ${p.value.content}`] : [];
      case "kilocode":
        return this.kilo((p.value.payload ?? {}) as Json);
      case "error":
        this.summary.outcome = "error";
        this.summary.error = p.value.error;
        return [`✗ ${p.value.error}`];
      case "interrupted":
        this.summary.outcome = "interrupted";
        return ["■ interrupted"];
      case "complete": {
        const c = p.value;
        this.summary.outcome = "complete";
        this.summary.exitCode = c.exitCode;
        this.summary.branch = c.branch;
        if (c.commitSha) this.summary.commitSha = c.commitSha;
        this.summary.inputTokens = c.usage?.inputTokens ?? 0n;
        this.summary.outputTokens = c.usage?.outputTokens ?? 0n;
        this.summary.cost = c.usage?.cost ?? 0;
        this.summary.executionTimeMs = c.executionTimeMs;
        return this.summaryLines();
      }
      default:
        return [];
    }
  }

  private kilo(payload: Json): string[] {
    const type = payload.type;
    const part = (payload.part ?? {}) as Json;
    if (type === "text") {
      const text = str(part.text);
      return text ? text.split("\n").map((l) => `  ${l}`) : [];
    }
    if (type === "tool_use") {
      const tool = str(part.tool) ?? "tool";
      const state = (part.state ?? {}) as Json;
      const input = (state.input ?? {}) as Json;
      const target = toolTarget(tool, input);
      if (state.status === "error") {
        return [`✗ ${tool} ${target} — ${oneLine(str(state.error) ?? "failed", 100)}`];
      }
      if (EDIT_TOOLS.has(tool)) {
        const file = str(input.filePath) ?? str(input.path);
        if (file && !this.summary.changedFiles.includes(file)) this.summary.changedFiles.push(file);
      }
      return [`✓ ${tool} ${target}`];
    }
    if (type === "error") {
      const err = payload.error;
      const message =
        typeof err === "string"
          ? err
          : (str(((err as Json | undefined)?.data as Json | undefined)?.message) ?? "kilo reported an error");
      return [`✗ ${oneLine(message, 160)}`];
    }
    return [];
  }

  summaryLines(): string[] {
    const s = this.summary;
    const lines = ["", "── summary"];
    lines.push(s.changedFiles.length > 0 ? `  changed: ${s.changedFiles.join(", ")}` : "  changed: nothing");
    if (s.commitSha) lines.push(`  commit:  ${s.commitSha.slice(0, 12)} on ${s.branch ?? "?"}`);
    else if (s.branch) lines.push(`  branch:  ${s.branch}`);
    lines.push(
      `  usage:   ${s.inputTokens.toLocaleString("en-US")} in / ${s.outputTokens.toLocaleString("en-US")} out tokens, $${s.cost.toFixed(4)}`,
    );
    if (s.executionTimeMs !== undefined) {
      lines.push(
        `  time:    ${(Number(s.executionTimeMs) / 1000).toFixed(1)} s, exit code ${s.exitCode ?? "?"}`,
      );
    }
    return lines;
  }
}

/** The process exit code for a run's outcome. */
export function exitCodeOf(summary: RunSummary): number {
  if (summary.outcome === "interrupted") return 130;
  if (summary.outcome === "complete") return summary.exitCode === 0 ? 0 : 1;
  return 1;
}

/**
 * One event as a JSON line (`--json`): the proto JSON form of the event (id as a string,
 * timestamp in RFC 3339, the payload under its type's name) plus the reference's
 * `streamEventType`.
 */
export function eventJson(event: Event): string {
  return JSON.stringify({ streamEventType: event.payload.case, ...(toJson(EventSchema, event) as Json) });
}
