import { Code, ConnectError } from "@connectrpc/connect";
import { checkOutboundUrl, type OutboundPolicy, SsrfError } from "@kilo-cloud/common";
import type { McpServer } from "@kilo-cloud/proto";

/** What the URLs a session names (git remote, MCP servers) may point at. */
export interface SessionUrlPolicy {
  /** Plain http:// for git and MCP (GIT_ALLOW_INSECURE); says nothing about addresses. */
  allowHttp: boolean;
  /**
   * Hosts (as written in the URL: a name or an IP literal) exempt from the address policy
   * (SESSION_OUTBOUND_ALLOW_HOSTS), for a local git server in tests and the demo. Empty in
   * production: loopback, private, link-local and metadata addresses are refused.
   */
  allowHosts: readonly string[];
}

/**
 * Refuses, before anything is stored, a URL that points at loopback, private, link-local or
 * metadata addresses: an IP literal in any spelling, or a name that resolves there now. A
 * name that does not resolve yet is accepted (the sandbox's egress fence decides later).
 */
export async function checkSessionUrl(field: string, url: string, policy: SessionUrlPolicy): Promise<void> {
  let host: string;
  try {
    host = new URL(url).hostname.replace(/^\[|\]$/g, "");
  } catch {
    throw new ConnectError(`${field}: must be a URL`, Code.InvalidArgument);
  }
  const allowed = policy.allowHosts.includes(host.toLowerCase());
  const outbound: OutboundPolicy = {
    allowHttp: policy.allowHttp,
    allowLoopback: allowed,
    allowPrivate: allowed,
  };
  try {
    await checkOutboundUrl(url, outbound);
  } catch (err) {
    if (err instanceof SsrfError) throw new ConnectError(`${field}: ${err.reason}`, Code.InvalidArgument);
    // DNS failure: the name may exist later; the fence checks every connection anyway.
  }
}

/** The remote MCP servers' URLs, with their field paths. */
export function mcpUrls(servers: Record<string, McpServer> | undefined): [string, string][] {
  const out: [string, string][] = [];
  for (const [name, server] of Object.entries(servers ?? {})) {
    const t = server.transport;
    if (t.case === "sse" || t.case === "streamableHttp") {
      out.push([
        `mcp_servers.values["${name}"].${t.case === "sse" ? "sse" : "streamable_http"}.url`,
        t.value.url,
      ]);
    }
  }
  return out;
}

/** Checks the git URL and the MCP URLs of a prepare or update request. */
export async function checkSessionUrls(
  req: { gitUrl?: string | undefined; mcpServers?: Record<string, McpServer> | undefined },
  policy: SessionUrlPolicy,
): Promise<void> {
  const urls = mcpUrls(req.mcpServers);
  if (req.gitUrl !== undefined) urls.unshift(["git_url", req.gitUrl]);
  for (const [field, url] of urls) await checkSessionUrl(field, url, policy);
}
