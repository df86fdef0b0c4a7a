import { constants, publicEncrypt, randomBytes } from "node:crypto";
import { encryptSecret, generateSecretKeyPair, type SecretKeyPair } from "@kilo-cloud/testing";
import { beforeAll, describe, expect, it } from "vitest";
import { decryptSecret, decryptSecrets, type Envelope, SecretDecryptionError } from "./envelope.js";

let keys: SecretKeyPair;
let otherKeys: SecretKeyPair;

beforeAll(() => {
  keys = generateSecretKeyPair();
  otherKeys = generateSecretKeyPair();
});

const VALUE = "sk-live-0123456789abcdef";

/** Flips one bit of the decoded bytes at `index` and re-encodes. */
function flip(b64: string, index: number): string {
  const bytes = Buffer.from(b64, "base64");
  bytes[index] = (bytes[index] ?? 0) ^ 0x01;
  return bytes.toString("base64");
}

function expectFailure(fn: () => unknown, variable: string, pattern: RegExp): SecretDecryptionError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(SecretDecryptionError);
  const err = caught as SecretDecryptionError;
  expect(err.variable).toBe(variable);
  expect(err.message).toMatch(pattern);
  expect(err.message).toContain(`"${variable}"`);
  // Nothing secret in what might be logged or returned.
  const shown = `${err.message} ${err.stack ?? ""} ${String(err.cause ?? "")}`;
  expect(shown).not.toContain(VALUE);
  expect(shown).not.toContain("PRIVATE KEY");
  return err;
}

describe("decryptSecrets", () => {
  it("round-trips every secret, including empty and non-ASCII values", () => {
    const plain: Record<string, string> = { API_KEY: VALUE, EMPTY: "", UNICODE: "pässwörd ✓ 😀" };
    // A hostile name must stay a plain entry, not become the result's prototype.
    Object.defineProperty(plain, "__proto__", { value: "odd name", enumerable: true });
    const envelopes = Object.fromEntries(
      Object.entries(plain).map(([k, v]) => [k, encryptSecret(v, keys.publicKeyPem)]),
    );
    const out = decryptSecrets(envelopes, keys.privateKeyPem);
    expect(Object.entries(out).sort()).toEqual(Object.entries(plain).sort());
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
  });

  it("uses a fresh data key and IV for each encryption", () => {
    const a = encryptSecret(VALUE, keys.publicKeyPem);
    const b = encryptSecret(VALUE, keys.publicKeyPem);
    expect(a.encryptedData).not.toBe(b.encryptedData);
    expect(a.encryptedDEK).not.toBe(b.encryptedDEK);
    expect(Buffer.from(a.encryptedData, "base64")).toHaveLength(16 + Buffer.byteLength(VALUE) + 16);
  });

  it("refuses tampered data: ciphertext, IV or tag", () => {
    const env = encryptSecret(VALUE, keys.publicKeyPem);
    const len = Buffer.from(env.encryptedData, "base64").length;
    for (const index of [0, 20, len - 1]) {
      const tampered = { ...env, encryptedData: flip(env.encryptedData, index) };
      expectFailure(
        () => decryptSecrets({ API_KEY: tampered }, keys.privateKeyPem),
        "API_KEY",
        /could not be decrypted \(tampered or wrong key\)/,
      );
    }
  });

  it("refuses a tampered data key", () => {
    const env = encryptSecret(VALUE, keys.publicKeyPem);
    const tampered = { ...env, encryptedDEK: flip(env.encryptedDEK, 100) };
    expectFailure(
      () => decryptSecrets({ API_KEY: tampered }, keys.privateKeyPem),
      "API_KEY",
      /tampered or wrong key/,
    );
  });

  it("refuses an envelope made for another key, and fails the whole set", () => {
    const good = encryptSecret("fine", keys.publicKeyPem);
    const foreign = encryptSecret(VALUE, otherKeys.publicKeyPem);
    expectFailure(
      () => decryptSecrets({ GOOD: good, FOREIGN: foreign }, keys.privateKeyPem),
      "FOREIGN",
      /tampered or wrong key/,
    );
  });

  it("refuses a data key of the wrong length", () => {
    const env = encryptSecret(VALUE, keys.publicKeyPem);
    const shortDek = publicEncrypt(
      { key: keys.publicKeyPem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" },
      randomBytes(16),
    ).toString("base64");
    expectFailure(
      () => decryptSecret("TOKEN", { ...env, encryptedDEK: shortDek }, keys.privateKeyPem),
      "TOKEN",
      /data key is not 32 bytes/,
    );
  });

  it("refuses an unknown algorithm or version before touching the key", () => {
    const env = encryptSecret(VALUE, keys.publicKeyPem);
    expectFailure(
      () => decryptSecret("A", { ...env, algorithm: "rsa-aes-128-cbc" }, keys.privateKeyPem),
      "A",
      /unsupported algorithm/,
    );
    expectFailure(
      () => decryptSecret("A", { ...env, version: 2 }, keys.privateKeyPem),
      "A",
      /unsupported envelope version/,
    );
  });

  it("refuses malformed envelopes", () => {
    const env = encryptSecret(VALUE, keys.publicKeyPem);
    expectFailure(
      () => decryptSecret("B", { ...env, encryptedData: "not base64!" }, keys.privateKeyPem),
      "B",
      /malformed/,
    );
    expectFailure(
      () => decryptSecret("B", { ...env, encryptedData: "AAAA" }, keys.privateKeyPem),
      "B",
      /too short/,
    );
    expectFailure(
      () => decryptSecret("B", null as unknown as Envelope, keys.privateKeyPem),
      "B",
      /not an encrypted envelope/,
    );
  });

  it("reports an unusable private key without naming a variable or echoing it", () => {
    const err = (() => {
      try {
        decryptSecrets({ X: encryptSecret(VALUE, keys.publicKeyPem) }, "-----BEGIN PRIVATE KEY-----\nnope\n");
      } catch (e) {
        return e as SecretDecryptionError;
      }
      throw new Error("expected a failure");
    })();
    expect(err).toBeInstanceOf(SecretDecryptionError);
    expect(err.variable).toBeUndefined();
    expect(err.message).toMatch(/private key could not be parsed/);
    expect(err.message).not.toContain("nope");
  });
});
