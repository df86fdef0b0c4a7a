import { lstat, readdir, readlink } from "node:fs/promises";

/**
 * The bubblewrap command line of one exec. Only paths and flags go on it: argv is visible
 * to every user of the host in `ps`, so the environment is handed to bwrap as its own
 * environment by spawn (bwrap passes it through to the command unchanged; `--clearenv`
 * would wipe it, and spawn already replaces the manager's environment entirely).
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
}

/**
 * The full bwrap argv (without the bwrap program itself). Order matters: mounts are made
 * in order, and the read-only remounts come after every mount point they contain.
 */
export function bwrapArgs(layout: HostLayout, exec: BwrapExecOptions): string[] {
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
    // The network is shared on purpose: kilo must reach the model gateway, which may be on
    // the host's loopback. Cutting it needs a way in for the gateway (e.g. a proxy on a Unix
    // socket bound into the sandbox).
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
    ...layout.localBinOps,
    ...layout.extraOps,
    ...(layout.localBinOps.length > 0 ? ["--remount-ro", "/usr/local/bin"] : []),
    // The root itself (and so /etc) is bwrap's tmpfs: read-only once everything is mounted.
    "--remount-ro",
    "/",
    "--chdir",
    exec.cwd,
    "--",
    ...exec.argv,
  ];
}
