import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import {
  encodeExecInput,
  exitCodeOf,
  killArgv,
  parseKillOutput,
  parseStartLine,
  shellQuote,
  wrapperArgv,
} from "../../src/drivers/kubernetes/exec-protocol.js";
import { eventually, findHostProcesses, uniqueSleepSeconds } from "./host-procs.js";

/** Runs argv here, as a container runtime would in the pod (not a process group leader). */
function run(argv: string[], input: Buffer) {
  const child = spawn(argv[0]!, argv.slice(1), {
    env: { PATH: "/usr/bin:/bin", RUNTIME_CANARY: "from-the-runtime" },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d) => {
    stdout += d;
  });
  child.stderr.on("data", (d) => {
    stderr += d;
  });
  // A script that does not read all of its input (the kill script) closes the pipe: EPIPE
  // here is expected, and the exit status tells what happened.
  child.stdin.on("error", () => {});
  child.stdin.end(input);
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.on("close", (code) => resolve({ code, stdout, stderr })),
  );
  return { child, done, out: () => stdout };
}

describe("the exec wrapper, run directly", () => {
  it("applies exactly the framed environment, feeds the framed stdin, and reports its pid first", async () => {
    const env = { PATH: "/usr/bin:/bin", TRICKY: "it's $HOME `id` $(id)\nline two", EMPTY: "" };
    const r = await run(
      wrapperArgv("/tmp", ["sh", "-c", 'env; echo "pid=$$"; cat']),
      encodeExecInput(env, "in\n"),
    ).done;
    expect(r.code).toBe(0);
    const [first, ...rest] = r.stdout.split("\n");
    const start = parseStartLine(first!);
    expect(start?.pid).toBeGreaterThan(1);
    const body = rest.join("\n");
    expect(body).toContain(`TRICKY=${env.TRICKY}\n`);
    expect(body).toContain("EMPTY=\n");
    expect(body).not.toContain("RUNTIME_CANARY");
    expect(body).not.toContain("OLDPWD");
    // The command is the wrapper itself (exec), so its pid is the one reported.
    expect(body).toContain(`pid=${start?.pid}\n`);
    expect(body.endsWith("in\n")).toBe(true);
  });

  it("puts the command in a process group of its own when the runtime did not", async () => {
    const p = run(
      wrapperArgv("/tmp", ["sh", "-c", "cat /proc/$$/stat"]),
      encodeExecInput({ PATH: "/usr/bin:/bin" }),
    );
    const r = await p.done;
    const pid = parseStartLine(r.stdout.split("\n")[0]!)!.pid;
    const stat = r.stdout.split("\n")[1]!;
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    expect(Number(fields[2])).toBe(pid); // pgrp
    expect(Number(fields[3])).toBe(pid); // session
  });

  it("fails with 125 and a message, running nothing, when the directory is missing", async () => {
    const r = await run(wrapperArgv("/no/such/dir", ["touch", "/tmp/never"]), encodeExecInput({})).done;
    expect(r).toEqual({
      code: 125,
      stdout: "",
      stderr: "kc-exec: cwd /no/such/dir is not a directory in the sandbox\n",
    });
  });

  it("kill script: stops then kills the tree, setsid'd children included, and says which", async () => {
    const secs = uniqueSleepSeconds();
    const p = run(
      wrapperArgv("/tmp", ["sh", "-c", `setsid sleep ${secs} & sleep ${secs} & echo up; wait`]),
      encodeExecInput({ PATH: "/usr/bin:/bin" }),
    );
    expect(await eventually(async () => (await findHostProcesses(["sleep", secs])).length === 2)).toBe(true);
    const start = parseStartLine(p.out().split("\n")[0]!)!;
    // A start time that does not match (a reused pid) kills nothing.
    const wrong = await run(killArgv(start.pid, "1"), Buffer.alloc(0)).done;
    expect(wrong.stdout).toBe("");
    expect(await findHostProcesses(["sleep", secs])).toHaveLength(2);

    const k = await run(killArgv(start.pid, start.start), Buffer.alloc(0)).done;
    const report = parseKillOutput(k.stdout);
    expect(report.failed).toEqual([]);
    expect(report.killed).toContain(`proc_${start.pid}`);
    expect(report.killed).toHaveLength(3);
    expect((await p.done).code).toBeNull();
    expect(await findHostProcesses(["sleep", secs])).toEqual([]);
    expect(() => readFileSync(`/proc/${start.pid}/stat`)).toThrow();
  });
});

describe("exec protocol encoding", () => {
  it("frames env and stdin with their byte lengths", () => {
    const frame = encodeExecInput({ A: "ü" }, new Uint8Array([0, 255]));
    const env = "export A='ü'\n";
    expect(
      frame.equals(
        Buffer.concat([Buffer.from(`${Buffer.byteLength(env)} 2\n${env}`), Buffer.from([0, 255])]),
      ),
    ).toBe(true);
  });

  it("refuses names a shell cannot export and values with NUL", () => {
    expect(() => encodeExecInput({ "A-B": "x" })).toThrow(/shell identifiers/);
    expect(() => encodeExecInput({ "1A": "x" })).toThrow(/shell identifiers/);
    expect(() => encodeExecInput({ A: "x\0y" })).toThrow(/NUL/);
  });

  it("quotes so that nothing but the quote is special", () => {
    expect(shellQuote("a'b")).toBe("'a'\\''b'");
    expect(shellQuote("$(x) `y` \\")).toBe("'$(x) `y` \\'");
  });

  it("reads the exit code from the status channel's Status", () => {
    expect(exitCodeOf({ status: "Success" })).toEqual({ exitCode: 0 });
    expect(
      exitCodeOf({
        status: "Failure",
        reason: "NonZeroExitCode",
        message: "command terminated with non-zero exit code: exit status 7",
        details: { causes: [{ reason: "ExitCode", message: "7" }] },
      }),
    ).toEqual({ exitCode: 7 });
    expect(
      exitCodeOf({ status: "Failure", reason: "InternalError", message: "container not found" }),
    ).toEqual({
      error: "container not found",
    });
  });
});
