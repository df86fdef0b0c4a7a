/**
 * Helpers for reading configuration from the environment once, at start-up, with errors
 * that say which variable is wrong and why. Nothing outside a service's config.ts reads
 * process.env.
 */
export class ConfigError extends Error {
  override name = "ConfigError";
}

export type Env = Readonly<Record<string, string | undefined>>;

export class EnvReader {
  private readonly problems: string[] = [];
  constructor(private readonly env: Env) {}

  /** A string; `fallback` when unset or empty; a problem when unset and no fallback. */
  string(name: string, fallback?: string): string {
    const v = this.env[name];
    if (v !== undefined && v !== "") return v;
    if (fallback !== undefined) return fallback;
    this.problems.push(`${name} is required`);
    return "";
  }

  optional(name: string): string | undefined {
    const v = this.env[name];
    return v === undefined || v === "" ? undefined : v;
  }

  int(name: string, fallback: number, opts: { min?: number; max?: number } = {}): number {
    const raw = this.optional(name);
    if (raw === undefined) return fallback;
    const n = Number(raw);
    if (!Number.isInteger(n)) {
      this.problems.push(`${name} must be an integer (got "${raw}")`);
      return fallback;
    }
    if ((opts.min !== undefined && n < opts.min) || (opts.max !== undefined && n > opts.max)) {
      this.problems.push(`${name} must be between ${opts.min ?? "-∞"} and ${opts.max ?? "∞"} (got ${n})`);
      return fallback;
    }
    return n;
  }

  bool(name: string, fallback: boolean): boolean {
    const raw = this.optional(name);
    if (raw === undefined) return fallback;
    if (/^(1|true|yes|on)$/i.test(raw)) return true;
    if (/^(0|false|no|off)$/i.test(raw)) return false;
    this.problems.push(`${name} must be true or false (got "${raw}")`);
    return fallback;
  }

  oneOf<T extends string>(name: string, values: readonly T[], fallback: T): T {
    const raw = this.optional(name);
    if (raw === undefined) return fallback;
    if ((values as readonly string[]).includes(raw)) return raw as T;
    this.problems.push(`${name} must be one of ${values.join(", ")} (got "${raw}")`);
    return fallback;
  }

  url(name: string, fallback?: string): string {
    const v = this.string(name, fallback);
    if (v === "") return v;
    try {
      new URL(v);
    } catch {
      this.problems.push(`${name} must be a URL`);
    }
    return v;
  }

  /** Records a problem found by the caller's own checks. */
  problem(message: string): void {
    this.problems.push(message);
  }

  /** Throws one ConfigError listing every problem, so an operator fixes them in one go. */
  done(): void {
    if (this.problems.length > 0) {
      throw new ConfigError(`invalid configuration:\n  - ${this.problems.join("\n  - ")}`);
    }
  }
}

/** What a config loader does with an environment: the variables it reads, and the required ones missing. */
export interface EnvUsage {
  read: Set<string>;
  missing: string[];
  /** The loader's other complaints (invalid values), or its error if it was not a ConfigError. */
  problems: string[];
}

/**
 * Runs a loader (`load<Service>Config`) on `env` and records every variable it looks at:
 * the loaders declare what they read by reading it, so the Helm chart can be checked
 * against them both ways without a list kept by hand.
 */
export function envUsage(load: (env: Env) => unknown, env: Env): EnvUsage {
  const read = new Set<string>();
  const recording = new Proxy(env, {
    get(target, name, receiver) {
      if (typeof name === "string") read.add(name);
      return Reflect.get(target, name, receiver);
    },
  });
  const missing: string[] = [];
  const problems: string[] = [];
  try {
    load(recording);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    for (const line of err.message.split("\n").slice(1)) {
      const text = line.replace(/^\s*- /, "");
      const m = /^([A-Z0-9_]+) is required$/.exec(text);
      if (m?.[1]) missing.push(m[1]);
      else problems.push(text);
    }
  }
  return { read, missing, problems };
}
