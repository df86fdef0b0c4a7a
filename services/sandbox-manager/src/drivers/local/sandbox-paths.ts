import { createHash } from "node:crypto";
import { lchown, lstat, mkdir, realpath, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { isManagedPath } from "../driver.js";

/**
 * Where a sandbox lives on the host and how its paths map there. Sandbox ids contain
 * whatever users and orgs are called (emails, colons, slashes), so host paths only ever
 * use a hash of the id; sandbox paths are mapped below the sandbox's own directory and
 * every host-side file operation checks it has not been led outside by a symlink the
 * sandboxed code planted.
 */

/** The sandbox's directory name: the first 32 hex digits of sha256(id) (128 bits). */
export function sandboxDirName(id: string): string {
  return createHash("sha256").update(id, "utf8").digest("hex").slice(0, 32);
}

/** The top-level sandbox directories that are backed by host directories. */
const AREAS = ["workspace", "home"] as const;
type Area = (typeof AREAS)[number];

/**
 * Maps `/workspace[/...]` and `/home[/...]` to the host; undefined for any other path.
 * Throws on `.`/`..` segments, which could climb out of the sandbox directory on the host.
 */
export function toHostPath(sandboxDir: string, path: string): { host: string; areaRoot: string } | undefined {
  const area = AREAS.find((a) => path === `/${a}` || path.startsWith(`/${a}/`));
  if (!area) return undefined;
  if (path.split("/").some((seg) => seg === "." || seg === "..")) {
    throw new Error(`sandbox path must not contain "." or ".." segments: ${JSON.stringify(path)}`);
  }
  const areaRoot = join(sandboxDir, area);
  return { host: join(areaRoot, path.slice(area.length + 1)), areaRoot };
}

function managed(sandboxDir: string, path: string): { host: string; areaRoot: string; area: Area } {
  if (!isManagedPath(path)) {
    throw new Error(
      `not a path the driver manages (only below /workspace or /home): ${JSON.stringify(path)}`,
    );
  }
  const mapped = toHostPath(sandboxDir, path)!;
  return { ...mapped, area: path.startsWith("/workspace/") ? "workspace" : "home" };
}

function inside(real: string, root: string): boolean {
  return real === root || real.startsWith(`${root}/`);
}

/**
 * The real path of the host path's parent, when it exists and stays inside the area root;
 * undefined when it does not exist; throws when a symlink leads outside.
 */
async function realParent(host: string, areaRoot: string, path: string): Promise<string | undefined> {
  let real: string;
  try {
    real = await realpath(dirname(host));
  } catch (err) {
    if (
      (err as NodeJS.ErrnoException).code === "ENOENT" ||
      (err as NodeJS.ErrnoException).code === "ENOTDIR"
    ) {
      return undefined;
    }
    throw err;
  }
  if (!inside(real, areaRoot))
    throw new Error(`refusing ${JSON.stringify(path)}: it leads outside the sandbox`);
  return real;
}

/** Whether the entry exists (a symlink counts as an entry; it is not followed). */
export async function existsIn(sandboxDir: string, path: string): Promise<boolean> {
  const { host, areaRoot } = managed(sandboxDir, path);
  let parent: string | undefined;
  try {
    parent = await realParent(host, areaRoot, path);
  } catch {
    // A parent that leads outside does not exist as far as this sandbox is concerned.
    return false;
  }
  if (parent === undefined) return false;
  try {
    await lstat(join(parent, basename(host)));
    return true;
  } catch {
    return false;
  }
}

/**
 * Creates the directory and its parents one component at a time, refusing any component
 * that is not a real directory (a symlink planted by sandboxed code could point anywhere on
 * the host). A sandboxed process racing the manager could still swap a component between
 * the check and the next mkdir: this is best effort, a reason for the manager to create
 * what it needs before running untrusted code in it.
 */
export async function mkdirIn(
  sandboxDir: string,
  path: string,
  owner?: { uid: number; gid: number },
): Promise<void> {
  const { areaRoot, area } = managed(sandboxDir, path);
  const segments = path
    .slice(area.length + 2)
    .split("/")
    .filter((s) => s !== "");
  let current = areaRoot;
  for (const seg of segments) {
    current = join(current, seg);
    let created = true;
    try {
      await mkdir(current, { mode: 0o755 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      created = false;
    }
    const st = await lstat(current);
    if (!st.isDirectory()) {
      throw new Error(`cannot create ${JSON.stringify(path)}: a component exists and is not a directory`);
    }
    // Made by the manager (root): it belongs to the sandbox's own host user.
    if (created && owner) await lchown(current, owner.uid, owner.gid);
  }
}

/**
 * Removes the entry (recursively for a directory). The parent is resolved first and must
 * be inside the sandbox; the removal then goes through that real parent, so a symlinked
 * component cannot redirect it, and a symlink at the end is removed, never followed.
 */
export async function removeIn(sandboxDir: string, path: string): Promise<void> {
  const { host, areaRoot } = managed(sandboxDir, path);
  const parent = await realParent(host, areaRoot, path);
  if (parent === undefined) return;
  await rm(join(parent, basename(host)), { recursive: true, force: true });
}
