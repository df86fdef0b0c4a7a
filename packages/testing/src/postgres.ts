import { randomBytes } from "node:crypto";
import pg from "pg";

/** The server the tests use (started by scripts/ensure-services.ts). */
export function testDatabaseServerUrl(): string {
  return process.env.TEST_DATABASE_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/postgres";
}

export interface TestDatabase extends AsyncDisposable {
  url: string;
  name: string;
  drop(): Promise<void>;
}

/** A fresh, uniquely named database for one test file; dropped on dispose. */
export async function createTestDatabase(prefix = "kc_test"): Promise<TestDatabase> {
  const name = `${prefix}_${Date.now().toString(36)}_${randomBytes(4).toString("hex")}`;
  const serverUrl = testDatabaseServerUrl();
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  let dropped = false;
  const drop = async () => {
    if (dropped) return;
    dropped = true;
    const c = new pg.Client({ connectionString: serverUrl });
    await c.connect();
    try {
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    } finally {
      await c.end();
    }
  };
  return { url: url.toString(), name, drop, [Symbol.asyncDispose]: drop };
}
