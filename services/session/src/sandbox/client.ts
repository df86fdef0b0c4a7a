import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createServiceTokenSigner } from "@kilo-cloud/common";
import { SandboxService } from "@kilo-cloud/proto/sandbox";

/** The session service signs its calls to sandbox-manager as this issuer. */
export const SESSION_ISSUER = "kilo-cloud-session";
export const SANDBOX_AUDIENCE = "kilo-cloud-sandbox";

export type SandboxClient = Client<typeof SandboxService>;

/**
 * A client of sandbox-manager whose every call carries a short-lived service token naming
 * the user the call is for (`sandbox.userId` of the request), signed with the session
 * service's own key.
 */
export async function createSandboxClient(opts: {
  baseUrl: string;
  privateKeyPem: string;
}): Promise<SandboxClient> {
  const sign = await createServiceTokenSigner(opts.privateKeyPem, SESSION_ISSUER);
  const auth: Interceptor = (next) => async (req) => {
    const userId = (req.message as { sandbox?: { userId?: string } }).sandbox?.userId;
    if (!userId) throw new Error(`${req.method.name} needs sandbox.userId`);
    req.header.set("authorization", `Bearer ${await sign(SANDBOX_AUDIENCE, { userId, internal: true })}`);
    return next(req);
  };
  return createClient(
    SandboxService,
    createConnectTransport({
      baseUrl: opts.baseUrl,
      httpVersion: "2",
      useBinaryFormat: true,
      interceptors: [auth],
    }),
  );
}
