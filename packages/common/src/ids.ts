import { randomUUID } from "node:crypto";

export const SESSION_ID_PATTERN = /^agent_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** A cloud-agent session id: `agent_<uuid>`. */
export function newSessionId(): string {
  return `agent_${randomUUID()}`;
}

/** An execution id: `exec_<uuid>`. */
export function newExecutionId(): string {
  return `exec_${randomUUID()}`;
}

/** A kilo CLI session id as the reference generates it: a bare uuid. */
export function newKiloSessionId(): string {
  return randomUUID();
}
