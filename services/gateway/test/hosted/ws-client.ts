import WebSocket from "ws";
import type { FullStack } from "../support/full-stack.js";

/** A `/stream` frame as the hosted product sends it. */
export interface Frame {
  eventId: number;
  executionId: string;
  sessionId: string;
  streamEventType: string;
  timestamp: string;
  data: Record<string, unknown>;
}

export const TERMINAL = new Set(["complete", "error", "interrupted"]);

export function streamUrl(stack: FullStack, query: Record<string, string>): string {
  return `${stack.gatewayUrl.replace(/^http/, "ws")}/stream?${new URLSearchParams(query)}`;
}

/** Gets a ticket from the hosted backend's path, as the README example does. */
export async function ticketFor(
  stack: FullStack,
  token: string,
  cloudAgentSessionId: string,
): Promise<string> {
  const res = await fetch(`${stack.gatewayUrl}/api/cloud-agent/sessions/stream-ticket`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ cloudAgentSessionId }),
  });
  if (res.status !== 200) throw new Error(`ticket: ${res.status} ${await res.text()}`);
  const body = (await res.json()) as { ticket: string; expiresAt: number };
  return body.ticket;
}

/** Opens a socket; resolves once open, or rejects with the HTTP status of a refusal. */
export function openSocket(url: string): Promise<{ ws: WebSocket; frames: Frame[]; raw: unknown[] }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const frames: Frame[] = [];
    const raw: unknown[] = [];
    ws.on("message", (data) => {
      const msg = JSON.parse(String(data)) as Record<string, unknown>;
      raw.push(msg);
      if (typeof msg.eventId === "number") frames.push(msg as unknown as Frame);
    });
    ws.once("open", () => resolve({ ws, frames, raw }));
    ws.once("unexpected-response", (_req, res) => {
      let body = "";
      res.on("data", (c: Buffer) => {
        body += c.toString();
      });
      res.on("end", () =>
        reject(Object.assign(new Error(`refused ${res.statusCode}`), { status: res.statusCode, body })),
      );
    });
    ws.once("error", (err) => reject(err));
  });
}

/** Waits until `pred` holds for the frames received so far (or the socket closes). */
export async function waitFrames(
  s: { ws: WebSocket; frames: Frame[] },
  pred: (frames: Frame[]) => boolean,
  timeoutMs = 90_000,
): Promise<Frame[]> {
  const deadline = Date.now() + timeoutMs;
  while (!pred(s.frames)) {
    if (Date.now() > deadline) throw new Error(`timed out with ${s.frames.length} frames`);
    if (s.ws.readyState === WebSocket.CLOSED) throw new Error("socket closed");
    await new Promise((r) => setTimeout(r, 25));
  }
  return s.frames;
}

export const terminalsOf = (frames: Frame[]) => frames.filter((f) => TERMINAL.has(f.streamEventType));
