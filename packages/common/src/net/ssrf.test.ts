import { once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { classifyAddress } from "./ip-address.js";
import { safeFetch } from "./safe-fetch.js";
import { addressRefusal, checkOutboundUrl, type OutboundPolicy, type ResolveAll, SsrfError } from "./ssrf.js";

const strict: OutboundPolicy = { allowHttp: false, allowLoopback: false };
const loopbackOk: OutboundPolicy = { allowHttp: true, allowLoopback: true };

const resolvesTo =
  (...addresses: string[]): ResolveAll =>
  async () =>
    addresses.map((address) => ({ address, family: address.includes(":") ? 6 : 4 }));

interface Server {
  url: string;
  hits: number;
  close(): Promise<void>;
}

const servers: Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function serve(handler: http.RequestListener): Promise<Server> {
  const server = http.createServer((req, res) => {
    s.hits++;
    handler(req, res);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  const s: Server = {
    url: `http://127.0.0.1:${port}`,
    hits: 0,
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, "close");
    },
  };
  servers.push(s);
  return s;
}

describe("addresses", () => {
  it.each([
    ["127.0.0.1", "loopback"],
    ["127.255.0.9", "loopback"],
    ["::1", "loopback"],
    ["::ffff:127.0.0.1", "loopback"],
    ["::ffff:7f00:1", "loopback"],
    ["10.1.2.3", "private"],
    ["172.16.0.1", "private"],
    ["172.31.255.255", "private"],
    ["192.168.1.1", "private"],
    ["::ffff:10.0.0.1", "private"],
    ["fc00::1", "private"],
    ["fd12:3456::1", "private"],
    ["64:ff9b::10.0.0.1", "private"],
    ["2002:c0a8:0101::1", "private"],
    ["100.64.0.1", "shared"],
    ["100.127.255.255", "shared"],
    ["169.254.1.1", "link-local"],
    ["fe80::1", "link-local"],
    ["fe80::1%eth0", "link-local"],
    ["febf::1", "link-local"],
    ["169.254.169.254", "metadata"],
    ["::ffff:169.254.169.254", "metadata"],
    ["::ffff:a9fe:a9fe", "metadata"],
    ["fd00:ec2::254", "metadata"],
    ["fd00:ec2:0:0:0:0:0:254", "metadata"],
    ["100.100.100.200", "metadata"],
    ["0.0.0.0", "unspecified"],
    ["0.1.2.3", "unspecified"],
    ["::", "unspecified"],
    ["224.0.0.1", "multicast"],
    ["ff02::1", "multicast"],
    ["198.18.0.1", "benchmarking"],
    ["192.0.2.1", "documentation"],
    ["2001:db8::1", "documentation"],
    ["240.0.0.1", "reserved"],
    ["255.255.255.255", "reserved"],
    ["::127.0.0.1", "reserved"],
    ["2001::1", "reserved"],
    ["8.8.8.8", "public"],
    ["172.32.0.1", "public"],
    ["100.128.0.1", "public"],
    ["::ffff:8.8.8.8", "public"],
    ["2606:4700:4700::1111", "public"],
    ["64:ff9b::8.8.8.8", "public"],
    ["localhost", "invalid"],
  ])("%s is %s", (address, cls) => {
    expect(classifyAddress(address)).toBe(cls);
  });

  it("lets a policy open loopback and private ranges, never metadata", () => {
    const open: OutboundPolicy = { allowHttp: true, allowLoopback: true, allowPrivate: true };
    for (const ok of ["127.0.0.1", "::1", "10.0.0.1", "fd12::1", "100.64.0.1"]) {
      expect(addressRefusal(ok, open)).toBeUndefined();
    }
    for (const never of ["169.254.169.254", "fd00:ec2::254", "100.100.100.200", "0.0.0.0", "fe80::1"]) {
      expect(addressRefusal(never, open)).toBeDefined();
    }
    expect(addressRefusal("10.0.0.1", loopbackOk)).toBeDefined();
  });
});

describe("checkOutboundUrl", () => {
  it.each([
    "http://example.com/hook", // http without allowHttp
    "ftp://example.com/",
    "file:///etc/passwd",
    "https://user:pass@example.com/",
    "https://127.0.0.1/",
    "https://127.1/",
    "https://2130706433/", // decimal
    "https://0x7f000001/", // hex
    "https://0x7f.0.0.1/",
    "https://0177.0.0.1/", // octal
    "https://[::1]/",
    "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:169.254.169.254]/latest/meta-data/",
    "https://169.254.169.254/latest/meta-data/",
    "https://[fd00:ec2::254]/",
    "https://10.0.0.1/",
    "https://100.64.0.1/",
    "https://0.0.0.0/",
    "https://[fe80::1]/",
    "https://localhost/",
    "https://not a url",
  ])("refuses %s", async (url) => {
    await expect(checkOutboundUrl(url, strict)).rejects.toBeInstanceOf(SsrfError);
  });

  it.each([
    ["https://8.8.8.8/hook", resolvesTo()],
    ["https://[2606:4700:4700::1111]/hook", resolvesTo()],
    [
      "https://receiver.example/hook?x=1",
      resolvesTo("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"),
    ],
  ])("allows %s", async (url, resolve) => {
    const { url: parsed } = await checkOutboundUrl(url, strict, { resolve });
    expect(parsed.protocol).toBe("https:");
  });

  it("refuses a name when any one of its addresses is refused", async () => {
    await expect(
      checkOutboundUrl("https://mixed.example/", strict, {
        resolve: resolvesTo("93.184.215.14", "10.0.0.7"),
      }),
    ).rejects.toThrow(/mixed\.example refused: it resolves to a private address/);
  });

  it("names the host but not the path or query", async () => {
    const err = await checkOutboundUrl("https://169.254.169.254/latest?token=s3cr3t", strict).catch((e) => e);
    expect(err).toBeInstanceOf(SsrfError);
    expect(err.message).toContain("169.254.169.254");
    expect(err.message).not.toContain("s3cr3t");
    expect(err.message).not.toContain("latest");
  });
});

describe("safeFetch", () => {
  it("reaches loopback only when the policy allows it, for literals and for names", async () => {
    const server = await serve((_req, res) => res.end("ok"));
    const port = new URL(server.url).port;
    for (const url of [server.url, `http://localhost:${port}`, `http://2130706433:${port}`]) {
      await expect(
        safeFetch(url, { policy: { allowHttp: true, allowLoopback: false }, timeoutMs: 2000 }),
      ).rejects.toThrow(SsrfError);
    }
    expect(server.hits).toBe(0);

    const res = await safeFetch(`http://localhost:${port}/`, { policy: loopbackOk, timeoutMs: 2000 });
    expect(res.status).toBe(200);
    expect(await res.text()).toBe("ok");
    expect(server.hits).toBe(1);
  });

  it("refuses http:// unless the policy allows it", async () => {
    const server = await serve((_req, res) => res.end("ok"));
    const err = await safeFetch(server.url, {
      policy: { allowHttp: false, allowLoopback: true },
      timeoutMs: 2000,
    }).catch((e) => e);
    expect(err).toBeInstanceOf(SsrfError);
    expect(err.message).toMatch(/scheme http: is not allowed/);
    expect(server.hits).toBe(0);
  });

  it("does not follow redirects", async () => {
    const second = await serve((_req, res) => res.end("should not be reached"));
    const first = await serve((_req, res) => {
      res.writeHead(302, { location: `${second.url}/elsewhere` });
      res.end();
    });
    const res = await safeFetch(`${first.url}/hook`, {
      method: "POST",
      body: "{}",
      policy: loopbackOk,
      timeoutMs: 2000,
    });
    expect(res.status).toBe(302);
    expect(res.headers.get("location")).toBe(`${second.url}/elsewhere`);
    expect(first.hits).toBe(1);
    expect(second.hits).toBe(0);
  });

  it("connects to the addresses it checked, not to what the name resolved to before (DNS rebinding)", async () => {
    const server = await serve((_req, res) => res.end("internal"));
    const port = new URL(server.url).port;
    let calls = 0;
    // Public when checked up front, loopback when the socket connects.
    const rebinding: ResolveAll = async () => [
      { address: calls++ === 0 ? "93.184.215.14" : "127.0.0.1", family: 4 },
    ];
    const policy = { allowHttp: true, allowLoopback: false };
    const url = `http://rebind.example:${port}/`;

    await expect(checkOutboundUrl(url, policy, { resolve: rebinding })).resolves.toBeDefined();
    const err = await safeFetch(url, { policy, timeoutMs: 2000, resolve: rebinding }).catch((e) => e);
    expect(err).toBeInstanceOf(SsrfError);
    expect(err.message).toContain("rebind.example");
    expect(server.hits).toBe(0);
  });

  it("sends the request to the address the checked lookup returned", async () => {
    const server = await serve((req, res) => res.end(req.headers.host));
    const port = new URL(server.url).port;
    // rebind.example does not exist in real DNS: the socket can only have used our answer.
    const res = await safeFetch(`http://rebind.example:${port}/`, {
      policy: loopbackOk,
      timeoutMs: 2000,
      resolve: resolvesTo("127.0.0.1"),
    });
    expect(await res.text()).toBe(`rebind.example:${port}`);
  });

  it("gives up after timeoutMs when the server never answers", async () => {
    const server = await serve(() => {});
    const started = Date.now();
    const err = await safeFetch(server.url, { policy: loopbackOk, timeoutMs: 200 }).catch((e) => e);
    expect(err.name).toBe("SafeFetchError");
    expect(err.kind).toBe("timeout");
    expect(Date.now() - started).toBeGreaterThanOrEqual(190);
    expect(Date.now() - started).toBeLessThan(2000);
  });
});
