/** Small statistics and formatting helpers shared by the benchmarks (no dependencies). */

export function median(xs: readonly number[]): number {
  return percentile(xs, 50);
}

/** Nearest-rank percentile (p in 0..100) of the values; NaN for none. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const sorted = [...xs].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))] as number;
}

export function mean(xs: readonly number[]): number {
  return xs.length === 0 ? Number.NaN : xs.reduce((a, b) => a + b, 0) / xs.length;
}

export function ratio(a: number, b: number): string {
  return Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? `${(a / b).toFixed(2)}×` : "n/a";
}

export function ms(x: number, digits = 0): string {
  return Number.isFinite(x) ? `${x.toFixed(digits)} ms` : "n/a";
}

export function secs(xMs: number): string {
  return Number.isFinite(xMs) ? `${(xMs / 1000).toFixed(2)} s` : "n/a";
}

export function kib(bytes: number): string {
  return Number.isFinite(bytes) ? `${(bytes / 1024).toFixed(1)} KiB` : "n/a";
}

export function mib(bytes: number): string {
  return Number.isFinite(bytes) ? `${(bytes / 2 ** 20).toFixed(0)} MiB` : "n/a";
}

export function rate(perSecond: number): string {
  if (!Number.isFinite(perSecond)) return "n/a";
  return perSecond >= 1000 ? `${(perSecond / 1000).toFixed(1)}k/s` : `${perSecond.toFixed(0)}/s`;
}

/** Prints a plain-text table (also valid Markdown) to stdout. */
export function printTable(headers: readonly string[], rows: readonly (readonly string[])[]): void {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]) =>
    `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ")} |`;
  console.log(line(headers));
  console.log(`| ${widths.map((w) => "-".repeat(w)).join(" | ")} |`);
  for (const r of rows) console.log(line(r));
}

/** A number from `--name=value` on argv or the environment variable, else the default. */
export function numberOption(name: string, envName: string, fallback: number): number {
  const raw = stringOption(name, envName);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0) throw new Error(`--${name} / ${envName} must be a non-negative number`);
  return n;
}

export function stringOption(name: string, envName: string): string | undefined {
  const flag = process.argv.slice(2).find((a) => a === `--${name}` || a.startsWith(`--${name}=`));
  if (flag !== undefined) return flag.includes("=") ? flag.slice(flag.indexOf("=") + 1) : "true";
  return process.env[envName];
}

export function flagOption(name: string, envName: string, fallback: boolean): boolean {
  if (process.argv.includes(`--no-${name}`)) return false;
  const raw = stringOption(name, envName);
  if (raw === undefined) return fallback;
  return !["0", "false", "no", "off"].includes(raw.toLowerCase());
}

/** Stderr progress line with the elapsed time since the process started. */
export function progress(msg: string): void {
  console.error(`[${(performance.now() / 1000).toFixed(1).padStart(6)} s] ${msg}`);
}
