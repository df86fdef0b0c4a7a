import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

/** A mistake in how the command was called: one line and exit code 2. */
export class UsageError extends Error {}

export interface CliConfig {
  url: string;
  token?: string | undefined;
  internalKey?: string | undefined;
}

/** Flags win over the environment, which wins over the first config file found. */
export function loadConfig(
  flags: { url?: string; token?: string; "internal-key"?: string; config?: string },
  env: NodeJS.ProcessEnv,
): CliConfig {
  const candidates = flags.config
    ? [flags.config]
    : [
        ...(env.KILO_CLOUD_DATA_DIR ? [join(env.KILO_CLOUD_DATA_DIR, "cli.json")] : []),
        join(process.cwd(), ".kilo-cloud", "cli.json"),
        join(env.XDG_CONFIG_HOME ?? join(homedir(), ".config"), "kilo-cloud", "config.json"),
      ];
  let file: Partial<CliConfig> = {};
  for (const path of candidates) {
    if (!existsSync(path)) {
      if (flags.config) throw new UsageError(`config file ${path} does not exist`);
      continue;
    }
    try {
      file = JSON.parse(readFileSync(path, "utf8")) as Partial<CliConfig>;
    } catch {
      throw new UsageError(`config file ${path} is not valid JSON`);
    }
    break;
  }
  return {
    url: flags.url ?? env.KILO_CLOUD_URL ?? file.url ?? "http://127.0.0.1:8080",
    token: flags.token ?? env.KILO_TOKEN ?? file.token,
    internalKey: flags["internal-key"] ?? env.KILO_INTERNAL_KEY ?? file.internalKey,
  };
}
