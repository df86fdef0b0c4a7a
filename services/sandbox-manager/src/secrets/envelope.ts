import { constants, createDecipheriv, createPrivateKey, type KeyObject, privateDecrypt } from "node:crypto";

/**
 * Just-in-time decryption of the reference's encrypted secret envelopes. The backend
 * encrypts each secret with the sandbox-manager's public key, so plaintext exists only
 * here, right before it is handed to a sandbox.
 *
 * Envelope v1 (`rsa-aes-256-gcm`): a random 32-byte data key (DEK) is wrapped with RSA-OAEP
 * SHA-256 in `encryptedDEK`; `encryptedData` is base64(iv[16] | ciphertext | tag[16]) under
 * AES-256-GCM with that DEK. Both fields are standard base64.
 */
export interface Envelope {
  encryptedData: string;
  encryptedDEK: string;
  /** Typed loosely because envelopes arrive from the wire; checked on use. */
  algorithm: string;
  version: number;
}

/**
 * Names the secret that failed but never carries its value, the data key or key material,
 * so it is safe to log and to return to the caller.
 */
export class SecretDecryptionError extends Error {
  override name = "SecretDecryptionError";
  /** Undefined when the private key itself is unusable. */
  readonly variable: string | undefined;

  constructor(variable: string | undefined, message: string, options?: ErrorOptions) {
    super(message, options);
    this.variable = variable;
  }
}

const ALGORITHM = "rsa-aes-256-gcm";
const VERSION = 1;
const IV_BYTES = 16;
const TAG_BYTES = 16;
const DEK_BYTES = 32;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Parses the PEM once; pass the result to the decrypt functions to avoid re-parsing per secret. */
export function loadSecretsPrivateKey(pem: string | KeyObject): KeyObject {
  if (typeof pem !== "string") {
    if (pem.type !== "private" || pem.asymmetricKeyType !== "rsa") {
      throw new SecretDecryptionError(undefined, "the secrets key must be an RSA private key");
    }
    return pem;
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch {
    // No cause attached: nothing from a parser that has just read key material should travel
    // into logs, and the message already says what to fix.
    throw new SecretDecryptionError(
      undefined,
      "the secrets private key could not be parsed (expected RSA PEM)",
    );
  }
  if (key.asymmetricKeyType !== "rsa") {
    throw new SecretDecryptionError(undefined, "the secrets key must be an RSA private key");
  }
  return key;
}

export function decryptSecret(name: string, envelope: Envelope, privateKey: string | KeyObject): string {
  const key = loadSecretsPrivateKey(privateKey);
  const fail = (why: string, cause?: unknown) =>
    new SecretDecryptionError(name, `secret "${name}" ${why}`, cause === undefined ? undefined : { cause });

  if (typeof envelope !== "object" || envelope === null) throw fail("is not an encrypted envelope");
  if (envelope.algorithm !== ALGORITHM) throw fail(`has an unsupported algorithm (expected ${ALGORITHM})`);
  if (envelope.version !== VERSION) throw fail(`has an unsupported envelope version (expected ${VERSION})`);
  if (typeof envelope.encryptedData !== "string" || !BASE64.test(envelope.encryptedData)) {
    throw fail("is malformed (encryptedData is not base64)");
  }
  if (typeof envelope.encryptedDEK !== "string" || !BASE64.test(envelope.encryptedDEK)) {
    throw fail("is malformed (encryptedDEK is not base64)");
  }
  const data = Buffer.from(envelope.encryptedData, "base64");
  if (data.length < IV_BYTES + TAG_BYTES) throw fail("is malformed (encryptedData is too short)");

  let dek: Buffer;
  try {
    dek = privateDecrypt(
      { key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" },
      Buffer.from(envelope.encryptedDEK, "base64"),
    );
  } catch (err) {
    throw fail("could not be decrypted (tampered or wrong key)", err);
  }
  try {
    if (dek.length !== DEK_BYTES) throw fail(`could not be decrypted (data key is not ${DEK_BYTES} bytes)`);
    const iv = data.subarray(0, IV_BYTES);
    const tag = data.subarray(data.length - TAG_BYTES);
    const ciphertext = data.subarray(IV_BYTES, data.length - TAG_BYTES);
    let plaintext: Buffer;
    try {
      const decipher = createDecipheriv("aes-256-gcm", dek, iv, { authTagLength: TAG_BYTES });
      decipher.setAuthTag(tag);
      plaintext = Buffer.concat([decipher.update(ciphertext), decipher.final()]);
    } catch (err) {
      throw fail("could not be decrypted (tampered or wrong key)", err);
    }
    try {
      return utf8.decode(plaintext);
    } catch {
      throw fail("decrypted to bytes that are not UTF-8 text");
    } finally {
      plaintext.fill(0);
    }
  } finally {
    // Plaintext strings cannot be wiped in JS, but the key that opens the rest can.
    dek.fill(0);
  }
}

/**
 * Decrypts every secret or none: the first failure throws, naming the variable, so a run
 * never starts with half of its environment.
 */
export function decryptSecrets(
  secrets: Record<string, Envelope>,
  privateKeyPem: string | KeyObject,
): Record<string, string> {
  const key = loadSecretsPrivateKey(privateKeyPem);
  // fromEntries defines own properties, so a secret named "__proto__" stays a plain entry.
  return Object.fromEntries(
    Object.entries(secrets).map(([name, envelope]) => [name, decryptSecret(name, envelope, key)]),
  );
}
