/**
 * run-overhead: what the whole service adds to a kilo run.
 *
 * The same prompt, model server and repository, run
 *   (a) through the whole service: InitiateSession (or SendMessage) → `complete` received by
 *       a Subscribe client (full stack on loopback, real kilo in bwrap sandboxes), and
 *   (b) as a raw `kilo run` in a prepared git clone, with the command line and environment
 *       the runner builds: on the host, and inside the same bubblewrap sandbox,
 * alternating, several runs each; plus the warm-server option: `kilo serve` started once
 * with the session's environment, then `kilo run --attach` for the messages.
 *
 *   npm run bench:run-overhead -- [--runs=3] [--variants=service,host,bwrap,serve]
 *                                 [--bwrap-follow-up] [--max-load=2.5] [--max-minutes=25]
 *
 * Env: BENCH_RUNS, BENCH_VARIANTS, BENCH_BWRAP_FOLLOW_UP, BENCH_MAX_LOAD, BENCH_MAX_MINUTES.
 * Everything is on loopback; it stops by itself (per-run timeouts and an overall limit).
 */
import { execFileSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { cpus, loadavg, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import type { Event } from "@kilo-cloud/proto";
import {
  LocalDriver,
  packagedKiloBinary,
  type SandboxKey,
  sessionHome,
  workspacePath,
} from "@kilo-cloud/sandbox-manager";
import { GIT_TOKEN, REPO, startFullStack } from "../services/gateway/test/support/full-stack.js";
import {
  cloneWorkspace,
  type KiloRunResult,
  type KiloRunSpec,
  killStartedProcesses,
  makeHome,
  runKiloInSandbox,
  runKiloOnHost,
  startKiloServe,
} from "./lib/kilo-raw.js";
import {
  flagOption,
  median,
  mib,
  numberOption,
  printTable,
  progress,
  ratio,
  secs,
  stringOption,
} from "./lib/stats.js";
import { eventMs, type Received, StreamRecorder } from "./lib/subscribe.js";

const RUNS = numberOption("runs", "BENCH_RUNS", 3);
const ALL_VARIANTS = ["service", "host", "bwrap", "serve"] as const;
type Variant = (typeof ALL_VARIANTS)[number];
const VARIANTS = (stringOption("variants", "BENCH_VARIANTS") ?? ALL_VARIANTS.join(","))
  .split(",")
  .map((v) => v.trim())
  .filter((v): v is Variant => (ALL_VARIANTS as readonly string[]).includes(v));
const BWRAP_FOLLOW_UP = flagOption("bwrap-follow-up", "BENCH_BWRAP_FOLLOW_UP", false);
/** Wait (up to 2 min) before each measured run until the 1-minute load average is below this; 0: never. */
const MAX_LOAD = numberOption("max-load", "BENCH_MAX_LOAD", 0);
const MAX_MINUTES = numberOption("max-minutes", "BENCH_MAX_MINUTES", 25);
const RUN_TIMEOUT_MS = 240_000;
const PROMPT_1 = "Write the first file";
const PROMPT_2 = "Write the second file";
const MODEL = "mock-model";

// ---- samples ----

interface Sample {
  /** Wall time of the whole run. */
  ms: number;
  /** Kilo's own start-up: spawn → first JSON line (from events for the service). */
  startupMs: number;
  ok: boolean;
  /** 1-minute load average when the run started. */
  load: number;
}
const samples = new Map<string, Sample[]>();
const add = (key: string, s: Sample) => {
  samples.set(key, [...(samples.get(key) ?? []), s]);
};
const okOf = (key: string) => (samples.get(key) ?? []).filter((s) => s.ok);
const med = (key: string) => median(okOf(key).map((s) => s.ms));
const medStartup = (key: string) =>
  median(
    okOf(key)
      .map((s) => s.startupMs)
      .filter(Number.isFinite),
  );
const list = (key: string) =>
  (samples.get(key) ?? []).map((s) => `${(s.ms / 1000).toFixed(1)}${s.ok ? "" : "!"}`).join(" ");
const loads = (key: string) => (samples.get(key) ?? []).map((s) => s.load.toFixed(1)).join(" ");

/** Phases of one service execution, from its events' timestamps (ms). */
type Breakdown = Record<string, number>;
const breakdowns: { cold: Breakdown[]; warm: Breakdown[] } = { cold: [], warm: [] };

function breakdown(t0: number, events: Received[]): Breakdown {
  const at = (pred: (e: Event) => boolean) => {
    const r = events.find((x) => pred(x.event));
    return r ? eventMs(r.event) : Number.NaN;
  };
  const status = (step: string) => at((e) => e.payload.case === "status" && e.payload.value.step === step);
  const sandbox = status("sandbox");
  const clone = status("clone");
  const branch = status("branch");
  const kilo = status("kilo");
  const firstKilo = at((e) => e.payload.case === "kilocode");
  const completeR = events.find((x) => x.event.payload.case === "complete");
  const complete = completeR ? eventMs(completeR.event) : Number.NaN;
  const received = completeR?.receivedAt ?? Number.NaN;
  const gitStart = Number.isNaN(clone) ? sandbox : clone;
  return {
    "request → 'sandbox' status (gateway, session service, dispatch)": sandbox - t0,
    "'sandbox' → 'clone' (sandbox dirs, credentials, HOME)": Number.isNaN(clone)
      ? Number.NaN
      : clone - sandbox,
    "git: clone (cold) / branch checkout → 'branch' status": branch - gitStart,
    "'branch' → 'kilo' status (kilo command)": kilo - branch,
    "kilo spawned (bwrap) → first kilocode event": firstKilo - kilo,
    "first kilocode event → complete emitted (rest of the run, exit)": complete - firstKilo,
    "complete emitted → received by the Subscribe client": received - complete,
    "= outside kilo (total − kilo)": received - t0 - (complete - kilo),
    "= kilo ('kilo' status → complete)": complete - kilo,
    total: received - t0,
  };
}

async function waitForQuiet(): Promise<void> {
  if (MAX_LOAD <= 0) return;
  const until = Date.now() + 120_000;
  while ((loadavg()[0] ?? 0) > MAX_LOAD && Date.now() < until) {
    progress(`load average ${loadavg()[0]?.toFixed(2)} > ${MAX_LOAD}: waiting`);
    await new Promise((r) => setTimeout(r, 10_000));
  }
}

// ---- the run ----

async function main(): Promise<void> {
  const bin = packagedKiloBinary();
  if (!bin) throw new Error("the kilo binary is not installed (@kilocode/cli-linux-x64)");
  const root = await mkdtemp(join(tmpdir(), "kc-bench-overhead-"));
  cleanups.push(() => rm(root, { recursive: true, force: true }));
  // Also pulls the 170 MB binary into the page cache before anything is timed.
  const kiloVersion = execFileSync(bin, ["--version"], {
    encoding: "utf8",
    env: {
      PATH: "/usr/local/bin:/usr/bin:/bin",
      HOME: join(root, "version-home"),
      KILO_DISABLE_AUTOUPDATE: "1",
    },
  }).trim();
  const load0 = loadavg();
  progress(`kilo ${kiloVersion}; runs=${RUNS}; variants=${VARIANTS.join(",")}; starting the full stack`);

  const stack = await startFullStack({ kilo: "real" });
  cleanups.push(async () => stack[Symbol.asyncDispose]());
  const driver = await LocalDriver.create({
    rootDir: join(root, "bwrap"),
    isolation: "bwrap",
    kiloBinary: bin,
  });
  cleanups.push(() => driver.close());
  const provider = {
    kind: "openai-compatible" as const,
    baseUrl: stack.model.url,
    apiKey: "sk-stack",
    id: "mock",
  };
  const gitAuth = { username: "x-access-token", password: GIT_TOKEN };
  const serveInfo: { startMs: number[]; warmMs: number[]; rss: number[] } = {
    startMs: [],
    warmMs: [],
    rss: [],
  };
  const runOpts = { timeoutMs: RUN_TIMEOUT_MS };
  const failures: string[] = [];
  const note = (key: string, r: KiloRunResult, load: number) => {
    const ok = r.exitCode === 0 && r.lines > 0;
    if (!ok) failures.push(`${key}: exit ${r.exitCode}, ${r.lines} lines; ${r.stderrTail.slice(-300)}`);
    add(key, { ms: r.wallMs, startupMs: r.firstLineMs, ok, load });
    return ok;
  };
  const load = () => loadavg()[0] ?? Number.NaN;

  async function hostWorkspace(dir: string, sessionId: string): Promise<Omit<KiloRunSpec, "prompt">> {
    const home = join(dir, "home");
    const workspace = join(dir, "workspace");
    await makeHome(home);
    await cloneWorkspace(stack.git.repoUrl(REPO), gitAuth, workspace, `session/${sessionId}`);
    return { provider, model: MODEL, mode: "code", home, workspace, sessionId };
  }

  const variants: Record<Variant, (i: number) => Promise<void>> = {
    async service(i) {
      const user = `bench-user-${i}`;
      await stack.login(user);
      const sessions = stack.sessions(user);
      const { cloudAgentSessionId } = await sessions.prepareSession({
        prompt: PROMPT_1,
        mode: "code",
        model: MODEL,
        repository: { case: "githubRepo", value: REPO },
        githubToken: GIT_TOKEN,
        autoCommit: false,
      });
      const { ticket } = await sessions.createStreamTicket({ cloudAgentSessionId });
      const rec = new StreamRecorder(stack.stream(), { cloudAgentSessionId, ticket });
      const measure = async (key: string, kind: "cold" | "warm", start: () => Promise<string>) => {
        await waitForQuiet();
        const l = load();
        const t0 = Date.now();
        const executionId = await start();
        const end = await rec.terminalOf(executionId, RUN_TIMEOUT_MS);
        const ok = end.event.payload.case === "complete" && end.event.payload.value.exitCode === 0;
        if (!ok)
          failures.push(`${key}: ${end.event.payload.case} ${JSON.stringify(end.event.payload.value)}`);
        const b = breakdown(t0, rec.eventsOf(executionId));
        add(key, {
          ms: end.receivedAt - t0,
          startupMs: b["kilo spawned (bwrap) → first kilocode event"] ?? Number.NaN,
          ok,
          load: l,
        });
        if (ok) breakdowns[kind].push(b);
        return ok;
      };
      try {
        // Let the subscription get established before the clock starts.
        await new Promise((r) => setTimeout(r, 200));
        const first = await measure("service cold", "cold", async () => {
          return (await sessions.initiateSession({ cloudAgentSessionId })).executionId;
        });
        if (first) {
          await measure("service follow-up", "warm", async () => {
            return (await sessions.sendMessage({ cloudAgentSessionId, prompt: PROMPT_2 })).executionId;
          });
        }
      } finally {
        await rec.close();
      }
    },

    async host(i) {
      const spec = await hostWorkspace(join(root, `host-${i}`), `raw-host-${i}`);
      await waitForQuiet();
      let l = load();
      const cold = await runKiloOnHost(bin, { ...spec, prompt: PROMPT_1 }, runOpts);
      if (!note("raw host cold", cold, l)) return;
      await waitForQuiet();
      l = load();
      const follow = await runKiloOnHost(
        bin,
        { ...spec, prompt: PROMPT_2, kiloSessionId: cold.kiloSessionId },
        runOpts,
      );
      note("raw host follow-up", follow, l);
    },

    async bwrap(i) {
      const key: SandboxKey = { userId: `raw-bwrap-${i}` };
      const sessionId = `raw-bwrap-session-${i}`;
      const sandbox = await driver.ensureSandbox(key);
      const workspace = workspacePath(key, sessionId);
      const home = sessionHome(sessionId);
      const hostDir = driver.sandboxDir(sandbox);
      await makeHome(join(hostDir, home));
      await cloneWorkspace(
        stack.git.repoUrl(REPO),
        gitAuth,
        join(hostDir, workspace),
        `session/${sessionId}`,
      );
      const spec = { provider, model: MODEL, mode: "code", home, workspace, sessionId };
      await waitForQuiet();
      let l = load();
      const cold = await runKiloInSandbox(driver, sandbox, { ...spec, prompt: PROMPT_1 }, runOpts);
      if (!note("raw bwrap cold", cold, l) || !BWRAP_FOLLOW_UP) return;
      await waitForQuiet();
      l = load();
      const follow = await runKiloInSandbox(
        driver,
        sandbox,
        { ...spec, prompt: PROMPT_2, kiloSessionId: cold.kiloSessionId },
        runOpts,
      );
      note("raw bwrap follow-up", follow, l);
    },

    async serve(i) {
      const spec = await hostWorkspace(join(root, `serve-${i}`), `raw-serve-${i}`);
      await waitForQuiet();
      const server = await startKiloServe(bin, spec, { timeoutMs: 120_000 });
      try {
        serveInfo.startMs.push(server.startMs);
        serveInfo.warmMs.push(server.warmMs);
        const attach = ["--attach", server.url, "--dir", spec.workspace];
        await waitForQuiet();
        let l = load();
        const first = await runKiloOnHost(bin, { ...spec, prompt: PROMPT_1, extraArgs: attach }, runOpts);
        if (note("attach first message", first, l)) {
          await waitForQuiet();
          l = load();
          const follow = await runKiloOnHost(
            bin,
            { ...spec, prompt: PROMPT_2, kiloSessionId: first.kiloSessionId, extraArgs: attach },
            runOpts,
          );
          note("attach follow-up", follow, l);
        }
        serveInfo.rss.push(await server.rssBytes());
      } finally {
        await server.stop();
      }
    },
  };

  try {
    for (let i = 0; i < RUNS; i++) {
      // Alternating, and rotating the order each round so that no variant always goes first.
      const order = VARIANTS.map((_, k) => VARIANTS[(k + i) % VARIANTS.length] as Variant);
      for (const v of order) {
        progress(`round ${i + 1}/${RUNS}: ${v}`);
        try {
          await variants[v](i);
        } catch (err) {
          failures.push(`${v} round ${i + 1}: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
    }
  } finally {
    await cleanup();
  }

  report({ kiloVersion, load0, serveInfo, failures });
}

// ---- the report ----

function report(r: {
  kiloVersion: string;
  load0: number[];
  serveInfo: { startMs: number[]; warmMs: number[]; rss: number[] };
  failures: string[];
}): void {
  const load1 = loadavg();
  console.log(`\n# run-overhead (${new Date().toISOString().slice(0, 10)})`);
  console.log(
    `node ${process.version}, kilo ${r.kiloVersion}, ${cpus().length} cores, ${(totalmem() / 2 ** 30).toFixed(0)} GiB; ` +
      `load average ${r.load0[0]?.toFixed(2)} at start, ${load1[0]?.toFixed(2)} at end; runs=${RUNS}. ` +
      "Times in seconds; '!' marks a failed run (left out of the median); 'load' is the 1-minute " +
      "load average as each run started.",
  );
  const hostCold = med("raw host cold");
  const hostFollow = med("raw host follow-up");
  const bwrapCold = med("raw bwrap cold");
  const bwrapFollow = med("raw bwrap follow-up");
  const rows: string[][] = [];
  const row = (label: string, key: string, vsHost: number, vsBwrap: number) => {
    if (!samples.has(key)) return;
    rows.push([
      label,
      list(key),
      loads(key),
      secs(med(key)),
      ratio(med(key), vsHost),
      ratio(med(key), vsBwrap),
    ]);
  };

  row("raw `kilo run`, host (baseline)", "raw host cold", hostCold, bwrapCold);
  row("raw `kilo run`, in the local driver's bwrap", "raw bwrap cold", hostCold, bwrapCold);
  row("service: InitiateSession → complete received", "service cold", hostCold, bwrapCold);
  row(
    "`kilo serve` (started and warmed before) + `run --attach`",
    "attach first message",
    hostCold,
    bwrapCold,
  );
  console.log("\n## First message (cold sandbox). Goal: service ≤ 1.10× raw\n");
  printTable(["variant", "runs (s)", "load", "median", "vs raw host", "vs raw bwrap"], rows);

  rows.length = 0;
  row("raw `kilo run --session`, host (baseline)", "raw host follow-up", hostFollow, bwrapFollow);
  row("raw `kilo run --session`, in bwrap", "raw bwrap follow-up", hostFollow, bwrapFollow);
  row("service: SendMessage → complete received", "service follow-up", hostFollow, bwrapFollow);
  row("warm `kilo serve` + `run --attach --session`", "attach follow-up", hostFollow, bwrapFollow);
  console.log("\n## Follow-up (warm sandbox, same kilo session). Goal: service well under 1× raw\n");
  printTable(["variant", "runs (s)", "load", "median", "vs raw host", "vs raw bwrap"], rows);

  console.log("\n## Kilo's own start-up: spawn → first JSON line on stdout (medians)\n");
  const startupRows: string[][] = [];
  for (const [label, key] of [
    ["raw host, first message", "raw host cold"],
    ["raw host, follow-up", "raw host follow-up"],
    ["raw bwrap, first message", "raw bwrap cold"],
    ["raw bwrap, follow-up", "raw bwrap follow-up"],
    ["service, first message ('kilo' status → first kilocode event)", "service cold"],
    ["service, follow-up", "service follow-up"],
    ["run --attach, first message", "attach first message"],
    ["run --attach, follow-up", "attach follow-up"],
  ] as const) {
    if (!samples.has(key)) continue;
    const s = medStartup(key);
    startupRows.push([label, secs(s), secs(med(key) - s), secs(med(key))]);
  }
  printTable(["run", "spawn → first line", "rest", "whole run"], startupRows);

  if (samples.has("attach first message")) {
    console.log("\n## Warm kilo server option\n");
    const first = med("attach first message");
    const follow = med("attach follow-up");
    printTable(
      ["measure", "median", "vs raw host cold", "vs service (same message)"],
      [
        [
          "`kilo serve` start until it answers HTTP",
          secs(median(r.serveInfo.startMs)),
          ratio(median(r.serveInfo.startMs), hostCold),
          "",
        ],
        ["warming the workspace (GET /config, /agent)", secs(median(r.serveInfo.warmMs)), "", ""],
        [
          "`run --attach`, first message",
          secs(first),
          ratio(first, hostCold),
          ratio(first, med("service cold")),
        ],
        [
          "`run --attach --session`, follow-up",
          secs(follow),
          ratio(follow, hostCold),
          ratio(follow, med("service follow-up")),
        ],
        ["RSS of the server and its children after two runs", mib(median(r.serveInfo.rss)), "", ""],
      ],
    );
  }

  for (const [name, list_] of [
    ["first message", breakdowns.cold],
    ["follow-up", breakdowns.warm],
  ] as const) {
    if (list_.length === 0) continue;
    console.log(
      `\n## Where the service's time goes: ${name} (median of ${list_.length}, event timestamps)\n`,
    );
    const phases = Object.keys(list_[0] ?? {});
    printTable(
      ["phase", "median"],
      phases.map((p) => [p, secs(median(list_.map((b) => b[p] ?? Number.NaN).filter(Number.isFinite)))]),
    );
  }
  if (r.failures.length > 0) {
    console.log("\n## Failures\n");
    for (const f of r.failures) console.log(`- ${f}`);
  }
}

// ---- lifecycle ----

/** Undone in reverse order, once, at the end or when the bench is stopped. */
const cleanups: (() => Promise<unknown>)[] = [];
async function cleanup(): Promise<void> {
  killStartedProcesses();
  for (const fn of cleanups.splice(0).reverse()) await fn().catch(() => undefined);
}
const stop = (why: string, code: number) => {
  console.error(`run-overhead: ${why}; cleaning up`);
  const force = setTimeout(() => process.exit(code), 15_000);
  force.unref();
  void cleanup().finally(() => process.exit(code));
};
setTimeout(() => stop(`gave up after ${MAX_MINUTES} minutes`, 2), MAX_MINUTES * 60_000).unref();
process.once("SIGINT", () => stop("interrupted", 130));
process.once("SIGTERM", () => stop("terminated", 143));
main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    void cleanup().finally(() => process.exit(1));
  },
);
