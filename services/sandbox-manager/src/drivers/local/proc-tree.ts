import { readdir, readFile } from "node:fs/promises";

/**
 * Process trees read from the host's /proc. A pid alone can be reused between the moment
 * we look and the moment we signal, so every process is remembered with its start time and
 * only signalled while that still matches.
 */
export interface ProcInfo {
  pid: number;
  ppid: number;
  /** Field 22 of /proc/<pid>/stat (clock ticks since boot): with the pid, a unique identity. */
  start: string;
  /** One-letter state; Z and X are dead (a zombie holds no resources but its pid). */
  state: string;
}

/** Parses /proc/<pid>/stat; undefined when the process is gone. */
export async function readProc(pid: number): Promise<ProcInfo | undefined> {
  let stat: string;
  try {
    stat = await readFile(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // The command name (field 2) is in parentheses and may itself contain spaces or ")".
  const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const state = rest[0];
  const ppid = Number(rest[1]);
  const start = rest[19];
  if (state === undefined || start === undefined || !Number.isInteger(ppid)) return undefined;
  return { pid, ppid, start, state };
}

export async function snapshotProcs(): Promise<ProcInfo[]> {
  const pids = (await readdir("/proc")).filter((name) => /^\d+$/.test(name)).map(Number);
  const infos = await Promise.all(pids.map(readProc));
  return infos.filter((p): p is ProcInfo => p !== undefined);
}

/** The process `root` and all its descendants (by parent pid), root first. */
export async function processTree(root: number): Promise<ProcInfo[]> {
  const procs = await snapshotProcs();
  const children = new Map<number, ProcInfo[]>();
  for (const p of procs) {
    const list = children.get(p.ppid);
    if (list) list.push(p);
    else children.set(p.ppid, [p]);
  }
  const rootInfo = procs.find((p) => p.pid === root);
  if (!rootInfo) return [];
  const tree: ProcInfo[] = [rootInfo];
  for (let i = 0; i < tree.length; i++) {
    for (const child of children.get(tree[i]!.pid) ?? []) tree.push(child);
  }
  return tree;
}

/** Whether this very process (same pid and start time) is still alive (not a zombie). */
export async function isAlive(p: ProcInfo): Promise<boolean> {
  const now = await readProc(p.pid);
  return now !== undefined && now.start === p.start && now.state !== "Z" && now.state !== "X";
}

/** SIGKILL to a pid (or, negative, a process group); "no such process" counts as done. */
export function sendKill(target: number): boolean {
  return sendSignal(target, "SIGKILL");
}

function sendSignal(target: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(target, signal);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "ESRCH";
  }
}

/**
 * Stops the process, its group when `group`, and all its descendants with SIGSTOP, looking
 * again until no new one shows up: a stopped process cannot fork, so the tree returned
 * (root first) is complete, and no parent can die and orphan a child before it is killed.
 */
export async function freezeTree(root: number, opts: { group: boolean }): Promise<ProcInfo[]> {
  sendSignal(root, "SIGSTOP");
  if (opts.group) sendSignal(-root, "SIGSTOP");
  await waitStopped([root]);
  const seen = new Map<number, ProcInfo>();
  for (let round = 0; round < 50; round++) {
    const fresh: number[] = [];
    for (const p of await processTree(root)) {
      if (seen.has(p.pid)) continue;
      seen.set(p.pid, p);
      sendSignal(p.pid, "SIGSTOP");
      fresh.push(p.pid);
    }
    if (fresh.length === 0) break;
    await waitStopped(fresh);
  }
  return [...seen.values()];
}

/**
 * kill() returns once a signal is queued, not once it took effect: a process caught in
 * fork() or clone() finishes it first. Only once it shows as stopped is its list of
 * children final (measured: without this wait, bwrap's child was sometimes missed).
 */
async function waitStopped(pids: number[], timeoutMs = 1_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let pending = pids;
  while (pending.length > 0 && Date.now() < deadline) {
    const states = await Promise.all(pending.map(readProc));
    pending = pending.filter((_, i) => {
      const state = states[i]?.state;
      return state !== undefined && !["T", "t", "Z", "X"].includes(state);
    });
    if (pending.length > 0) await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/** Waits until none of `procs` is alive, up to `timeoutMs`; returns those still alive. */
export async function waitGone(procs: ProcInfo[], timeoutMs: number): Promise<ProcInfo[]> {
  const deadline = Date.now() + timeoutMs;
  let alive = procs;
  for (;;) {
    const flags = await Promise.all(alive.map(isAlive));
    alive = alive.filter((_, i) => flags[i]);
    if (alive.length === 0 || Date.now() >= deadline) return alive;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
