import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { createLogger } from "@kilo-cloud/common";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Sandbox } from "../../src/drivers/driver.js";
import { execCollect } from "../../src/drivers/exec-utils.js";
import { LocalDriver, type LocalDriverOptions } from "../../src/drivers/local/local-driver.js";
import { processTree } from "../../src/drivers/local/proc-tree.js";
import { driverContract } from "./driver-contract.js";
import { eventually, findHostProcesses, uniqueSleepSeconds } from "./host-procs.js";

const PATH_ENV = { PATH: "/usr/local/bin:/usr/bin:/bin" };

function realKiloBinary(): string | undefined {
  try {
    const pkg = createRequire(import.meta.url).resolve("@kilocode/cli-linux-x64/package.json");
    const bin = join(dirname(pkg), "bin", "kilo");
    return existsSync(bin) ? bin : undefined;
  } catch {
    return undefined;
  }
}
const roots: string[] = [];

async function tempRoot(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "local-driver-"));
  roots.push(dir);
  return dir;
}

async function makeDriver(opts: Partial<LocalDriverOptions> = {}): Promise<LocalDriver> {
  return LocalDriver.create({ rootDir: await tempRoot(), isolation: "bwrap", ...opts });
}

/** A logger whose lines the test can read. */
function captureLogger() {
  const lines: Array<{ level: number; msg: string }> = [];
  const logger = createLogger({
    service: "test",
    level: "debug",
    destination: { write: (s: string) => lines.push(JSON.parse(s)) },
  });
  return { logger, lines };
}

afterAll(async () => {
  for (const dir of roots) await rm(dir, { recursive: true, force: true });
});

driverContract("local (bwrap)", () => makeDriver());
driverContract("local (none)", () => makeDriver({ isolation: "none", logger: captureLogger().logger }));

describe("LocalDriver with bubblewrap", () => {
  let driver: LocalDriver;
  let a: Sandbox;
  let b: Sandbox;
  let fakeKilo: string;

  beforeAll(async () => {
    const bin = await tempRoot();
    // The sandboxes' host users must be able to read it (as with the packaged binary).
    await chmod(bin, 0o755);
    fakeKilo = join(bin, "kilo");
    await writeFile(fakeKilo, '#!/bin/sh\necho "fake kilo $*"\n');
    await chmod(fakeKilo, 0o755);
    driver = await makeDriver({ kiloBinary: fakeKilo });
    a = await driver.ensureSandbox({ orgId: "org-A", userId: "alice@example.com" });
    b = await driver.ensureSandbox({ orgId: "org-B", userId: "bob@example.com" });
  });
  afterAll(async () => {
    await driver?.close();
  });

  const inA = (argv: string[], cwd = "/workspace") => execCollect(driver, a, { argv, cwd, env: PATH_ENV });
  const inB = (argv: string[], cwd = "/workspace") => execCollect(driver, b, { argv, cwd, env: PATH_ENV });

  it("keeps each sandbox in a hashed host directory with workspace and home", async () => {
    const weird = await driver.ensureSandbox({ orgId: "../../etc", userId: "x/y\0z:$(id)" });
    for (const s of [a, b, weird]) {
      const dir = driver.sandboxDir(s);
      expect(basename(dir)).toMatch(/^[0-9a-f]{32}$/);
      expect((await readdir(dir)).sort()).toEqual(["home", "sandbox.json", "workspace"]);
      expect(JSON.parse(await readFile(join(dir, "sandbox.json"), "utf8")).id).toBe(s.id);
    }
    expect(driver.sandboxDir(a)).not.toBe(driver.sandboxDir(b));
  });

  it("does not let sandbox A read or list sandbox B's files, by sandbox path or by host path", async () => {
    const bFile = "/workspace/org-B/bob/secret.txt";
    await driver.mkdir(b, "/workspace/org-B/bob");
    await writeFile(join(driver.sandboxDir(b), bFile), "B's secret");
    await driver.mkdir(a, "/workspace/org-A/alice");

    const bHostDir = driver.sandboxDir(b);
    for (const argv of [
      ["cat", bFile],
      ["ls", "/workspace/org-B"],
      ["cat", join(bHostDir, bFile)],
      ["ls", bHostDir],
      ["ls", join(bHostDir, "..")],
    ]) {
      const r = await inA(argv);
      expect(r.exitCode, argv.join(" ")).not.toBe(0);
      expect(r.stdout).not.toContain("secret");
    }
    expect((await inA(["ls", "-A", "/workspace"])).stdout.trim().split("\n")).toEqual(["org-A"]);
    expect((await inA(["ls", "-A", "/home"])).stdout.trim()).toBe("");
    const top = (await inA(["ls", "-A", "/"])).stdout.trim().split("\n");
    const allowed = [
      "bin",
      "dev",
      "etc",
      "home",
      "lib",
      "lib32",
      "lib64",
      "libx32",
      "proc",
      "run",
      "sbin",
      "tmp",
      "usr",
      "workspace",
    ];
    expect(top.filter((e) => !allowed.includes(e))).toEqual([]);
  });

  it("shows only the harmless part of the host's /etc", async () => {
    const etc = (await inA(["ls", "-A", "/etc"])).stdout.trim().split("\n");
    for (const secret of ["shadow", "gshadow", "sudoers", "ssh", "machine-id", "hostname"])
      expect(etc).not.toContain(secret);
    expect(etc).toContain("passwd");
    const passwd = (await inA(["cat", "/etc/passwd"])).stdout;
    expect(passwd).toContain("sandbox:x:1000:1000");
    expect(passwd.trim().split("\n")).toHaveLength(3);
  });

  it("runs as uid 1000 without capabilities; on the host its files belong to the sandbox's own unprivileged user", async () => {
    const r = await inA([
      "sh",
      "-c",
      "id -u; id -g; id -un; grep CapEff /proc/self/status; touch /workspace/owned",
    ]);
    expect(r.stdout.split("\n").slice(0, 4)).toEqual([
      "1000",
      "1000",
      "sandbox",
      "CapEff:\t0000000000000000",
    ]);
    const st = await stat(join(driver.sandboxDir(a), "workspace/owned"));
    if (process.getuid?.() === 0) {
      // A root manager gives each sandbox a host uid of its own, never root's.
      const other = await inB(["sh", "-c", "touch /workspace/owned-b"]);
      expect(other.exitCode).toBe(0);
      const stB = await stat(join(driver.sandboxDir(b), "workspace/owned-b"));
      expect(st.uid).not.toBe(0);
      expect(stB.uid).not.toBe(0);
      expect(st.uid).not.toBe(stB.uid);
      expect((await stat(driver.sandboxDir(a))).mode & 0o077).toBe(0);
      await driver.remove(b, "/workspace/owned-b");
    } else {
      expect(st.uid).toBe(process.getuid?.());
    }
    await driver.remove(a, "/workspace/owned");
  });

  it("shows the system read-only and keeps /tmp private to one exec", async () => {
    for (const target of ["/usr/bin/evil", "/etc/evil", "/evil", "/usr/local/bin/evil"]) {
      expect((await inA(["touch", target])).exitCode, target).not.toBe(0);
    }
    expect((await inA(["sh", "-c", "echo x > /tmp/t && cat /tmp/t"])).stdout).toBe("x\n");
    expect((await inA(["ls", "-A", "/tmp"])).stdout).toBe("");
  });

  it("does not leak the manager's environment", async () => {
    process.env.SECRET_CANARY = `canary-${randomUUID()}`;
    try {
      const r = await inA(["sh", "-c", "env; cat /proc/1/environ | tr '\\0' '\\n'"]);
      expect(r.exitCode).toBe(0);
      expect(r.stdout).not.toContain("SECRET_CANARY");
      expect(r.stdout).not.toContain(process.env.SECRET_CANARY);
      expect(r.stdout).not.toMatch(/^(HOME|USER|NODE_OPTIONS|VITEST)=/m);
    } finally {
      delete process.env.SECRET_CANARY;
    }
  });

  it("gives each exec its own pid namespace", async () => {
    const other = await driver.exec(a, {
      argv: ["sleep", uniqueSleepSeconds()],
      cwd: "/workspace",
      env: PATH_ENV,
    });
    try {
      const r = await inA(["sh", "-c", 'echo $$; for p in /proc/[0-9]*; do cat "$p/comm"; done']);
      const [self, ...comms] = r.stdout.trim().split("\n");
      expect(Number(self)).toBeLessThanOrEqual(3);
      // The namespace's init (bwrap), the egress bridge (socat), the shell, and cat: nothing
      // of the host or other execs.
      expect(comms.filter((c) => !["bwrap", "socat", "sh", "cat"].includes(c))).toEqual([]);
      expect(comms.length).toBeLessThanOrEqual(5);
    } finally {
      await other.kill();
    }
  });

  it("does not put the environment on bwrap's command line or in any host process's environment", async () => {
    const canary = `env-canary-${randomUUID()}`;
    const secs = uniqueSleepSeconds();
    const handle = await driver.exec(a, {
      argv: ["sleep", secs],
      cwd: "/workspace",
      env: { ...PATH_ENV, API_KEY: canary },
    });
    try {
      expect(await eventually(async () => (await findHostProcesses(["sleep", secs])).length === 1)).toBe(
        true,
      );
      const pid = Number(handle.id.slice("proc_".length));
      const tree = await processTree(pid);
      expect(tree.length).toBeGreaterThanOrEqual(3);
      for (const p of tree) {
        const cmdline = await readFile(`/proc/${p.pid}/cmdline`, "utf8");
        expect(cmdline).not.toContain(canary);
        expect(cmdline).not.toContain("API_KEY");
      }
      // bwrap (a host process) has a fixed environment: nothing of the session's.
      expect(await readFile(`/proc/${pid}/environ`, "utf8")).not.toContain(canary);
      // It did reach the command, inside the sandbox.
      const comms = await Promise.all(tree.map((p) => readFile(`/proc/${p.pid}/comm`, "utf8")));
      const sleeper = tree[comms.indexOf("sleep\n")];
      expect(await readFile(`/proc/${sleeper!.pid}/environ`, "utf8")).toContain(`API_KEY=${canary}`);
    } finally {
      await handle.kill();
    }
  });

  it("kills daemons that double-forked into a new session, on kill() and when the exec ends", async () => {
    const killed = uniqueSleepSeconds();
    let out = "";
    const h = await driver.exec(a, {
      argv: ["sh", "-c", `(setsid sleep ${killed} &); echo started; sleep 1000`],
      cwd: "/workspace",
      env: PATH_ENV,
      onStdout: (c) => {
        out += Buffer.from(c).toString();
      },
    });
    expect(
      await eventually(
        async () => out.includes("started") && (await findHostProcesses(["sleep", killed])).length === 1,
      ),
    ).toBe(true);
    const report = await h.kill();
    expect(report.failed).toEqual([]);
    expect(await findHostProcesses(["sleep", killed])).toEqual([]);

    const ended = uniqueSleepSeconds();
    const r = await inA(["sh", "-c", `(setsid sleep ${ended} &); echo started`]);
    expect(r).toMatchObject({ exitCode: 0, stdout: "started\n" });
    expect(await eventually(async () => (await findHostProcesses(["sleep", ended])).length === 0)).toBe(true);
  });

  it("kill() right after exec leaves nothing behind, even while bwrap is still setting up", async () => {
    // Killing only the outer bwrap this early left the sandbox running in about half the runs.
    const secs = uniqueSleepSeconds();
    for (let i = 0; i < 20; i++) {
      const h = await driver.exec(a, { argv: ["sleep", secs], cwd: "/workspace", env: PATH_ENV });
      if (i % 4 > 0) await new Promise((r) => setTimeout(r, i % 4));
      const report = await h.kill();
      expect(report.failed).toEqual([]);
      expect((await h.result).killed).toBe(true);
    }
    await new Promise((r) => setTimeout(r, 200));
    expect(await findHostProcesses(["sleep", secs])).toEqual([]);
  });

  it("binds the kilo binary read-only at /usr/local/bin/kilo next to the host's own tools", async () => {
    const r = await inA(["kilo", "run", "--format", "json"]);
    expect(r).toMatchObject({ exitCode: 0, stdout: "fake kilo run --format json\n" });
    const hostTools = (await readdir("/usr/local/bin")).filter((n) => n !== "kilo");
    const seen = (await inA(["ls", "-A", "/usr/local/bin"])).stdout.trim().split("\n");
    expect(seen.sort()).toEqual([...hostTools, "kilo"].sort());
  });

  it.skipIf(realKiloBinary() === undefined)("runs the real kilo binary as the sandbox user", async () => {
    const d = await makeDriver({ kiloBinary: realKiloBinary() });
    try {
      const s = await d.ensureSandbox({ orgId: "org-k", userId: "kilo-user" });
      const home = "/home/agent_k";
      await d.mkdir(s, home);
      const r = await execCollect(
        d,
        s,
        {
          argv: ["kilo", "--version"],
          cwd: "/workspace",
          env: {
            ...PATH_ENV,
            HOME: home,
            XDG_CONFIG_HOME: `${home}/.config`,
            XDG_DATA_HOME: `${home}/.local/share`,
            XDG_CACHE_HOME: `${home}/.cache`,
            XDG_STATE_HOME: `${home}/.local/state`,
            TMPDIR: "/tmp",
          },
        },
        { timeoutMs: 25_000 },
      );
      expect(r).toMatchObject({ exitCode: 0, timedOut: false });
      expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
      // kilo keeps its state in the session's HOME, which persists on the host.
      expect(await d.exists(s, `${home}/.config`)).toBe(true);
    } finally {
      await d.close();
    }
  });

  it("refuses symlinks that lead out of the sandbox in mkdir, exists and remove", async () => {
    const victim = await tempRoot();
    await writeFile(join(victim, "keep.txt"), "host file");
    const r = await inA([
      "sh",
      "-c",
      'ln -s "$1" /workspace/escape && ln -s / /home/root-link',
      "sh",
      victim,
    ]);
    expect(r.exitCode).toBe(0);
    expect(await driver.exists(a, "/workspace/escape/keep.txt")).toBe(false);
    await expect(driver.mkdir(a, "/workspace/escape/made-by-manager")).rejects.toThrow();
    await expect(driver.remove(a, "/workspace/escape/keep.txt")).rejects.toThrow();
    await expect(driver.mkdir(a, "/home/root-link/tmp/x")).rejects.toThrow();
    expect(await readFile(join(victim, "keep.txt"), "utf8")).toBe("host file");
    expect(await readdir(victim)).toEqual(["keep.txt"]);
    // The link itself is removed, never what it points to.
    await driver.remove(a, "/workspace/escape");
    expect(await driver.exists(a, "/workspace/escape")).toBe(false);
    expect(await readFile(join(victim, "keep.txt"), "utf8")).toBe("host file");
    await symlink(victim, join(driver.sandboxDir(a), "home/host-made-link"));
    await driver.remove(a, "/home/host-made-link");
    expect(await readdir(victim)).toEqual(["keep.txt"]);
  });

  it("rejects an exec in a missing sandbox or directory", async () => {
    await expect(
      driver.exec(
        { id: "never-ensured", key: { userId: "nobody" } },
        { argv: ["true"], cwd: "/workspace", env: {} },
      ),
    ).rejects.toThrow(/does not exist/);
    await expect(inA(["true"], "/workspace/no/such/dir")).rejects.toThrow(/not a directory/);
  });

  it("refuses to start when bubblewrap is missing, saying what to do", async () => {
    await expect(makeDriver({ bwrapPath: "/nonexistent/bwrap" })).rejects.toThrow(
      /Install bubblewrap.*isolation to "none"/s,
    );
  });

  it("refuses to start with a kilo binary that does not exist", async () => {
    await expect(makeDriver({ kiloBinary: "/nonexistent/kilo" })).rejects.toThrow(/kiloBinary/);
  });

  it("close() kills every running exec", async () => {
    const d = await makeDriver();
    const s = await d.ensureSandbox({ userId: "closer" });
    const secs = uniqueSleepSeconds();
    const handles = await Promise.all(
      [1, 2].map(() => d.exec(s, { argv: ["sleep", secs], cwd: "/workspace", env: PATH_ENV })),
    );
    await d.close();
    for (const h of handles) expect((await h.result).killed).toBe(true);
    expect(await findHostProcesses(["sleep", secs])).toEqual([]);
    await expect(d.exec(s, { argv: ["true"], cwd: "/workspace", env: PATH_ENV })).rejects.toThrow(/closed/);
  });
});

describe("LocalDriver without isolation", () => {
  it("logs a loud warning when created", async () => {
    const { logger, lines } = captureLogger();
    const d = await LocalDriver.create({ rootDir: await tempRoot(), isolation: "none", logger });
    await d.close();
    const warn = lines.find((l) => l.level === 40);
    expect(warn?.msg).toMatch(/isolation is "none".*Development only/s);
  });

  it("maps sandbox paths in cwd, whole arguments and env values to the sandbox's host directory", async () => {
    const bin = await tempRoot();
    const kilo = join(bin, "kilo");
    await writeFile(kilo, '#!/bin/sh\necho "fake kilo $*"\n');
    await chmod(kilo, 0o755);
    const d = await LocalDriver.create({
      rootDir: await tempRoot(),
      isolation: "none",
      kiloBinary: kilo,
      logger: captureLogger().logger,
    });
    try {
      const s = await d.ensureSandbox({ userId: "dev" });
      await d.mkdir(s, "/home/agent_1");
      const r = await execCollect(d, s, {
        argv: ["sh", "-c", 'pwd; echo "$HOME"; echo "$1"', "sh", "/workspace/x"],
        cwd: "/home/agent_1",
        env: { ...PATH_ENV, HOME: "/home/agent_1" },
      });
      const dir = d.sandboxDir(s);
      expect(r.stdout).toBe(`${dir}/home/agent_1\n${dir}/home/agent_1\n${dir}/workspace/x\n`);
      const k = await execCollect(d, s, { argv: ["kilo", "--version"], cwd: "/workspace", env: PATH_ENV });
      expect(k.stdout).toBe("fake kilo --version\n");
    } finally {
      await d.close();
    }
  });
});
