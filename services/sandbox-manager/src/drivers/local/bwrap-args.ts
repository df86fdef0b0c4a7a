import { lstat, readdir, readlink } from "node:fs/promises";

/**
 * The bubblewrap invocation of one exec. bwrap is a host process: the session's environment
 * must never be its environment (the host's loader would honour LD_PRELOAD, LD_AUDIT, … of
 * a session before any namespace exists). So bwrap starts with a fixed environment, and
 * every option, the session's variables included (`--clearenv` then `--setenv`), is read
 * from a pipe (`--args 3`): nothing of it is on the host's argv (visible in `ps`) or in a
 * host process's environment. Only the command itself is on argv.
 */

/** The uid and gid the sandboxed processes have inside their user namespace. */
export const SANDBOX_UID = 1000;
export const SANDBOX_GID = 1000;

export const KILO_SANDBOX_PATH = "/usr/local/bin/kilo";

/** Host /etc entries a program may need; nothing with secrets (shadow, sudoers, ssh keys). */
const ETC_ENTRIES = [
  "resolv.conf",
  "hosts",
  "nsswitch.conf",
  "host.conf",
  "gai.conf",
  "services",
  "protocols",
  "localtime",
  "ld.so.cache",
  "ld.so.conf",
  "ld.so.conf.d",
  "ssl",
  "ca-certificates",
  "ca-certificates.conf",
  "alternatives",
  "gitconfig",
] as const;

/** Host directories shown read-only at the same place (or as the symlinks they are). */
const SYSTEM_DIRS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] as const;

/** What is the same for every exec of a driver; computed once from the host. */
export interface HostLayout {
  /** `--ro-bind`/`--symlink` ops for /usr, /bin, /lib, ... as they exist on this host. */
  systemOps: string[];
  /** Ops making /usr/local/bin a tmpfs holding the host's entries and the kilo binary. */
  localBinOps: string[];
  /** Ops for the configured extra read-only binds. */
  extraOps: string[];
  /** Generated /etc/passwd and /etc/group, so the sandbox user has a name and nothing of the host's accounts shows. */
  passwdFile: string;
  groupFile: string;
}

export interface HostLayoutOptions {
  passwdFile: string;
  groupFile: string;
  kiloBinary?: string | undefined;
  extraReadOnlyBinds?: { host: string; sandbox: string }[] | undefined;
}

async function lstatOrUndefined(path: string) {
  try {
    return await lstat(path);
  } catch {
    return undefined;
  }
}

export async function readHostLayout(opts: HostLayoutOptions): Promise<HostLayout> {
  const systemOps: string[] = [];
  for (const dir of SYSTEM_DIRS) {
    const st = await lstatOrUndefined(dir);
    // On merged-/usr systems (Debian 12, Ubuntu, Fedora) /bin, /lib, ... are symlinks into /usr.
    if (st?.isSymbolicLink()) systemOps.push("--symlink", await readlink(dir), dir);
    else if (st?.isDirectory()) systemOps.push("--ro-bind", dir, dir);
  }

  const localBinOps: string[] = [];
  if (opts.kiloBinary !== undefined) {
    // /usr is read-only inside, so the binary needs a mount point: /usr/local/bin becomes a
    // tmpfs holding the host's own entries (read-only) and the binary, then is made read-only.
    const st = await lstatOrUndefined("/usr/local/bin");
    if (!st?.isDirectory()) {
      throw new Error("kiloBinary needs /usr/local/bin to exist on the host (mkdir -p /usr/local/bin)");
    }
    localBinOps.push("--tmpfs", "/usr/local/bin");
    for (const name of (await readdir("/usr/local/bin")).sort()) {
      if (name === "kilo") continue;
      const host = `/usr/local/bin/${name}`;
      const entry = await lstatOrUndefined(host);
      if (entry?.isSymbolicLink()) localBinOps.push("--symlink", await readlink(host), host);
      else if (entry) localBinOps.push("--ro-bind-try", host, host);
    }
    localBinOps.push("--ro-bind", opts.kiloBinary, KILO_SANDBOX_PATH);
  }

  const extraOps: string[] = [];
  for (const bind of opts.extraReadOnlyBinds ?? []) {
    if (!bind.sandbox.startsWith("/") || bind.sandbox.split("/").some((s) => s === "." || s === "..")) {
      throw new Error(
        `extraReadOnlyBinds: sandbox path must be absolute and plain: ${JSON.stringify(bind.sandbox)}`,
      );
    }
    if (/^\/(workspace|home|proc|dev|tmp)(\/|$)/.test(bind.sandbox)) {
      throw new Error(`extraReadOnlyBinds: ${bind.sandbox} is managed by the driver`);
    }
    if (!(await lstatOrUndefined(bind.host))) {
      throw new Error(`extraReadOnlyBinds: ${bind.host} does not exist on the host`);
    }
    extraOps.push("--ro-bind", bind.host, bind.sandbox);
  }

  return { systemOps, localBinOps, extraOps, passwdFile: opts.passwdFile, groupFile: opts.groupFile };
}

export interface BwrapExecOptions {
  sandboxDir: string;
  cwd: string;
  argv: string[];
  /** The whole environment of the command, set inside the sandbox. */
  env: Record<string, string>;
  /**
   * Host directory holding the egress proxy's socket, shown read-only at EGRESS_DIR; the
   * sandbox then has its own network namespace whose only way out is that socket.
   */
  egressDir?: string | undefined;
}

/** The fixed environment of bwrap itself (a host process). */
export const BWRAP_HOST_ENV: Readonly<Record<string, string>> = Object.freeze({ PATH: "/usr/bin:/bin" });

/** Where the proxy socket directory is inside the sandbox. */
export const EGRESS_DIR = "/run/kilo-cloud";
/** The in-sandbox proxy address (a bridge to the socket, started in front of each command). */
export const EGRESS_PROXY_PORT = 3128;
export const EGRESS_PROXY_URL = `http://127.0.0.1:${EGRESS_PROXY_PORT}`;

/**
 * Runs in the sandbox before the command: a socat bridge from 127.0.0.1:3128 to the proxy
 * socket, detached (a subshell's child, reparented to bwrap's init) so a command that waits
 * for its children does not wait for it, then waits until it listens (0100007F:0C38 in
 * /proc/net/tcp, state 0A) and becomes the command.
 */
const BRIDGE_SCRIPT = `(socat TCP-LISTEN:${EGRESS_PROXY_PORT},bind=127.0.0.1,reuseaddr,fork UNIX-CONNECT:${EGRESS_DIR}/proxy.sock </dev/null >/dev/null 2>&1 &)
i=0
while ! grep -q ' 0100007F:0C38 00000000:0000 0A' /proc/net/tcp 2>/dev/null; do
  i=$((i + 1)); [ "$i" -gt 500 ] && break; sleep 0.01
done
exec "$@"`;

/** The variables that point every usual client (curl, git, npm, pip, Bun, Node) at the proxy. */
export function proxyEnv(): Record<string, string> {
  return {
    HTTP_PROXY: EGRESS_PROXY_URL,
    HTTPS_PROXY: EGRESS_PROXY_URL,
    http_proxy: EGRESS_PROXY_URL,
    https_proxy: EGRESS_PROXY_URL,
    ALL_PROXY: EGRESS_PROXY_URL,
    all_proxy: EGRESS_PROXY_URL,
    // `localhost` is the sandbox's own loopback; 127.0.0.1 goes through the proxy, which
    // refuses it unless an operator allowed an endpoint there.
    NO_PROXY: "localhost",
    no_proxy: "localhost",
  };
}

/** bwrap's argv: `--args 3`, then the command (with the network bridge in front when fenced). */
export function bwrapCommand(exec: Pick<BwrapExecOptions, "argv" | "egressDir">): string[] {
  const argv = exec.egressDir ? ["/bin/sh", "-c", BRIDGE_SCRIPT, "kc-net", ...exec.argv] : exec.argv;
  return ["--args", "3", "--", ...argv];
}

/** The options bwrap reads from fd 3, NUL-separated. */
export function encodeArgs(options: readonly string[]): Buffer {
  for (const o of options) {
    if (o.includes("\0")) throw new Error("a bwrap option contains a NUL byte");
  }
  return Buffer.from(options.map((o) => `${o}\0`).join(""), "utf8");
}

const ENV_NAME = /^[^=\0]+$/;

function envOps(env: Record<string, string>): string[] {
  const ops = ["--clearenv"];
  for (const [name, value] of Object.entries(env)) {
    if (!ENV_NAME.test(name)) throw new Error(`invalid environment variable name: ${JSON.stringify(name)}`);
    ops.push("--setenv", name, value);
  }
  return ops;
}

/**
 * The options of one exec (read by bwrap from fd 3; the command is on argv). Order
 * matters: mounts are made in order, and the read-only remounts come after every mount
 * point they contain.
 */
export function bwrapOptions(layout: HostLayout, exec: BwrapExecOptions): string[] {
  const fenced = exec.egressDir !== undefined;
  return [
    // A user namespace whose only uid/gid (1000 inside) is the caller's outside: no
    // capabilities, and files the sandbox writes are owned on the host by the manager.
    "--unshare-user",
    "--uid",
    String(SANDBOX_UID),
    "--gid",
    String(SANDBOX_GID),
    // Its own pids (killing bwrap kills the namespace's init, which takes everything in it
    // down, daemons included), System V IPC and hostname.
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--hostname",
    "sandbox",
    // Its own network (only a loopback): the way out is the egress proxy's socket.
    ...(fenced ? ["--unshare-net"] : []),
    "--cap-drop",
    "ALL",
    "--die-with-parent",
    // A new session: no controlling terminal to push keystrokes into (TIOCSTI).
    "--new-session",
    ...layout.systemOps,
    "--dir",
    "/etc",
    "--ro-bind",
    layout.passwdFile,
    "/etc/passwd",
    "--ro-bind",
    layout.groupFile,
    "/etc/group",
    ...ETC_ENTRIES.flatMap((name) => ["--ro-bind-try", `/etc/${name}`, `/etc/${name}`]),
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--tmpfs",
    "/tmp",
    "--bind",
    `${exec.sandboxDir}/workspace`,
    "/workspace",
    "--bind",
    `${exec.sandboxDir}/home`,
    "/home",
    ...(fenced ? ["--ro-bind", exec.egressDir!, EGRESS_DIR] : []),
    ...layout.localBinOps,
    ...layout.extraOps,
    ...(layout.localBinOps.length > 0 ? ["--remount-ro", "/usr/local/bin"] : []),
    // The root itself (and so /etc) is bwrap's tmpfs: read-only once everything is mounted.
    "--remount-ro",
    "/",
    "--chdir",
    exec.cwd,
    ...envOps(fenced ? { ...exec.env, ...proxyEnv() } : exec.env),
  ];
}
