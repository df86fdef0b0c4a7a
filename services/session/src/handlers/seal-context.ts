/** The sealing context binds a sealed value to its session and column. */
export const sealContext = (sessionId: string, column: string) => `session:${sessionId}:${column}`;
