import { access, mkdir, rmdir, writeFile } from "node:fs/promises";
import { join } from "node:path";

/**
 * Per-sandbox resource limits. Where the host's cgroup v1 controllers (memory, pids, cpu)
 * are writable by the manager, each sandbox gets `kilo-cloud/<scope>/<sandbox dir>` in each and
 * every exec's bwrap joins them before it does anything (it waits on its options pipe, which
 * is written only after the join), so everything in the sandbox is counted: memory (the
 * kernel's OOM killer acts inside the group), processes and threads, CPU time. Otherwise
 * only RLIMIT_NPROC holds (per host uid, so per sandbox when the manager is root and gives
 * each sandbox its own uid); memory and CPU are then unlimited (RLIMIT_AS breaks kilo, a
 * Bun binary that reserves large address ranges).
 */
export interface SandboxLimits {
  /** Memory of all processes of a sandbox (kilo alone needs ~800 MB). */
  memoryBytes: number;
  /** Processes and threads of a sandbox. */
  pids: number;
  /** CPU, in thousandths of a core (1000 = one core). */
  cpuMillicores: number;
}

export const DEFAULT_LIMITS: SandboxLimits = Object.freeze({
  memoryBytes: 2 * 1024 ** 3,
  pids: 1024,
  cpuMillicores: 2000,
});

const CGROUP_ROOT = "/sys/fs/cgroup";
const CONTROLLERS = ["memory", "pids", "cpu"] as const;
const PARENT = "kilo-cloud";
const CFS_PERIOD_US = 100_000;

export class CgroupLimits {
  readonly #limits: SandboxLimits;
  readonly #scope: string;
  readonly #ready = new Map<string, Promise<string[]>>();

  private constructor(limits: SandboxLimits, scope: string) {
    this.#limits = limits;
    this.#scope = scope;
  }

  /**
   * The v1 cgroup limiter when memory, pids and cpu are all writable here; undefined
   * otherwise. `scope` (e.g. a hash of the sandbox root) keeps managers on one host apart:
   * groups are `kilo-cloud/<scope>/<sandbox dir>`.
   */
  static async detect(limits: SandboxLimits, scope: string): Promise<CgroupLimits | undefined> {
    try {
      for (const c of CONTROLLERS) {
        const dir = join(CGROUP_ROOT, c, PARENT, scope);
        await mkdir(dir, { recursive: true });
        await access(join(dir, "cgroup.procs"), 2);
      }
      return new CgroupLimits(limits, scope);
    } catch {
      return undefined;
    }
  }

  /** The group of a sandbox in one controller (for operators and tests). */
  groupDir(controller: (typeof CONTROLLERS)[number], sandboxDirName: string): string {
    return join(CGROUP_ROOT, controller, PARENT, this.#scope, sandboxDirName);
  }

  /** Moves `pid` into the sandbox's groups (created with the limits on first use, or again if removed). */
  async join(sandboxDirName: string, pid: number): Promise<void> {
    try {
      await this.#join(sandboxDirName, pid);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      this.#ready.delete(sandboxDirName);
      await this.#join(sandboxDirName, pid);
    }
  }

  async #join(sandboxDirName: string, pid: number): Promise<void> {
    let ready = this.#ready.get(sandboxDirName);
    if (!ready) {
      ready = this.#create(sandboxDirName);
      this.#ready.set(sandboxDirName, ready);
      ready.catch(() => this.#ready.delete(sandboxDirName));
    }
    // In parallel: each move waits for an RCU grace period (10-60 ms on a loaded host).
    await Promise.all((await ready).map((dir) => writeFile(join(dir, "cgroup.procs"), String(pid))));
  }

  /** Removes this manager's groups that are empty now (busy ones stay). */
  async close(): Promise<void> {
    const all = await Promise.all([...this.#ready.values()].map((p) => p.catch(() => [] as string[])));
    this.#ready.clear();
    for (const dir of all.flat()) await rmdir(dir).catch(() => {});
    for (const c of CONTROLLERS) await rmdir(join(CGROUP_ROOT, c, PARENT, this.#scope)).catch(() => {});
  }

  async #create(name: string): Promise<string[]> {
    const dirs = CONTROLLERS.map((c) => this.groupDir(c, name));
    for (const d of dirs) await mkdir(d, { recursive: true });
    const [memory, pids, cpu] = dirs as [string, string, string];
    await writeFile(join(memory, "memory.limit_in_bytes"), String(this.#limits.memoryBytes));
    await writeFile(join(pids, "pids.max"), String(this.#limits.pids));
    await writeFile(join(cpu, "cpu.cfs_period_us"), String(CFS_PERIOD_US));
    await writeFile(
      join(cpu, "cpu.cfs_quota_us"),
      String(Math.round((this.#limits.cpuMillicores / 1000) * CFS_PERIOD_US)),
    );
    return dirs;
  }
}
