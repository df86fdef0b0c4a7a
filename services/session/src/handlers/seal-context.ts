/** Whose and which session a sealed value belongs to. */
export interface SealScope {
  sessionId: string;
  userId: string;
}

/**
 * The sealing context (AES-GCM associated data) binds a sealed value to its session, its
 * owner and its column: a value copied to another row, column or owner does not open.
 */
export const sealContext = (scope: SealScope, column: string) =>
  `session:${scope.sessionId}:user:${scope.userId}:${column}`;

/** The context of rows sealed before owners were bound (seal_version 1); only to re-seal them. */
export const legacySealContext = (sessionId: string, column: string) => `session:${sessionId}:${column}`;

/** The seal_version of rows whose values are bound to session, owner and column. */
export const SEAL_VERSION = 2;
