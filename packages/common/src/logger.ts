import { type DestinationStream, type Logger, pino } from "pino";

export type { Logger };

/**
 * Keys whose values never reach a log line, wherever they appear in a logged object.
 * Tokens, secrets, env values and prompts are redacted; code must still avoid logging them.
 */
export const REDACTED_KEYS = [
  "authorization",
  "token",
  "ticket",
  "githubToken",
  "gitToken",
  "kiloToken",
  "password",
  "secret",
  "secrets",
  "encryptedSecrets",
  "envVars",
  "env",
  "headers",
  "prompt",
  "privateKey",
  "apiKey",
  "x-internal-api-key",
] as const;

const redactPaths = REDACTED_KEYS.flatMap((k) => {
  const key = /^[A-Za-z_$][\w$]*$/.test(k) ? k : `["${k}"]`;
  const dot = key.startsWith("[") ? key : `.${key}`;
  return [key, `*${dot}`, `*.*${dot}`];
});

export interface LoggerOptions {
  service: string;
  level?: string;
  /** Where lines go; stdout by default. Tests pass a stream they can read. */
  destination?: DestinationStream;
}

export function createLogger(opts: LoggerOptions): Logger {
  return pino(
    {
      name: opts.service,
      level: opts.level ?? "info",
      redact: { paths: redactPaths, censor: "[redacted]" },
      base: { service: opts.service },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    opts.destination ?? pino.destination(1),
  );
}
