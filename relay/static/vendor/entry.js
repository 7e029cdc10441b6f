// What the page's end-to-end encryption (../e2e.js) takes from noble: the
// ristretto255 group with its element derivation, and SHA-512. AES-GCM,
// HKDF and HMAC are WebCrypto's.
export { ristretto255, ristretto255_hasher } from '@noble/curves/ed25519.js';
export { bytesToNumberLE } from '@noble/curves/utils.js';
export { sha512 } from '@noble/hashes/sha2.js';
