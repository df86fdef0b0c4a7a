/**
 * The hosted `cloud-agent` procedures' input types (its `router/schemas.ts`), for typed
 * clients. Their rules are checked by the Connect API's protovalidate rules, not here.
 */

export type AgentMode = "architect" | "code" | "ask" | "debug" | "orchestrator";

export interface EncryptedSecretEnvelope {
  encryptedData: string;
  encryptedDEK: string;
  algorithm: "rsa-aes-256-gcm";
  version: 1;
}

interface McpCommon {
  disabled?: boolean;
  timeout?: number;
  alwaysAllow?: string[];
  watchPaths?: string[];
  disabledTools?: string[];
}
export type McpServerConfig = McpCommon &
  (
    | { type?: "stdio"; command: string; args?: string[]; cwd?: string; env?: Record<string, string> }
    | { type: "sse" | "streamable-http"; url: string; headers?: Record<string, string> }
  );

export interface CallbackTargetInput {
  url: string;
  headers?: Record<string, string>;
}

export interface ImagesInput {
  path: string;
  files: string[];
}

export interface PrepareSessionInput {
  prompt: string;
  mode: AgentMode;
  model: string;
  githubRepo?: string;
  gitUrl?: string;
  githubToken?: string;
  gitToken?: string;
  platform?: "github" | "gitlab";
  kilocodeOrganizationId?: string;
  envVars?: Record<string, string>;
  encryptedSecrets?: Record<string, EncryptedSecretEnvelope>;
  setupCommands?: string[];
  mcpServers?: Record<string, McpServerConfig>;
  upstreamBranch?: string;
  autoCommit?: boolean;
  condenseOnComplete?: boolean;
  appendSystemPrompt?: string;
  callbackTarget?: CallbackTargetInput;
  createdOnPlatform?: string;
  images?: ImagesInput;
}

export interface PrepareLegacySessionInput extends PrepareSessionInput {
  cloudAgentSessionId: string;
  kiloSessionId: string;
}

type Clearable<T> = { [K in keyof T]?: T[K] | null };

export interface UpdateSessionInput
  extends Clearable<
    Pick<
      PrepareSessionInput,
      | "mode"
      | "model"
      | "githubToken"
      | "gitToken"
      | "upstreamBranch"
      | "autoCommit"
      | "condenseOnComplete"
      | "appendSystemPrompt"
      | "callbackTarget"
      | "envVars"
      | "encryptedSecrets"
      | "setupCommands"
      | "mcpServers"
    >
  > {
  cloudAgentSessionId: string;
}

export interface CloudAgentSessionIdInput {
  cloudAgentSessionId: string;
}

export interface SessionIdInput {
  sessionId: string;
}

export interface SendMessageV2Input {
  cloudAgentSessionId: string;
  prompt: string;
  mode: AgentMode;
  model: string;
  autoCommit?: boolean;
  condenseOnComplete?: boolean;
  appendSystemPrompt?: string;
  githubToken?: string;
  gitToken?: string;
  images?: ImagesInput;
}

export type InitiateSessionInput = Omit<PrepareSessionInput, "encryptedSecrets" | "callbackTarget">;

export interface InitiateSessionAsyncInput extends InitiateSessionInput {
  callbackUrl: string;
  callbackHeaders?: Record<string, string>;
}

export type InitiateFromKilocodeSessionInput =
  | CloudAgentSessionIdInput
  | (Omit<InitiateSessionInput, "gitUrl" | "gitToken"> & { kiloSessionId: string; githubRepo: string });

export interface SendMessageStreamInput extends Omit<SendMessageV2Input, "cloudAgentSessionId"> {
  sessionId: string;
}

/**
 * A tRPC input parser typed with the hosted input type `TIn` on the client side; `parse`
 * only translates (and refuses what is not an object or has a wrongly typed field).
 */
export function hostedInput<TIn>() {
  return <TOut>(parse: (raw: unknown) => TOut) => ({
    _input: undefined as unknown as TIn,
    _output: undefined as unknown as TOut,
    parse,
  });
}
