import {
  constants,
  createCipheriv,
  generateKeyPairSync,
  type KeyObject,
  publicEncrypt,
  randomBytes,
} from "node:crypto";

/**
 * The encrypting half of the reference's secret envelopes, for tests only: production
 * code (sandbox-manager) holds just the private key and only ever decrypts.
 *
 * Envelope: a fresh 32-byte data key (DEK) encrypts the value with AES-256-GCM;
 * `encryptedData` = base64(iv[16] | ciphertext | tag[16]); the DEK is wrapped with RSA-OAEP
 * (SHA-256) under the public key into `encryptedDEK`.
 */
export interface SecretEnvelope {
  encryptedData: string;
  encryptedDEK: string;
  algorithm: "rsa-aes-256-gcm";
  version: 1;
}

export function encryptSecret(value: string, publicKeyPem: string | KeyObject): SecretEnvelope {
  const dek = randomBytes(32);
  const iv = randomBytes(16);
  const cipher = createCipheriv("aes-256-gcm", dek, iv);
  const ciphertext = Buffer.concat([cipher.update(value, "utf8"), cipher.final()]);
  const encryptedDEK = publicEncrypt(
    { key: publicKeyPem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" },
    dek,
  );
  return {
    encryptedData: Buffer.concat([iv, ciphertext, cipher.getAuthTag()]).toString("base64"),
    encryptedDEK: encryptedDEK.toString("base64"),
    algorithm: "rsa-aes-256-gcm",
    version: 1,
  };
}

export interface SecretKeyPair {
  publicKeyPem: string;
  privateKeyPem: string;
}

/** An RSA key pair in PEM (SPKI / PKCS#8), the form the services are configured with. */
export function generateSecretKeyPair(modulusLength = 2048): SecretKeyPair {
  const { publicKey, privateKey } = generateKeyPairSync("rsa", {
    modulusLength,
    publicKeyEncoding: { type: "spki", format: "pem" },
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
  });
  return { publicKeyPem: publicKey, privateKeyPem: privateKey };
}
