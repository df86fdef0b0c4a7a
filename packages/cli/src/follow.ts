import { Code, ConnectError, type KiloCloudClient } from "@kilo-cloud/sdk";
import { paint } from "./colour.js";
import { eventJson, exitCodeOf, Renderer } from "./render.js";

export interface Io {
  out: (line: string) => void;
  err: (line: string) => void;
  /** Whether stderr is a terminal (the spinner). */
  isTTY: boolean;
  /** Whether stdout gets colour. */
  colour: boolean;
  env: NodeJS.ProcessEnv;
}

/** A transient progress line on a terminal; nothing elsewhere. */
class Spinner {
  private frame = 0;
  private timer: NodeJS.Timeout | undefined;
  private shown = false;
  private readonly started = Date.now();
  private label = "working";

  constructor(private readonly enabled: boolean) {}

  start(): void {
    if (!this.enabled) return;
    this.timer = setInterval(() => this.draw(), 100);
    this.timer.unref();
  }

  set(label: string): void {
    this.label = label;
  }

  private draw(): void {
    const frames = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏";
    const secs = Math.round((Date.now() - this.started) / 1000);
    process.stderr.write(`\r\x1b[2K${frames[this.frame++ % frames.length]} ${this.label} (${secs}s)`);
    this.shown = true;
  }

  /** Clears the line before something else is printed. */
  clear(): void {
    if (this.shown) process.stderr.write("\r\x1b[2K");
    this.shown = false;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.clear();
  }
}

const TERMINAL = new Set(["complete", "error", "interrupted"]);

/**
 * Follows a session's events (the SDK resumes from the last id after a dropped connection)
 * until `untilExecution` ends, or forever when it is undefined. Returns the exit code.
 */
export async function follow(
  client: KiloCloudClient,
  sessionId: string,
  opts: { fromId?: bigint; untilExecution?: string; json: boolean; verbose: boolean; io: Io },
): Promise<number> {
  const renderer = new Renderer({ verbose: opts.verbose });
  const spinner = new Spinner(opts.io.isTTY && !opts.json);
  spinner.start();
  const print = (line: string) => {
    spinner.clear();
    opts.io.out(line);
  };
  const abort = new AbortController();
  const onSigint = () => abort.abort();
  process.once("SIGINT", onSigint);
  try {
    const events = client.subscribe(sessionId, {
      ...(opts.fromId !== undefined ? { fromId: opts.fromId } : {}),
      signal: abort.signal,
    });
    for await (const event of events) {
      if (opts.untilExecution && event.executionId !== opts.untilExecution) continue;
      // The renderer also keeps the run's outcome, so it sees every event even with --json.
      const lines = renderer.render(event);
      if (opts.json) print(eventJson(event));
      else for (const line of lines) print(paint(line, opts.io.colour));
      if (event.payload.case === "status") spinner.set(event.payload.value.message);
      if (event.payload.case === "kilocode") spinner.set("kilo is working");
      if (opts.untilExecution && TERMINAL.has(event.payload.case ?? "")) return exitCodeOf(renderer.summary);
    }
    return abort.signal.aborted ? 130 : 0;
  } catch (err) {
    if (abort.signal.aborted || ConnectError.from(err).code === Code.Canceled) return 130;
    throw err;
  } finally {
    abort.abort();
    process.off("SIGINT", onSigint);
    spinner.stop();
  }
}
