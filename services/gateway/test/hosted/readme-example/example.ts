// The reference README's "TypeScript Client (Recommended)" example, as written there, but for
// the URLs (this gateway instead of your-worker.dev / your-backend.com), the backend's
// `x-internal-api-key` header that its text requires for prepareSession, and `ws` standing in
// for the browser's WebSocket (Node 20 has no global one). Imports name their `.js` file (nodenext)
// and `fetch` is typed as the DOM's (whose `json()` is `any`); the code is otherwise untouched.
import { createTRPCClient, httpBatchLink } from "@trpc/client";
import WebSocket from "ws";
import type { AppRouter } from "./router.js";

// biome-ignore lint/suspicious/noExplicitAny: the DOM's Response.json() is any
type DomResponse = Omit<Response, "json"> & { json(): Promise<any> };
const fetch = globalThis.fetch as (...args: Parameters<typeof globalThis.fetch>) => Promise<DomResponse>;

export async function readmeExample(env: {
  WORKER: string;
  WORKER_WS: string;
  BACKEND: string;
  KILOCODE_TOKEN: string;
  USER_SESSION_TOKEN: string;
  INTERNAL_API_KEY: string;
}) {
  const { KILOCODE_TOKEN, USER_SESSION_TOKEN } = env;

  const client = createTRPCClient<AppRouter>({
    links: [
      httpBatchLink({
        url: `${env.WORKER}/trpc`,
        headers: {
          Authorization: `Bearer ${KILOCODE_TOKEN}`,
          "x-internal-api-key": env.INTERNAL_API_KEY,
        },
      }),
    ],
  });

  // 1) Prepare a session first (backend-to-backend)
  const prepared = await client.prepareSession.mutate({
    githubRepo: "facebook/react",
    kilocodeOrganizationId: "your-org-id-here",
    prompt: "Analyze the project structure",
    mode: "architect",
    model: "gpt-4o-mini",
  });

  // 2) Initiate the prepared session via V2
  const ack = await client.initiateFromKilocodeSessionV2.mutate({
    cloudAgentSessionId: prepared.cloudAgentSessionId,
  });

  // 3) Obtain a stream ticket (short-lived JWT for WebSocket auth)
  // Option A: If using Next.js prepareSession API, ticket is included in response
  // Option B: Call /stream-ticket endpoint with cloudAgentSessionId
  const ticketResponse = await fetch(`${env.BACKEND}/api/cloud-agent/sessions/stream-ticket`, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      Authorization: `Bearer ${USER_SESSION_TOKEN}`,
    },
    body: JSON.stringify({ cloudAgentSessionId: ack.cloudAgentSessionId }),
  });
  const { ticket } = await ticketResponse.json();

  // 4) Connect to /stream with ticket query parameter
  const ws = new WebSocket(`${env.WORKER_WS}${ack.streamUrl}&ticket=${ticket}`);
  ws.onmessage = (event) => {
    // @ts-expect-error ws types `data` as string | Buffer; like a browser's, a text frame's is a string
    const payload = JSON.parse(event.data);
    console.log("Stream event:", payload.streamEventType, payload.data);
  };

  // 5) Queue follow-up messages (FIFO)
  await client.sendMessageV2.mutate({
    cloudAgentSessionId: ack.cloudAgentSessionId,
    prompt: "Implement the improvements",
    mode: "code",
    model: "gpt-4o-mini",
  });

  return { prepared, ack, ws };
}
