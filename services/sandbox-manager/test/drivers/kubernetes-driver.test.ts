import { randomUUID } from "node:crypto";
import { readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { Sandbox } from "../../src/drivers/driver.js";
import { execCollect, readSandboxFile } from "../../src/drivers/exec-utils.js";
import {
  KubernetesDriver,
  type KubernetesDriverOptions,
  SandboxLostError,
} from "../../src/drivers/kubernetes/kubernetes-driver.js";
import { idHash, sandboxPodName } from "../../src/drivers/kubernetes/names.js";
import { K8sApiDouble, type K8sApiDoubleOptions } from "../k8s-api-double.js";
import { driverContract } from "./driver-contract.js";
import { eventually, findHostProcesses, uniqueSleepSeconds } from "./host-procs.js";
import { NS, testPodOptions } from "./kubernetes-fixtures.js";

const PATH_ENV = { PATH: "/usr/local/bin:/usr/bin:/bin" };

const doubles: K8sApiDouble[] = [];
const drivers: KubernetesDriver[] = [];

async function startDouble(opts: K8sApiDoubleOptions = {}): Promise<K8sApiDouble> {
  const d = await K8sApiDouble.start(opts);
  doubles.push(d);
  return d;
}

async function driverFor(
  double: K8sApiDouble,
  over: Partial<KubernetesDriverOptions> = {},
): Promise<KubernetesDriver> {
  const d = await KubernetesDriver.create({
    kubeConfig: double.kubeConfig(),
    pod: testPodOptions(),
    ...over,
  });
  drivers.push(d);
  return d;
}

afterAll(async () => {
  for (const d of drivers) await d.close();
  for (const d of doubles) await d.close();
});

driverContract("kubernetes (exec over v5.channel.k8s.io)", async () => driverFor(await startDouble()));
driverContract("kubernetes (an older API server: v4.channel.k8s.io)", async () =>
  driverFor(await startDouble({ protocols: ["v4.channel.k8s.io"] })),
);

const posts = (double: K8sApiDouble) =>
  double.requests.filter((r) => r.method === "POST" && r.path === `/api/v1/namespaces/${NS}/pods`);

describe("KubernetesDriver: pods", () => {
  it("creates the pod on first use, once for concurrent callers, named and labelled by hashes only", async () => {
    const double = await startDouble();
    const driver = await driverFor(double);
    const key = { orgId: "acme-org", userId: "alice@example.com", botId: "reviewer" };
    const sandboxes = await Promise.all([1, 2, 3].map(() => driver.ensureSandbox(key)));
    expect(sandboxes.map((s) => s.id)).toEqual(Array(3).fill("acme-org__alice@example.com__bot:reviewer"));
    expect(posts(double)).toHaveLength(1);

    const [pod] = double.pods(NS);
    expect(pod?.metadata?.name).toBe(sandboxPodName(key));
    expect(pod?.metadata?.name).toMatch(/^kc-sandbox-[0-9a-f]{32}$/);
    expect(pod?.metadata?.labels).toMatchObject({
      "app.kubernetes.io/managed-by": "kilo-cloud-sandbox-manager",
      "app.kubernetes.io/instance": "test",
      "cloud-agent.kilo.ai/org": idHash("org", "acme-org"),
      "cloud-agent.kilo.ai/user": idHash("user", "alice@example.com"),
      "cloud-agent.kilo.ai/bot": idHash("bot", "reviewer"),
    });
    // Nothing raw about the caller reached the API: not in a URL, not in a body.
    const everything = JSON.stringify(double.requests.map((r) => r.url)) + JSON.stringify(double.pods());
    for (const raw of ["alice", "example.com", "acme-org", "reviewer"]) expect(everything).not.toContain(raw);
  });

  it("finds its pods again by their labels after a restart, with their files", async () => {
    const double = await startDouble();
    const key = { orgId: "o", userId: `restart-${randomUUID()}` };
    const first = await driverFor(double);
    const s1 = await first.ensureSandbox(key);
    await first.mkdir(s1, "/workspace/kept");
    const uid = double.pods(NS)[0]?.metadata?.uid;
    await first.close();

    const second = await driverFor(double);
    const s2 = await second.ensureSandbox(key);
    expect(posts(double)).toHaveLength(1);
    expect(double.pods(NS).map((p) => p.metadata?.uid)).toEqual([uid]);
    expect(await second.exists(s2, "/workspace/kept")).toBe(true);
    const lists = double.requests.filter((r) => r.method === "GET" && r.path.endsWith("/pods"));
    expect(lists.some((r) => decodeURIComponent(r.url).includes(`cloud-agent.kilo.ai/sandbox=`))).toBe(true);
  });

  it("replaces a pod whose PID 1 died, and one being deleted, with a fresh one", async () => {
    const double = await startDouble({ podDeleteDelayMs: 300 });
    const driver = await driverFor(double);
    const key = { userId: `dead-${randomUUID()}` };
    const s = await driver.ensureSandbox(key);
    const name = driver.podName(key);
    const uid1 = double.pods(NS)[0]?.metadata?.uid;
    double.failPod(NS, name);
    await driver.ensureSandbox(key);
    const uid2 = double.pods(NS).find((p) => !p.metadata?.deletionTimestamp)?.metadata?.uid;
    expect(uid2).toBeDefined();
    expect(uid2).not.toBe(uid1);

    double.deletePod(NS, name);
    await driver.ensureSandbox(key);
    const live = double.pods(NS).filter((p) => !p.metadata?.deletionTimestamp);
    expect(live).toHaveLength(1);
    expect(live[0]?.metadata?.uid).not.toBe(uid2);
    expect(
      (await execCollect(driver, s, { argv: ["true"], cwd: "/workspace", env: PATH_ENV })).exitCode,
    ).toBe(0);
  });

  it("fails ensureSandbox with the reason when the pod cannot start", async () => {
    const double = await startDouble({ failPodsWith: "ImagePullBackOff" });
    const driver = await driverFor(double, { podStartTimeoutMs: 5_000 });
    await expect(driver.ensureSandbox({ userId: "no-image" })).rejects.toThrow(
      /cannot start: ImagePullBackOff/,
    );
  });

  it("refuses to start with credentials the API server rejects", async () => {
    const double = await startDouble();
    await expect(
      KubernetesDriver.create({ kubeConfig: double.kubeConfig("wrong-token"), pod: testPodOptions() }),
    ).rejects.toThrow(/cannot list pods in namespace kilo-sandboxes/);
  });

  it("the pod it creates passes Pod Security admission at level restricted", async () => {
    const double = await startDouble();
    const driver = await driverFor(double);
    await driver.ensureSandbox({ userId: "psa" });
    expect(posts(double)).toHaveLength(1);
    expect(double.pods(NS)).toHaveLength(1);
    // The same double refuses a pod that is not restricted (it is a real check).
    const res = await fetch(`${double.url}/api/v1/namespaces/${NS}/pods`, {
      method: "POST",
      headers: { authorization: `Bearer ${double.token}`, "content-type": "application/json" },
      body: JSON.stringify({
        apiVersion: "v1",
        kind: "Pod",
        metadata: { name: "loose" },
        spec: { containers: [{ name: "c", image: "x" }] },
      }),
    });
    expect(res.status).toBe(403);
    expect(((await res.json()) as { message: string }).message).toMatch(/violates PodSecurity "restricted/);
  });
});

describe("KubernetesDriver: exec", () => {
  let double: K8sApiDouble;
  let driver: KubernetesDriver;
  let sandbox: Sandbox;

  it("keeps the environment and stdin out of the exec URL (the audit log), passing them on stdin", async () => {
    double = await startDouble();
    driver = await driverFor(double);
    sandbox = await driver.ensureSandbox({ userId: "audit" });
    const secret = `s3cr3t-${randomUUID()}`;
    const prompt = `prompt-${randomUUID()}`;
    const r = await execCollect(driver, sandbox, {
      argv: ["sh", "-c", 'printf "%s|" "$API_KEY"; cat'],
      cwd: "/workspace",
      env: { ...PATH_ENV, API_KEY: secret },
      stdin: prompt,
    });
    expect(r).toMatchObject({ exitCode: 0, stdout: `${secret}|${prompt}` });
    const urls = double.requests.map((q) => decodeURIComponent(q.url)).join("\n");
    expect(urls).toContain("command=printf");
    expect(urls).not.toContain(secret);
    expect(urls).not.toContain(prompt);
    expect(urls).not.toContain("API_KEY=");
    // The staged stdin is gone from the pod's /tmp once the command runs.
    const tmp = double.volumeDir(NS, driver.podName({ userId: "audit" }), "tmp")!;
    expect(await readdir(join(tmp, ".kc-exec"))).toEqual([]);
  });

  it("streams output while the command runs, line by line", async () => {
    const lines: string[] = [];
    let firstAt = 0;
    const started = Date.now();
    const handle = await driver.exec(sandbox, {
      argv: ["sh", "-c", "echo one; sleep 1; echo two"],
      cwd: "/workspace",
      env: PATH_ENV,
      onStdout: (c) => {
        firstAt ||= Date.now();
        lines.push(...Buffer.from(c).toString().split("\n").filter(Boolean));
      },
    });
    expect(await handle.result).toEqual({ exitCode: 0, signal: null, killed: false });
    expect(lines).toEqual(["one", "two"]);
    expect(firstAt - started).toBeLessThan(900);
  });

  it("runs as the pod's non-root user with the system read-only", async () => {
    const r = await execCollect(driver, sandbox, {
      argv: ["sh", "-c", "id -u; touch /usr/x 2>/dev/null || echo ro; touch /tmp/x && echo tmp-ok"],
      cwd: "/workspace",
      env: PATH_ENV,
    });
    expect(r.stdout).toBe("1000\nro\ntmp-ok\n");
  });

  it("rejects an exec in a directory that does not exist, and env names a shell cannot carry", async () => {
    await expect(
      driver.exec(sandbox, { argv: ["true"], cwd: "/workspace/no/such/dir", env: PATH_ENV }),
    ).rejects.toThrow(/cwd \/workspace\/no\/such\/dir is not a directory in the sandbox/);
    await expect(
      driver.exec(sandbox, { argv: ["true"], cwd: "/workspace", env: { "NOT-A-NAME": "x" } }),
    ).rejects.toThrow(/shell identifiers/);
  });

  it("kill() of an exec running a daemonizing tree leaves nothing in the pod", async () => {
    const secs = uniqueSleepSeconds();
    let out = "";
    const h = await driver.exec(sandbox, {
      argv: ["sh", "-c", `sh -c "sleep ${secs}" & setsid sleep ${secs} & echo up; wait`],
      cwd: "/workspace",
      env: PATH_ENV,
      onStdout: (c) => {
        out += Buffer.from(c).toString();
      },
    });
    expect(
      await eventually(
        async () => out.includes("up") && (await findHostProcesses(["sleep", secs])).length === 2,
      ),
    ).toBe(true);
    const report = await h.kill();
    expect(report.failed).toEqual([]);
    expect(report.killed).toContain(h.id);
    expect(await h.result).toEqual({ exitCode: null, signal: "SIGKILL", killed: true });
    expect(await findHostProcesses(["sleep", secs])).toEqual([]);
  });
});

describe("KubernetesDriver: the pod goes away under a running exec", () => {
  for (const mode of ["status", "drop"] as const) {
    it(`the exec fails with SandboxLostError (server ${mode === "status" ? "reports exit 137" : "drops the socket"})`, async () => {
      const double = await startDouble({ onPodDelete: mode });
      const driver = await driverFor(double);
      const key = { userId: `lost-${mode}` };
      const s = await driver.ensureSandbox(key);
      await driver.mkdir(s, "/workspace/repo");
      const secs = uniqueSleepSeconds();
      const h = await driver.exec(s, { argv: ["sleep", secs], cwd: "/workspace/repo", env: PATH_ENV });
      expect(await eventually(async () => (await findHostProcesses(["sleep", secs])).length === 1)).toBe(
        true,
      );
      double.deletePod(NS, driver.podName(key));
      await expect(h.result).rejects.toThrow(SandboxLostError);
      await expect(h.result).rejects.toThrow(/went away/);
      expect(await eventually(async () => (await findHostProcesses(["sleep", secs])).length === 0)).toBe(
        true,
      );
      // The next use gets a new, empty pod.
      await driver.ensureSandbox(key);
      expect(await driver.exists(s, "/workspace/repo")).toBe(false);
      expect(
        (await execCollect(driver, s, { argv: ["true"], cwd: "/workspace", env: PATH_ENV })).exitCode,
      ).toBe(0);
    });
  }
});

describe("KubernetesDriver: idle reaping", () => {
  it("deletes a pod idle for the idle timeout, never one running a command; the next use starts cold", async () => {
    const double = await startDouble();
    const driver = await driverFor(double, { idleTimeoutMs: 1_500, reapIntervalMs: 100 });
    const busyKey = { userId: "busy" };
    const idleKey = { userId: "idle" };
    const busy = await driver.ensureSandbox(busyKey);
    const idle = await driver.ensureSandbox(idleKey);
    await writeFile(join(double.volumeDir(NS, driver.podName(idleKey), "workspace")!, "clone.txt"), "repo");
    expect(await driver.exists(idle, "/workspace/clone.txt")).toBe(true);
    const secs = uniqueSleepSeconds();
    const running = await driver.exec(busy, { argv: ["sleep", secs], cwd: "/workspace", env: PATH_ENV });

    const names = () =>
      double
        .pods(NS)
        .filter((p) => !p.metadata?.deletionTimestamp)
        .map((p) => p.metadata?.name);
    expect(await eventually(async () => !names().includes(driver.podName(idleKey)), 6_000)).toBe(true);
    // The pod with a running command stays, long past the timeout.
    await new Promise((r) => setTimeout(r, 1_000));
    expect(names()).toContain(driver.podName(busyKey));
    await running.kill();
    await running.result;
    expect(await eventually(async () => !names().includes(driver.podName(busyKey)), 6_000)).toBe(true);

    // Cold start: a new pod, an empty workspace.
    await driver.ensureSandbox(idleKey);
    expect(await driver.exists(idle, "/workspace/clone.txt")).toBe(false);
    expect(await readSandboxFile(driver, idle, "/workspace/clone.txt")).toBeUndefined();
  });

  it("counts pods found at start-up as used then, and reaps them after the timeout", async () => {
    const double = await startDouble();
    const before = await driverFor(double, { idleTimeoutMs: 60_000 });
    await before.ensureSandbox({ userId: "orphan" });
    await before.close();
    const after = await driverFor(double, { idleTimeoutMs: 1_000, reapIntervalMs: 60_000 });
    expect(await after.reapIdle()).toEqual([]);
    await new Promise((r) => setTimeout(r, 1_100));
    expect(await after.reapIdle()).toEqual([after.podName({ userId: "orphan" })]);
  });
});
