import { Code, ConnectError } from "@connectrpc/connect";
import type { PoolClient } from "@kilo-cloud/common";
import { countActiveSessions, hasActiveWork, lockAdmission } from "../db/active-sessions.js";
import type { SessionRow } from "../db/sessions.js";

export interface ExecutionCaps {
  /** Sessions of one user that may run (or wait to start) at once. */
  maxActivePerUser: number;
  /** Sessions of one organization that may run (or wait to start) at once. */
  maxActivePerOrg: number;
}

export const DEFAULT_EXECUTION_CAPS: Readonly<ExecutionCaps> = Object.freeze({
  maxActivePerUser: 5,
  maxActivePerOrg: 20,
});

/**
 * The per-user and per-organization cap on concurrent executions, checked inside the
 * transaction that queues a message (after the session row lock). A message for a session
 * that already has work queued or running only joins that session's queue (it adds no
 * concurrency) and is always admitted; a message that would start a new concurrent run is
 * refused with RESOURCE_EXHAUSTED when the owner (or org) is at the cap. Nothing is
 * stored then: an InitiateSession refused this way leaves the session prepared, to be
 * initiated again later.
 */
export async function admitExecution(
  tx: PoolClient,
  session: SessionRow,
  caps: ExecutionCaps,
): Promise<void> {
  if (await hasActiveWork(tx, session.id)) return;
  await lockAdmission(tx, "user", session.user_id);
  const mine = await countActiveSessions(tx, "user", session.user_id, session.id);
  if (mine >= caps.maxActivePerUser) {
    throw new ConnectError(
      `you already have ${mine} sessions running or waiting to start (limit ${caps.maxActivePerUser} per user); ` +
        "wait for one to finish or interrupt it, then try again",
      Code.ResourceExhausted,
    );
  }
  if (!session.org_id) return;
  await lockAdmission(tx, "org", session.org_id);
  const org = await countActiveSessions(tx, "org", session.org_id, session.id);
  if (org >= caps.maxActivePerOrg) {
    throw new ConnectError(
      `your organization already has ${org} sessions running or waiting to start (limit ${caps.maxActivePerOrg} per organization); ` +
        "wait for one to finish, then try again",
      Code.ResourceExhausted,
    );
  }
}
