/**
 * Makes sure the real services the tests need are installed and running, installing them
 * on a fresh machine (see docs/testing.md). Idempotent and quick when all is there.
 *
 *   PostgreSQL 15: apt package `postgresql`, the Debian cluster 15/main on 127.0.0.1:5432,
 *   user postgres with password postgres (TEST_DATABASE_URL overrides all of this).
 *   nats-server 2.12 (JetStream): built once with `go install` into the tools cache
 *   (tests start their own servers on free ports; Debian's 2.9 is too old).
 *   bubblewrap: apt package `bubblewrap`, for the local sandbox driver.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

export const NATS_SERVER_VERSION = "v2.12.1";
/** Where tools built for the project are kept between runs. */
export const TOOLS_DIR = join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "kilo-cloud", "bin");

const log = (msg: string) => console.error(`[ensure-services] ${msg}`);

function run(cmd: string, args: string[], opts: { quiet?: boolean } = {}): void {
  execFileSync(cmd, args, { stdio: opts.quiet ? "ignore" : ["ignore", "inherit", "inherit"] });
}

function ok(cmd: string, args: string[]): boolean {
  return spawnSync(cmd, args, { stdio: "ignore" }).status === 0;
}

let aptUpdated = false;
function aptInstall(...pkgs: string[]): void {
  if (process.getuid?.() !== 0) {
    throw new Error(
      `missing ${pkgs.join(", ")}: install them (apt-get install -y ${pkgs.join(" ")}) or run as root`,
    );
  }
  if (!aptUpdated) {
    log("apt-get update");
    run("apt-get", ["update", "-q"], { quiet: true });
    aptUpdated = true;
  }
  log(`apt-get install ${pkgs.join(" ")}`);
  execFileSync("apt-get", ["install", "-y", "-q", "--no-install-recommends", ...pkgs], {
    stdio: ["ignore", "ignore", "inherit"],
    env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
  });
}

function postgresVersion(): string | undefined {
  if (!existsSync("/usr/lib/postgresql")) return undefined;
  return readdirSync("/usr/lib/postgresql").find((v) => existsSync(`/usr/lib/postgresql/${v}/bin/postgres`));
}

export function ensurePostgres(): void {
  if (process.env.TEST_DATABASE_URL) return;
  if (ok("pg_isready", ["-q", "-h", "127.0.0.1", "-p", "5432"]) && canLogin()) return;
  let version = postgresVersion();
  if (!version) {
    aptInstall("postgresql");
    version = postgresVersion();
    if (!version) throw new Error("postgresql installed but no server binary found");
  }
  if (!ok("pg_isready", ["-q", "-h", "127.0.0.1", "-p", "5432"])) {
    const clusters = execFileSync("pg_lsclusters", ["-h"], { encoding: "utf8" });
    if (!clusters.split("\n").some((l) => l.startsWith(`${version} main`))) {
      log(`creating cluster ${version}/main`);
      run("pg_createcluster", [version, "main"]);
    }
    log(`starting PostgreSQL ${version}/main`);
    run("pg_ctlcluster", ["--skip-systemctl-redirect", version, "main", "start"]);
    for (let i = 0; i < 50 && !ok("pg_isready", ["-q", "-h", "127.0.0.1", "-p", "5432"]); i++) {
      execFileSync("sleep", ["0.2"]);
    }
  }
  if (!canLogin()) {
    log("setting the test password of role postgres");
    run("runuser", ["-u", "postgres", "--", "psql", "-q", "-c", "ALTER USER postgres PASSWORD 'postgres'"]);
  }
  if (!canLogin()) throw new Error("cannot log in to PostgreSQL at 127.0.0.1:5432 as postgres/postgres");
}

function canLogin(): boolean {
  return (
    spawnSync("psql", ["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-tAc", "select 1"], {
      stdio: "ignore",
      env: { ...process.env, PGPASSWORD: "postgres", PGCONNECT_TIMEOUT: "3" },
    }).status === 0
  );
}

/** Builds nats-server into TOOLS_DIR unless that version is already there. */
export function ensureNatsServer(): string {
  if (process.env.NATS_SERVER_BIN) return process.env.NATS_SERVER_BIN;
  const bin = join(TOOLS_DIR, "nats-server");
  const version = spawnSync(bin, ["--version"], { encoding: "utf8" }).stdout ?? "";
  if (version.includes(NATS_SERVER_VERSION)) return bin;
  if (spawnSync("go", ["version"], { stdio: "ignore" }).status !== 0) {
    throw new Error("Go is needed to build nats-server (go install); or set NATS_SERVER_BIN");
  }
  log(`building nats-server ${NATS_SERVER_VERSION} (go install, once)`);
  execFileSync("go", ["install", `github.com/nats-io/nats-server/v2@${NATS_SERVER_VERSION}`], {
    stdio: ["ignore", "ignore", "inherit"],
    env: { ...process.env, GOBIN: TOOLS_DIR, CGO_ENABLED: "0" },
    cwd: homedir(),
  });
  return bin;
}

/** bubblewrap, and socat (the bridge to the egress proxy inside each fenced sandbox). */
export function ensureBubblewrap(): void {
  if (!ok("bwrap", ["--version"])) aptInstall("bubblewrap");
  if (!ok("socat", ["-V"])) aptInstall("socat");
}

export const HELM_VERSION = "v3.16.4";
/** Stamped as helm's own release build does (go install alone leaves "v3.16" and Kubernetes 1.20). */
const HELM_LDFLAGS = [
  `-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}`,
  "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1",
  "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=31",
  "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1",
  "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=31",
].join(" ");

/** Builds helm into TOOLS_DIR unless that very build is already there (for the chart tests). */
export function ensureHelm(): string {
  if (process.env.HELM_BIN) return process.env.HELM_BIN;
  const bin = join(TOOLS_DIR, "helm");
  const build = spawnSync("go", ["version", "-m", bin], { encoding: "utf8" }).stdout ?? "";
  if (build.includes(`helm.sh/helm/v3\t${HELM_VERSION}`) && build.includes(HELM_LDFLAGS)) return bin;
  if (spawnSync("go", ["version"], { stdio: "ignore" }).status !== 0) {
    throw new Error("Go is needed to build helm (go install); or set HELM_BIN");
  }
  log(`building helm ${HELM_VERSION} (go install, once)`);
  execFileSync("go", ["install", "-ldflags", HELM_LDFLAGS, `helm.sh/helm/v3/cmd/helm@${HELM_VERSION}`], {
    stdio: ["ignore", "ignore", "inherit"],
    env: { ...process.env, GOBIN: TOOLS_DIR, CGO_ENABLED: "0" },
    cwd: homedir(),
  });
  return bin;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  try {
    ensurePostgres();
    ensureNatsServer();
    ensureBubblewrap();
    ensureHelm();
  } catch (err) {
    log(err instanceof Error ? err.message : String(err));
    process.exit(1);
  }
}
