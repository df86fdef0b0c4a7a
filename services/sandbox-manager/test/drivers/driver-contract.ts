import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Driver, ExecHandle, Sandbox } from "../../src/drivers/driver.js";
import { execCollect, readSandboxFile } from "../../src/drivers/exec-utils.js";
import { proxyEnv } from "../../src/drivers/local/bwrap-args.js";
import { eventually, findHostProcesses, uniqueSleepSeconds } from "./host-procs.js";

export interface DriverContractOptions {
  /**
   * Live processes whose argv starts with `args`, wherever the driver runs them.
   * Defaults to the host's /proc (right for local drivers); a remote driver passes its own.
   */
  findProcesses?: (args: string[]) => Promise<unknown[]>;
}

const PATH_ENV = { PATH: "/usr/local/bin:/usr/bin:/bin" };

/**
 * What every Driver must do, whatever runs the sandboxes. Commands only use sandbox paths
 * as whole arguments (never inside a script), so a driver that maps paths can pass too.
 */
export function driverContract(
  name: string,
  makeDriver: () => Promise<Driver>,
  opts: DriverContractOptions = {},
): void {
  const findProcesses = opts.findProcesses ?? findHostProcesses;

  describe(`Driver contract: ${name}`, () => {
    let driver: Driver;
    let sandbox: Sandbox;
    // Fresh users per run so a driver with persistent state starts clean.
    const run = randomUUID().slice(0, 8);
    const key = { orgId: `org-${run}`, userId: `u-${run}` };

    beforeAll(async () => {
      driver = await makeDriver();
      sandbox = await driver.ensureSandbox(key);
    });
    afterAll(async () => {
      await driver?.close();
    });

    it("ensureSandbox gives the hosted product's ids and is idempotent, also when concurrent", async () => {
      const org = { orgId: "org-1", userId: "u1" };
      const personal = { userId: "u1" };
      const bot = { orgId: "org-1", userId: "u1", botId: "rev" };
      const [a, b, c, a2, a3] = await Promise.all([
        driver.ensureSandbox(org),
        driver.ensureSandbox(personal),
        driver.ensureSandbox(bot),
        driver.ensureSandbox(org),
        driver.ensureSandbox(org),
      ]);
      expect(a.id).toBe("org-1__u1");
      expect(b.id).toBe("user:u1__u1");
      expect(c.id).toBe("org-1__u1__bot:rev");
      expect(a2.id).toBe(a.id);
      expect(a3.id).toBe(a.id);
      expect(a.key).toEqual(org);
      expect((await driver.ensureSandbox(org)).id).toBe(a.id);
    });

    it("gives different keys different sandboxes, and the same key the same one", async () => {
      const one = await driver.ensureSandbox({ orgId: `org-${run}`, userId: `one-${run}` });
      const other = await driver.ensureSandbox({ orgId: `org-${run}`, userId: `other-${run}` });
      await driver.mkdir(one, "/workspace/only-in-one");
      expect(await driver.exists(one, "/workspace/only-in-one")).toBe(true);
      expect(await driver.exists(other, "/workspace/only-in-one")).toBe(false);
      const again = await driver.ensureSandbox({ orgId: `org-${run}`, userId: `one-${run}` });
      expect(await driver.exists(again, "/workspace/only-in-one")).toBe(true);
    });

    it("streams stdout and stderr separately and reports the exit code", async () => {
      const out: string[] = [];
      const err: string[] = [];
      const handle = await driver.exec(sandbox, {
        argv: ["sh", "-c", "echo to-out; echo to-err >&2; exit 3"],
        cwd: "/workspace",
        env: PATH_ENV,
        onStdout: (c) => void out.push(Buffer.from(c).toString()),
        onStderr: (c) => void err.push(Buffer.from(c).toString()),
      });
      expect(handle.id).toMatch(/^proc_\d+$/);
      expect(await handle.result).toEqual({ exitCode: 3, signal: null, killed: false });
      expect(out.join("")).toBe("to-out\n");
      expect(err.join("")).toBe("to-err\n");

      const ok = await execCollect(driver, sandbox, { argv: ["true"], cwd: "/workspace", env: PATH_ENV });
      expect(ok.exitCode).toBe(0);
      const fail = await execCollect(driver, sandbox, { argv: ["false"], cwd: "/workspace", env: PATH_ENV });
      expect(fail.exitCode).toBe(1);
    });

    it("passes argv without a shell: metacharacters stay literal", async () => {
      const args = ["$(touch /workspace/pwned)", "`touch /workspace/pwned`", "a b", "*", ";", "|", "$HOME"];
      const r = await execCollect(driver, sandbox, {
        argv: ["printf", "%s\\n", ...args],
        cwd: "/workspace",
        env: PATH_ENV,
      });
      expect(r.exitCode).toBe(0);
      expect(r.stdout).toBe(`${args.join("\n")}\n`);
      expect(await driver.exists(sandbox, "/workspace/pwned")).toBe(false);
    });

    it("delivers stdin and closes it; without stdin, input is empty", async () => {
      const text = "line one\nline two with ünïcödé\n";
      const r = await execCollect(driver, sandbox, {
        argv: ["cat"],
        cwd: "/workspace",
        env: PATH_ENV,
        stdin: text,
      });
      expect(r.stdout).toBe(text);
      const bytes = new Uint8Array([0, 1, 2, 255, 10]);
      const b = await execCollect(driver, sandbox, {
        argv: ["od", "-An", "-tu1"],
        cwd: "/workspace",
        env: PATH_ENV,
        stdin: bytes,
      });
      expect(b.stdout.trim().split(/\s+/)).toEqual(["0", "1", "2", "255", "10"]);
      // Would hang forever if stdin stayed open.
      const none = await execCollect(
        driver,
        sandbox,
        { argv: ["cat"], cwd: "/workspace", env: PATH_ENV },
        { timeoutMs: 10_000 },
      );
      expect(none).toMatchObject({ exitCode: 0, stdout: "", timedOut: false });
    });

    it("gives the process exactly the given environment, nothing of the caller's", async () => {
      const canaryName = `CONTRACT_CANARY_${run.replace(/-/g, "")}`;
      process.env[canaryName] = `leak-${run}`;
      try {
        const env = { ...PATH_ENV, GIVEN: "a value with spaces = and equals", EMPTY: "" };
        const r = await execCollect(driver, sandbox, { argv: ["env"], cwd: "/workspace", env });
        expect(r.exitCode).toBe(0);
        const seen = new Map(
          r.stdout
            .split("\n")
            .filter((l) => l !== "")
            .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)] as const),
        );
        for (const [k, v] of Object.entries(env)) expect(seen.get(k)).toBe(v);
        // bubblewrap sets PWD to the working directory after changing into it, and a fenced
        // local sandbox points clients at its egress proxy; nothing else is added.
        const added = new Set(["PWD", ...Object.keys(proxyEnv())]);
        expect([...seen.keys()].filter((k) => !(k in env) && !added.has(k))).toEqual([]);
        expect(r.stdout).not.toContain(canaryName);
        expect(r.stdout).not.toContain(`leak-${run}`);
      } finally {
        delete process.env[canaryName];
      }
    });

    it("runs in the given working directory", async () => {
      const dir = `/workspace/${key.orgId}/${key.userId}/sessions/agent_cwd`;
      await driver.mkdir(sandbox, dir);
      const r = await execCollect(driver, sandbox, {
        argv: ["sh", "-c", "echo here > relative.txt"],
        cwd: dir,
        env: PATH_ENV,
      });
      expect(r.exitCode).toBe(0);
      expect(await driver.exists(sandbox, `${dir}/relative.txt`)).toBe(true);
      expect(await driver.exists(sandbox, "/workspace/relative.txt")).toBe(false);
    });

    it("keeps files written in the workspace and home across execs", async () => {
      for (const path of ["/workspace/persist/data.txt", "/home/agent_p/.config/state.json"]) {
        await driver.mkdir(sandbox, path.slice(0, path.lastIndexOf("/")));
        const w = await execCollect(driver, sandbox, {
          argv: ["sh", "-c", 'printf %s "$2" > "$1"', "sh", path, `content of ${path}`],
          cwd: "/workspace",
          env: PATH_ENV,
        });
        expect(w.exitCode).toBe(0);
        expect(await readSandboxFile(driver, sandbox, path)).toBe(`content of ${path}`);
        expect(await driver.exists(sandbox, path)).toBe(true);
      }
    });

    it("mkdir, exists and remove work below /workspace and /home", async () => {
      const dir = "/workspace/a/b/c";
      expect(await driver.exists(sandbox, dir)).toBe(false);
      await driver.mkdir(sandbox, dir);
      await driver.mkdir(sandbox, dir);
      expect(await driver.exists(sandbox, dir)).toBe(true);
      const w = await execCollect(driver, sandbox, {
        argv: ["sh", "-c", 'echo x > "$1/file"', "sh", dir],
        cwd: "/workspace",
        env: PATH_ENV,
      });
      expect(w.exitCode).toBe(0);
      await driver.remove(sandbox, "/workspace/a");
      expect(await driver.exists(sandbox, "/workspace/a")).toBe(false);
      await driver.remove(sandbox, "/workspace/a");
      await driver.remove(sandbox, "/workspace/never/was");

      await driver.mkdir(sandbox, "/home/agent_x");
      expect(await driver.exists(sandbox, "/home/agent_x")).toBe(true);
      await driver.remove(sandbox, "/home/agent_x");
      expect(await driver.exists(sandbox, "/home/agent_x")).toBe(false);
    });

    it("mkdir, exists and remove refuse paths outside /workspace and /home", async () => {
      const bad = [
        "/etc/passwd",
        "/tmp/x",
        "/workspace",
        "/home",
        "/",
        "relative/path",
        "/workspace/../etc",
        "/home/./x",
        "/workspacex/y",
      ];
      for (const path of bad) {
        await expect(driver.exists(sandbox, path), path).rejects.toThrow();
        await expect(driver.mkdir(sandbox, path), path).rejects.toThrow();
        await expect(driver.remove(sandbox, path), path).rejects.toThrow();
      }
    });

    it("kill() ends the whole tree, a setsid'd grandchild included, and is idempotent", async () => {
      const secs = uniqueSleepSeconds();
      let out = "";
      const handle: ExecHandle = await driver.exec(sandbox, {
        argv: ["sh", "-c", `setsid sleep ${secs} & sleep ${secs} & echo started; wait`],
        cwd: "/workspace",
        env: PATH_ENV,
        onStdout: (c) => {
          out += Buffer.from(c).toString();
        },
      });
      expect(
        await eventually(
          async () => out.includes("started") && (await findProcesses(["sleep", secs])).length === 2,
        ),
      ).toBe(true);

      const report = await handle.kill();
      expect(report.failed).toEqual([]);
      expect(report.killed.length).toBeGreaterThanOrEqual(3);
      for (const id of report.killed) expect(id).toMatch(/^proc_\d+$/);
      expect(report.killed).toContain(handle.id);

      const result = await handle.result;
      expect(result.killed).toBe(true);
      expect(result.exitCode === null || result.exitCode > 128).toBe(true);
      expect(await findProcesses(["sleep", secs])).toEqual([]);

      expect(await handle.kill()).toEqual({ killed: [], failed: [] });
    });

    it("kill() after the process ended reports nothing", async () => {
      const handle = await driver.exec(sandbox, { argv: ["true"], cwd: "/workspace", env: PATH_ENV });
      expect((await handle.result).killed).toBe(false);
      expect(await handle.kill()).toEqual({ killed: [], failed: [] });
    });

    it("concurrent kills report the processes once", async () => {
      const secs = uniqueSleepSeconds();
      const handle = await driver.exec(sandbox, { argv: ["sleep", secs], cwd: "/workspace", env: PATH_ENV });
      const [a, b] = await Promise.all([handle.kill(), handle.kill()]);
      expect([...a.killed, ...b.killed]).toContain(handle.id);
      expect(a.killed.length === 0 || b.killed.length === 0).toBe(true);
      expect((await handle.result).killed).toBe(true);
      expect(await findProcesses(["sleep", secs])).toEqual([]);
    });
  });
}
