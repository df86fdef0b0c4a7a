import { Code, ConnectError } from "@connectrpc/connect";
import type { SessionRow } from "../db/sessions.js";

export function notFound(id: string): ConnectError {
  return new ConnectError(`session ${id} not found`, Code.NotFound);
}

/** Another user's session is answered exactly like a missing one. */
export function owned(row: SessionRow | undefined, id: string, userId: string): SessionRow {
  if (!row || row.user_id !== userId) throw notFound(id);
  return row;
}
