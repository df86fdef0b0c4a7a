import { type Env, EnvReader, parseSealingKeys, type SealingKey } from "@kilo-cloud/common";

export interface SessionConfig {
  port: number;
  host: string;
  databaseUrl: string;
  sealingKeys: SealingKey[];
  /** The gateway's public key (PEM, Ed25519) for the service tokens it signs. */
  serviceTokenPublicKey: string;
  logLevel: string;
}

export function loadSessionConfig(env: Env): Readonly<SessionConfig> {
  const r = new EnvReader(env);
  const sealing = r.string("SESSION_SEALING_KEYS");
  let sealingKeys: SealingKey[] = [];
  if (sealing) {
    try {
      sealingKeys = parseSealingKeys(sealing);
    } catch (err) {
      r.problem(`SESSION_SEALING_KEYS: ${(err as Error).message}`);
    }
  }
  const config: SessionConfig = {
    port: r.int("PORT", 8081, { min: 0, max: 65535 }),
    host: r.string("HOST", "0.0.0.0"),
    databaseUrl: r.url("DATABASE_URL"),
    sealingKeys,
    serviceTokenPublicKey: r.string("SERVICE_TOKEN_PUBLIC_KEY").replace(/\\n/g, "\n"),
    logLevel: r.string("LOG_LEVEL", "info"),
  };
  r.done();
  return Object.freeze(config);
}
