import { createHash } from "node:crypto";
import { mkdir, readlink, symlink } from "node:fs/promises";
import { join } from "node:path";

/**
 * Host users of sandboxes. When the manager runs as root, each sandbox's processes run as a
 * host uid/gid of their own (taken from a range no account uses) and its directories are
 * owned by it: a process that escaped its namespaces is still an unprivileged user who can
 * read no other sandbox's files and signal no other sandbox's processes, and RLIMIT_NPROC
 * (counted per uid) becomes a per-sandbox limit. When the manager is not root, sandboxes
 * run as the manager's own user (bubblewrap's unprivileged user namespace).
 *
 * A uid is claimed by a symlink `<root>/uids/<uid>` → the sandbox's directory name: creating
 * a symlink is atomic, so two sandboxes can never claim the same uid, and the claim
 * survives restarts.
 */
export interface UidRange {
  base: number;
  count: number;
}

export const DEFAULT_UID_RANGE: UidRange = Object.freeze({ base: 2_000_000_000, count: 1_000_000 });

export interface HostUser {
  uid: number;
  gid: number;
}

export class SandboxUsers {
  readonly #dir: string;
  readonly #range: UidRange;
  readonly #known = new Map<string, HostUser>();

  constructor(rootDir: string, range: UidRange) {
    this.#dir = join(rootDir, "uids");
    this.#range = range;
  }

  /** A uid for the probe run at start-up (the first of the range, never given to a sandbox). */
  get probeUser(): HostUser {
    return { uid: this.#range.base, gid: this.#range.base };
  }

  /** The host user of the sandbox whose directory is `dirName`, claiming one on first use. */
  async userOf(dirName: string): Promise<HostUser> {
    const known = this.#known.get(dirName);
    if (known) return known;
    await mkdir(this.#dir, { recursive: true, mode: 0o700 });
    const slots = this.#range.count - 1;
    const start =
      Number.parseInt(createHash("sha256").update(dirName).digest("hex").slice(0, 12), 16) % slots;
    for (let i = 0; i < slots; i++) {
      const uid = this.#range.base + 1 + ((start + i) % slots);
      const link = join(this.#dir, String(uid));
      try {
        await symlink(dirName, link);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
        if ((await readlink(link)) !== dirName) continue;
      }
      const user = { uid, gid: uid };
      this.#known.set(dirName, user);
      return user;
    }
    throw new Error("no free sandbox uid left in the configured range");
  }
}
