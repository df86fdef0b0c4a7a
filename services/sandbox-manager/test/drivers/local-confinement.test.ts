import { execFile, spawnSync } from "node:child_process";
import { chmod, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { createServer as createTcpServer, type Server as TcpServer } from "node:net";
import { networkInterfaces, tmpdir } from "node:os";
import { join } from "node:path";
import { egressPolicy, parseEndpoints } from "@kilo-cloud/common";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Sandbox } from "../../src/drivers/driver.js";
import { execCollect } from "../../src/drivers/exec-utils.js";
import { RELAY_HOST } from "../../src/drivers/local/egress-proxy.js";
import { LocalDriver } from "../../src/drivers/local/local-driver.js";

/**
 * Attacks on a local sandbox from inside it, at the driver (what every exec of a session
 * gets): the host loader, the network fence and its allowlist, the provider relay, and the
 * resource limits. The same attacks through the public API are in
 * services/gateway/test/e2e/sandbox-attacks.test.ts.
 */

const PATH_ENV = { PATH: "/usr/local/bin:/usr/bin:/bin" };
const roots: string[] = [];

async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  roots.push(dir);
  return dir;
}

/** A TCP listener on host loopback counting the connections it gets (a stand-in for a service). */
async function hostListener(): Promise<{ server: TcpServer; port: number; connections: () => number }> {
  let count = 0;
  const server = createTcpServer((s) => {
    count++;
    s.destroy();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as { port: number }).port;
  return { server, port, connections: () => count };
}

/** One curl from inside the sandbox: `<exit code> <http code>`, through the proxy unless `direct`. */
function curlScript(url: string, opts: { direct?: boolean; tunnel?: boolean } = {}): string {
  const flags = [opts.direct ? "--noproxy '*'" : "", opts.tunnel ? "-p" : ""].join(" ");
  // A refused CONNECT shows in http_connect (the proxy's answer), not http_code.
  const code = opts.tunnel ? "%{http_connect}" : "%{http_code}";
  return `curl ${flags} -s -m 5 -o /dev/null -w '${code}' '${url}'; echo " $?"`;
}

afterAll(async () => {
  for (const dir of roots) await rm(dir, { recursive: true, force: true });
});

describe("a fenced local sandbox", { timeout: 120_000 }, () => {
  let driver: LocalDriver;
  let a: Sandbox;
  let b: Sandbox;
  let allowed: Server;
  let allowedPort: number;
  let allowedHits = 0;
  let provider: Server;
  let providerRequests: Array<{ url: string; auth: string | undefined }> = [];
  let service: Awaited<ReturnType<typeof hostListener>>;
  const KEY = `sk-operator-${process.pid}-secret`;

  const inA = (script: string) =>
    execCollect(driver, a, { argv: ["sh", "-c", script], cwd: "/workspace", env: PATH_ENV });

  beforeAll(async () => {
    allowed = createServer((_req, res) => {
      allowedHits++;
      res.end("allowed\n");
    });
    await new Promise<void>((r) => allowed.listen(0, "127.0.0.1", r));
    allowedPort = (allowed.address() as { port: number }).port;
    provider = createServer((req, res) => {
      providerRequests.push({ url: req.url ?? "", auth: req.headers.authorization });
      res.end('{"ok":true}\n');
    });
    await new Promise<void>((r) => provider.listen(0, "127.0.0.1", r));
    const providerPort = (provider.address() as { port: number }).port;
    service = await hostListener();
    driver = await LocalDriver.create({
      rootDir: await tempDir("confine-"),
      isolation: "bwrap",
      egressPolicy: egressPolicy({ allow: parseEndpoints(`127.0.0.1:${allowedPort}`) }),
      providerRelay: { baseUrl: `http://127.0.0.1:${providerPort}/v1`, apiKey: KEY },
      limits: { memoryBytes: 256 * 1024 ** 2, pids: 64 },
    });
    a = await driver.ensureSandbox({ orgId: "org-a", userId: "alice" });
    b = await driver.ensureSandbox({ orgId: "org-b", userId: "bob" });
  });
  afterAll(async () => {
    await driver?.close();
    allowed?.close();
    provider?.close();
    service?.server.close();
  });

  it("gives the session's loader variables to no host process (LD_DEBUG_OUTPUT would write on the host)", async () => {
    const hostDir = await tempDir("ld-trace-");
    await chmod(hostDir, 0o777);
    const env = { ...PATH_ENV, LD_DEBUG: "files", LD_DEBUG_OUTPUT: join(hostDir, "trace") };
    // The attack is real: a host process started with this environment writes there.
    spawnSync("/bin/true", { env });
    const control = await readdir(hostDir);
    expect(control.length).toBeGreaterThan(0);
    for (const f of control) await rm(join(hostDir, f));

    const r = await execCollect(driver, a, { argv: ["true"], cwd: "/workspace", env });
    expect(r.exitCode).toBe(0);
    expect(await readdir(hostDir)).toEqual([]);
  });

  it("reaches no host loopback port, directly or through the proxy, and sends it nothing", async () => {
    const ports = [service.port, 5432];
    for (const port of ports) {
      const direct = await inA(curlScript(`http://127.0.0.1:${port}/`, { direct: true }));
      expect(direct.stdout.trim(), `direct ${port}`).toBe("000 7");
      const proxied = await inA(curlScript(`http://127.0.0.1:${port}/`));
      expect(proxied.stdout.trim(), `proxied ${port}`).toBe("403 0");
      const tunnel = await inA(curlScript(`http://127.0.0.1:${port}/`, { tunnel: true }));
      expect(tunnel.stdout.trim(), `CONNECT ${port}`).toMatch(/^403 56$/);
      // A name that resolves to loopback is refused on the address it resolves to.
      const byName = await inA(
        `curl --noproxy '' -x http://127.0.0.1:3128 -s -m 5 -o /dev/null -w '%{http_code}' http://localhost:${port}/; echo " $?"`,
      );
      expect(byName.stdout.trim(), `localhost ${port}`).toBe("403 0");
    }
    expect(service.connections()).toBe(0);
  });

  it("reaches no metadata, private or host-interface address", async () => {
    const direct = await inA(curlScript("http://169.254.169.254/latest/meta-data/", { direct: true }));
    expect(direct.stdout.trim()).toBe("000 7");
    const hostAddresses = Object.values(networkInterfaces())
      .flat()
      .filter((i) => i && !i.internal && i.family === "IPv4")
      .map((i) => i!.address);
    for (const target of ["169.254.169.254", "10.0.0.1", "192.168.1.1", "100.64.0.1", ...hostAddresses]) {
      const r = await inA(curlScript(`http://${target}:${service.port}/`));
      expect(r.stdout.trim(), target).toBe("403 0");
    }
    expect(service.connections()).toBe(0);
  });

  it("reaches an operator-allowed endpoint through the fence", async () => {
    const before = allowedHits;
    const r = await inA(`curl -s -m 10 http://127.0.0.1:${allowedPort}/`);
    expect(r.stdout).toBe("allowed\n");
    expect(allowedHits).toBe(before + 1);
  });

  it("cannot reach a server another sandbox runs", async () => {
    const listener = await driver.exec(b, {
      argv: ["socat", "TCP-LISTEN:4555,bind=127.0.0.1,reuseaddr,fork", "SYSTEM:echo from-b"],
      cwd: "/workspace",
      env: PATH_ENV,
    });
    try {
      const fromB = await execCollect(driver, b, {
        argv: ["sh", "-c", "cat /proc/net/tcp"],
        cwd: "/workspace",
        env: PATH_ENV,
      });
      // Each exec has its own network namespace: not even another exec of B sees it.
      expect(fromB.stdout).not.toContain(":11CB");
      const direct = await inA(curlScript("http://127.0.0.1:4555/", { direct: true }));
      expect(direct.stdout.trim()).toBe("000 7");
      const proxied = await inA(curlScript("http://127.0.0.1:4555/"));
      expect(proxied.stdout.trim()).toBe("403 0");
    } finally {
      await listener.kill();
    }
  });

  it("relays the model provider with the operator's key, which is nowhere in the sandbox", async () => {
    providerRequests = [];
    const r = await inA(
      `curl -s -m 10 -H 'Authorization: Bearer forged' http://${RELAY_HOST}/chat/completions; ` +
        "for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < \"$f\"; done; env",
    );
    expect(r.stdout).toContain('{"ok":true}');
    expect(providerRequests).toEqual([{ url: "/v1/chat/completions", auth: `Bearer ${KEY}` }]);
    expect(r.stdout).not.toContain(KEY);
    expect(driver.providerRelayUrl).toBe(`http://${RELAY_HOST}`);
    // The relay does not tunnel anywhere (CONNECT to its name is refused).
    const tunnel = await inA(curlScript(`http://${RELAY_HOST}:443/`, { tunnel: true }));
    expect(tunnel.stdout.trim()).toBe("403 56");
  });

  it("stops a fork bomb at the sandbox's process limit; the host is unaffected", async () => {
    // The bomb runs in a subshell that dies at its first failed fork; the parent counts what
    // is running with builtins only (at the limit, even it cannot fork). The exec's end takes
    // the sleepers down with its pid namespace.
    const r = await inA(
      "(i=0; while [ $i -lt 500 ]; do sleep 60 & i=$((i+1)); done); set -- /proc/[0-9]*; echo running=$#",
    );
    const running = Number(/running=(\d+)/.exec(r.stdout)?.[1]);
    expect(running).toBeGreaterThan(5);
    expect(running).toBeLessThanOrEqual(64);
    expect(r.stderr).toMatch(/fork|Resource temporarily unavailable|Cannot/i);
    // The host still forks fine.
    expect(spawnSync("true").status).toBe(0);
  });

  it("stops an allocation beyond the sandbox's memory limit (cgroup v1 when writable)", async () => {
    if (driver.limitsMechanism !== "cgroup") {
      // Without writable cgroups only RLIMIT_NPROC holds (docs/architecture.md says so).
      expect(driver.limitsMechanism).toMatch(/rlimit|none/);
      return;
    }
    const r = await inA("head -c 400000000 /dev/zero | tail -c 400000000 > /dev/null; echo survived=$?");
    expect(r.stdout).not.toContain("survived=0");
    const failcnt = await readFile(join(driver.memoryCgroupOf(a)!, "memory.failcnt"), "utf8");
    expect(Number(failcnt)).toBeGreaterThan(0);
  });

  it.skipIf(process.getuid?.() !== 0)(
    "works when the manager itself is not root (unprivileged user namespaces): fenced, allowlist honoured",
    async () => {
      const root = await tempDir("unprivileged-");
      await chmod(root, 0o777);
      const fixture = join(import.meta.dirname, "fixtures", "unprivileged-manager.ts");
      // Not spawnSync: the allowed server lives in this process and must answer meanwhile.
      const r = await new Promise<{ stdout: string; stderr: string }>((resolve) => {
        execFile(
          "setpriv",
          [
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            process.execPath,
            "--import",
            "tsx",
            fixture,
            join(root, "r"),
            String(allowedPort),
          ],
          // Run from the package so its modules resolve; `nobody` has no HOME of its own.
          {
            cwd: join(import.meta.dirname, "..", ".."),
            env: { PATH: "/usr/bin:/bin", HOME: root },
            timeout: 60_000,
          },
          (_err, stdout, stderr) => resolve({ stdout, stderr }),
        );
      });
      const line = JSON.parse(r.stdout.trim().split("\n").at(-1) ?? "{}");
      expect(line.uid, r.stderr).toBe(65534);
      expect(line.r.stdout).toBe("1000\nallowed\n403\n");
    },
  );
});
