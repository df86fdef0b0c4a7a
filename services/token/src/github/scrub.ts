/**
 * Removes anything that looks like credential material from a text that may reach a log
 * or an error cause: GitHub tokens (`ghs_…`, `ghp_…`, …), JWTs, PEM blocks. Texts from
 * GitHub should never hold any, but a proxy or a GitHub Enterprise build may echo a request.
 */
export function scrub(text: string, max = 300): string {
  const clean = text
    .replace(/-----BEGIN [A-Z ]+-----[\s\S]*?(-----END [A-Z ]+-----|$)/g, "[key]")
    .replace(/\bgh[pousr]_[A-Za-z0-9_]+/g, "[token]")
    .replace(/\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(\.[A-Za-z0-9_-]*)?/g, "[jwt]")
    .replace(/\b(bearer|token|basic)\s+[A-Za-z0-9._~+/=-]{16,}/gi, "$1 [redacted]");
  return clean.length > max ? `${clean.slice(0, max)}…` : clean;
}
