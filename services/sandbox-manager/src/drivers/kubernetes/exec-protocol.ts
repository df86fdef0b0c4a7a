import type { V1Status } from "@kubernetes/client-node";

/**
 * What runs inside a sandbox pod for one exec, and how its input and results are encoded.
 *
 * The command line of an exec travels in the URL of the API request
 * (`.../pods/<pod>/exec?command=...`), which the API server, the kubelet and audit logs may
 * record. So only the user's argv goes there (never interpreted by a shell: the wrapper
 * script below is a constant and every user value is a positional argument). The
 * environment (secrets, git credentials, model keys) and stdin (the prompt) travel inside
 * the exec's stdin stream instead, framed as
 *
 *     "<env bytes> <stdin bytes>\n" <env script> <stdin data>
 *
 * The wrapper reads the header with the shell's `read` (byte by byte, so it never reads
 * past the line) and each part with `head -c` (GNU head never reads past its count), which
 * also makes stdin's end explicit: with the v4 channel protocol a client cannot close
 * stdin without closing the whole exec, with v5 it can, and this works with both.
 *
 * The environment is a list of `export NAME='value'` lines `eval`ed by the wrapper after
 * `env -i` emptied the one the container runtime gives (PATH, HOSTNAME, ...): values are
 * single-quoted so nothing in them is expanded, and they live only in the memory of the
 * wrapper and then of the command (never on argv or on disk; on argv they would be visible
 * to every process of the pod, still only the sandbox user's own, but also in the exec
 * URL). The price: names must be shell identifiers, which the driver checks.
 *
 * Stdin is staged in a 0600 file on the pod's memory-backed /tmp, opened as the command's
 * stdin and unlinked before the command starts, so the command sees a regular end of file.
 *
 * The wrapper then prints `kc-exec <pid> <starttime>` as the first line of stdout (the
 * driver strips it): the pid and start time (field 22 of /proc/<pid>/stat) identify the
 * command, which the wrapper becomes with `exec`, so kill can find it later and never
 * signal a reused pid. The command leads its own process group: exec'd processes already
 * do with runc, which starts each in a new session; elsewhere the wrapper uses setsid.
 */

/** argv[0..] before the wrapper's own arguments; an absolute env so no PATH lookup is needed. */
const WRAPPER_PREFIX = ["/usr/bin/env", "-i", "/bin/sh", "-c"];

/** Exit status of the wrapper when it could not start the command (nothing was run). */
export const WRAPPER_FAILED = 125;

/** Where stdin is staged for a moment: on the pod's memory-backed /tmp. */
export const STAGING_DIR = "/tmp/.kc-exec";

export const EXEC_WRAPPER = `d=$1 cwd=$2
shift 2
fail() { echo "kc-exec: $*" >&2; exit ${WRAPPER_FAILED}; }
IFS=' ' read -r envlen inlen || fail "no input header"
case $envlen in ''|*[!0-9]*) fail "bad input header";; esac
case $inlen in ''|*[!0-9]*) fail "bad input header";; esac
envs=$(head -c "$envlen") || fail "cannot read the environment"
if [ "$inlen" -gt 0 ]; then
  f=$d/in.$$
  (umask 077 && mkdir -p "$d" && head -c "$inlen" > "$f") || fail "cannot stage stdin"
  exec < "$f"
  rm -f "$f"
else
  exec < /dev/null
fi
cd "$cwd" 2>/dev/null || fail "cwd $cwd is not a directory in the sandbox"
unset OLDPWD
me() { l=; read -r l 2>/dev/null < "/proc/$$/stat" || return 1; set -f; set -- \${l##*) }; set +f; pg=$3 st=\${20}; }
me || fail "cannot read /proc/$$/stat"
if [ "$pg" != "$$" ]; then
  sid=$(command -v setsid) || fail "setsid is missing"
  set -- "$sid" "$@"
fi
echo "kc-exec $$ $st"
eval "$envs"
exec "$@"
`;

/**
 * Kills a command and everything it started: argv `pid starttime`. Everything is stopped
 * first (SIGSTOP), looking again until no new process shows up, so nothing can fork or be
 * orphaned while the tree is collected: the command, its descendants by parent pid
 * (setsid'd ones included) and whatever is left in its process group. Then SIGKILL to all,
 * and a wait of up to 5 s. Prints `killed <pid>` or `failed <pid>` per process. A daemon
 * that double-forked before the kill is reparented to the pod's PID 1 and escapes: the
 * pod has no pid namespace per exec (the idle reaper ends it with the pod).
 */
export const KILL_SCRIPT = `root=$1 start=$2
info() { l=; read -r l 2>/dev/null < "/proc/$1/stat" || return 1; set -f; set -- \${l##*) }; set +f; s=$1 pp=$2 pg=$3 st=\${20}; }
info "$root" && [ "$st" = "$start" ] || exit 0
kill -STOP "$root" 2>/dev/null
tree=" $root:$st "
quiet=0
while [ "$quiet" -lt 2 ]; do
  new=
  for e in /proc/[0-9]*; do
    p=\${e#/proc/}
    case $tree in *" $p:"*) continue;; esac
    info "$p" || continue
    case $tree in *" $pp:"*) ;; *) [ "$pg" = "$root" ] || continue;; esac
    kill -STOP "$p" 2>/dev/null
    tree="$tree$p:$st "
    new=1
  done
  if [ -n "$new" ]; then quiet=0; else quiet=$((quiet + 1)); sleep 0.02; fi
done
kill -KILL -"$root" 2>/dev/null
for e in $tree; do
  info "\${e%%:*}" && [ "$st" = "\${e#*:}" ] && kill -KILL "\${e%%:*}" 2>/dev/null
done
i=0
while :; do
  alive=
  for e in $tree; do
    if info "\${e%%:*}" && [ "$st" = "\${e#*:}" ] && [ "$s" != Z ] && [ "$s" != X ]; then alive="$alive \${e%%:*}"; fi
  done
  [ -z "$alive" ] && break
  i=$((i + 1))
  [ "$i" -ge 100 ] && break
  sleep 0.05
done
for e in $tree; do
  p=\${e%%:*}
  case " $alive " in *" $p "*) echo "failed $p";; *) echo "killed $p";; esac
done
`;

/** Whether a path exists (a dangling symlink counts): exit 0 or 1. */
export const EXISTS_SCRIPT = '[ -e "$1" ] || [ -L "$1" ]';

/** The argv of an exec of `argv` in `cwd` through the wrapper. */
export function wrapperArgv(cwd: string, argv: readonly string[]): string[] {
  return [...WRAPPER_PREFIX, EXEC_WRAPPER, "kc-exec", STAGING_DIR, cwd, ...argv];
}

export function killArgv(pid: number, start: string): string[] {
  return ["/bin/sh", "-c", KILL_SCRIPT, "kc-kill", String(pid), start];
}

export function existsArgv(path: string): string[] {
  return ["/bin/sh", "-c", EXISTS_SCRIPT, "kc-exists", path];
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** A value in single quotes: nothing inside is special to the shell but the quote itself. */
export function shellQuote(value: string): string {
  return `'${value.replace(/'/g, "'\\''")}'`;
}

/** The stdin stream of a wrapped exec: header, environment script, stdin data. */
export function encodeExecInput(env: Record<string, string>, stdin?: string | Uint8Array): Buffer {
  const lines: string[] = [];
  for (const [name, value] of Object.entries(env)) {
    if (!ENV_NAME.test(name)) {
      throw new Error(`environment variable names must be shell identifiers: ${JSON.stringify(name)}`);
    }
    if (value.includes("\0")) throw new Error(`environment variable ${name} contains a NUL byte`);
    lines.push(`export ${name}=${shellQuote(value)}\n`);
  }
  const envBytes = Buffer.from(lines.join(""), "utf8");
  const input = stdin === undefined ? Buffer.alloc(0) : Buffer.from(stdin);
  return Buffer.concat([Buffer.from(`${envBytes.length} ${input.length}\n`), envBytes, input]);
}

/** Parses the wrapper's first stdout line. */
export function parseStartLine(line: string): { pid: number; start: string } | undefined {
  const m = /^kc-exec (\d+) (\d+)$/.exec(line);
  return m ? { pid: Number(m[1]), start: m[2]! } : undefined;
}

export function parseKillOutput(text: string): { killed: string[]; failed: string[] } {
  const killed: string[] = [];
  const failed: string[] = [];
  for (const line of text.split("\n")) {
    const m = /^(killed|failed) (\d+)$/.exec(line.trim());
    if (m) (m[1] === "killed" ? killed : failed).push(`proc_${m[2]}`);
  }
  return { killed, failed };
}

/**
 * The exit code in the status the API server sends on the error channel (3) when an exec
 * ends: `Success`, or `Failure` with reason `NonZeroExitCode` and the code in a cause of
 * reason `ExitCode`. Any other failure is an error of the exec itself.
 */
export function exitCodeOf(status: V1Status): { exitCode: number } | { error: string } {
  if (status.status === "Success") return { exitCode: 0 };
  if (status.reason === "NonZeroExitCode") {
    const cause = status.details?.causes?.find((c) => c.reason === "ExitCode");
    const code = Number(cause?.message);
    if (Number.isInteger(code) && code >= 0) return { exitCode: code };
  }
  return { error: status.message ?? status.reason ?? "the exec failed" };
}
