//! The `relay-e2e/1` key exchange as pure state machines (no I/O, no
//! clock): the host's and the joiner's steps, key confirmation, and the
//! sealed channel they end in. The client drives them with the frames it
//! receives; the fuzzers and unit tests drive them directly.

use aes_gcm::aead::{Aead, KeyInit, Payload as AeadPayload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use curve25519_dalek::scalar::Scalar;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha512;
use subtle::ConstantTimeEq;

use super::code::Secret;
use super::cpace;
use super::wire::{AbortReason, Handshake, Plain, SEALED_VERSION, VERSION};
use crate::SessionCode;

/// CPace's associated data of the initiator (the host).
const AD_HOST: &[u8] = b"host";
/// CPace's associated data of the responder (the joiner).
const AD_JOINER: &[u8] = b"joiner";
/// Data frames each side sends in the handshake (`hello`, `confirm`): its
/// first sealed frame is number 3.
const HANDSHAKE_FRAMES: u64 = 2;

/// Why the exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The other side's tag did not verify (or it said so).
    #[error("the code was mistyped or someone else tried it")]
    Mismatch,
    /// A share that is not a group element, or gives the identity.
    #[error("the other side sent an invalid key exchange message")]
    Invalid,
}

impl Failure {
    /// The `abort` reason that tells the other side.
    pub fn reason(self) -> AbortReason {
        match self {
            Failure::Mismatch => AbortReason::Mismatch,
            Failure::Invalid => AbortReason::Invalid,
        }
    }
}

/// What both sides bind into the exchange: the relay code and, in a room, the guest.
#[derive(Debug, Clone)]
pub struct Binding {
    relay: SessionCode,
    secret: Secret,
    guest: Option<u64>,
}

impl Binding {
    /// The exchange of a pairing (`guest: None`) or of one guest of a room.
    pub fn new(relay: SessionCode, secret: Secret, guest: Option<u64>) -> Self {
        Binding {
            relay,
            secret,
            guest,
        }
    }

    /// CPace's channel identifier: `lv_cat(VERSION, RELAYCODE[, GUESTID])`.
    fn ci(&self) -> Vec<u8> {
        let code = self.relay.as_str().as_bytes();
        match self.guest {
            None => cpace::lv_cat(&[VERSION.as_bytes(), code]),
            Some(g) => cpace::lv_cat(&[VERSION.as_bytes(), code, g.to_string().as_bytes()]),
        }
    }
}

fn random_scalar() -> Scalar {
    let mut wide = [0u8; 64];
    rand::rng().fill_bytes(&mut wide);
    cpace::scalar(&wide)
}

/// Keys and expected tags of one run, once both shares are known.
struct Keys {
    host_tag: [u8; 64],
    joiner_tag: [u8; 64],
    host_to_joiner: [u8; 32],
    joiner_to_host: [u8; 32],
}

impl Keys {
    fn derive(sid: &[u8; 16], k: &[u8; 32], ya: &[u8; 32], yb: &[u8; 32]) -> Result<Self, Failure> {
        let transcript = cpace::transcript(ya, AD_HOST, yb, AD_JOINER);
        let isk = cpace::isk(sid, k, &transcript);
        let hk = Hkdf::<Sha512>::new(Some(sid), &isk);
        let expand = |info: &str| -> Result<[u8; 32], Failure> {
            let mut out = [0u8; 32];
            hk.expand(format!("{VERSION} {info}").as_bytes(), &mut out)
                .map_err(|_| Failure::Invalid)?;
            Ok(out)
        };
        let tag = |key: [u8; 32]| -> Result<[u8; 64], Failure> {
            let mut mac =
                <Hmac<Sha512> as Mac>::new_from_slice(&key).map_err(|_| Failure::Invalid)?;
            mac.update(&transcript);
            Ok(mac.finalize().into_bytes().into())
        };
        Ok(Keys {
            host_tag: tag(expand("confirm host")?)?,
            joiner_tag: tag(expand("confirm joiner")?)?,
            host_to_joiner: expand("host to joiner")?,
            joiner_to_host: expand("joiner to host")?,
        })
    }
}

/// Constant-time equality of two tags.
fn tags_match(a: &[u8; 64], b: &[u8; 64]) -> bool {
    a.ct_eq(b).into()
}

/// The host after sending `hello`, waiting for the joiner's `hello`.
pub struct HostHello {
    sid: [u8; 16],
    y: Scalar,
    ya: [u8; 32],
}

/// The host after the joiner's `hello`, waiting for its `confirm`.
pub struct HostConfirm {
    keys: Keys,
}

impl HostHello {
    /// Starts the host's run; the message is the `hello` to send.
    pub fn start(binding: &Binding) -> (Self, Handshake) {
        let mut sid = [0u8; 16];
        rand::rng().fill_bytes(&mut sid);
        let g = cpace::generator(binding.secret.as_str().as_bytes(), &binding.ci(), &sid);
        let y = random_scalar();
        let ya = cpace::share(&y, &g);
        (
            HostHello { sid, y, ya },
            Handshake::HostHello { sid, share: ya },
        )
    }

    /// Takes the joiner's share.
    ///
    /// # Errors
    /// [`Failure::Invalid`] for a share that is not a usable group element.
    pub fn on_share(self, yb: &[u8; 32]) -> Result<HostConfirm, Failure> {
        let k = cpace::secret(&self.y, yb).ok_or(Failure::Invalid)?;
        Ok(HostConfirm {
            keys: Keys::derive(&self.sid, &k, &self.ya, yb)?,
        })
    }
}

impl HostConfirm {
    /// Checks the joiner's tag; on success gives the channel and the host's
    /// own `confirm` to send.
    ///
    /// # Errors
    /// [`Failure::Mismatch`]: send `abort` `mismatch`, never the host's tag.
    pub fn on_confirm(self, tag: &[u8; 64]) -> Result<(Channel, Handshake), Failure> {
        if !tags_match(tag, &self.keys.joiner_tag) {
            return Err(Failure::Mismatch);
        }
        let confirm = Handshake::Confirm {
            tag: self.keys.host_tag,
        };
        Ok((
            Channel::new(&self.keys.host_to_joiner, &self.keys.joiner_to_host),
            confirm,
        ))
    }
}

/// The joiner after answering, waiting for the host's `confirm`.
pub struct JoinerConfirm {
    keys: Keys,
}

impl JoinerConfirm {
    /// Answers the host's `hello`: the messages are the joiner's `hello` and
    /// `confirm`, to send in that order.
    ///
    /// # Errors
    /// [`Failure::Invalid`] for a share that is not a usable group element.
    pub fn answer(
        binding: &Binding,
        sid: &[u8; 16],
        ya: &[u8; 32],
    ) -> Result<(Self, [Handshake; 2]), Failure> {
        let g = cpace::generator(binding.secret.as_str().as_bytes(), &binding.ci(), sid);
        let y = random_scalar();
        let yb = cpace::share(&y, &g);
        let k = cpace::secret(&y, ya).ok_or(Failure::Invalid)?;
        let keys = Keys::derive(sid, &k, ya, &yb)?;
        let msgs = [
            Handshake::JoinerHello { share: yb },
            Handshake::Confirm {
                tag: keys.joiner_tag,
            },
        ];
        Ok((JoinerConfirm { keys }, msgs))
    }

    /// Checks the host's tag.
    ///
    /// # Errors
    /// [`Failure::Mismatch`] when it does not verify.
    pub fn on_confirm(self, tag: &[u8; 64]) -> Result<Channel, Failure> {
        if !tags_match(tag, &self.keys.host_tag) {
            return Err(Failure::Mismatch);
        }
        Ok(Channel::new(
            &self.keys.joiner_to_host,
            &self.keys.host_to_joiner,
        ))
    }
}

/// Why a sealed frame was refused: the session must stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("frame {n} from the other side {why}")]
pub struct Tampered {
    /// The frame's number in its direction.
    pub n: u64,
    /// What was wrong, for a person.
    pub why: String,
}

/// The two directions of a confirmed exchange.
pub struct Channel {
    /// Seals this side's frames.
    pub sealer: Sealer,
    /// Opens the other side's frames.
    pub opener: Opener,
}

impl Channel {
    fn new(send: &[u8; 32], receive: &[u8; 32]) -> Self {
        Channel {
            sealer: Sealer {
                cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(send)),
                next: HANDSHAKE_FRAMES + 1,
            },
            opener: Opener {
                cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(receive)),
                next: HANDSHAKE_FRAMES + 1,
                ended: false,
            },
        }
    }
}

fn nonce(n: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&n.to_be_bytes());
    nonce
}

/// Seals this side's frames, numbered as the relay counts them.
pub struct Sealer {
    cipher: Aes256Gcm,
    /// The number of the next frame this side sends.
    next: u64,
}

impl Sealer {
    /// The sealed binary frame of `plain` as the next frame; call
    /// [`Sealer::sent`] once the frame is on its way (a frame that was not
    /// sent does not take a number).
    pub fn seal(&self, plain: &Plain) -> Vec<u8> {
        let aad = [SEALED_VERSION];
        let msg = plain.encode();
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce(self.next)),
                AeadPayload {
                    msg: &msg,
                    aad: &aad,
                },
            )
            // AES-GCM fails only beyond 64 GiB in one message.
            .unwrap_or_default();
        let mut frame = Vec::with_capacity(1 + ct.len());
        frame.push(SEALED_VERSION);
        frame.extend(ct);
        frame
    }

    /// The frame last sealed was sent: the next one takes the next number.
    pub fn sent(&mut self) {
        self.next += 1;
    }

    /// The number the next sealed frame takes.
    pub fn next(&self) -> u64 {
        self.next
    }
}

/// Opens the other side's frames, in order, each once.
pub struct Opener {
    cipher: Aes256Gcm,
    /// The number the next frame from the other side must have.
    next: u64,
    /// The other side sent `end`.
    ended: bool,
}

impl Opener {
    /// Opens the next frame from the other side.
    ///
    /// # Errors
    /// [`Tampered`] when it is not the next frame sealed by the other side,
    /// or comes after its `end`.
    pub fn open(&mut self, frame: &[u8]) -> Result<Plain, Tampered> {
        let n = self.next;
        let refuse = |why: &str| Tampered {
            n,
            why: why.to_owned(),
        };
        if self.ended {
            return Err(refuse("came after its end of session"));
        }
        let Some((&version, ct)) = frame.split_first() else {
            return Err(refuse("is empty"));
        };
        if version != SEALED_VERSION {
            return Err(refuse("is not a sealed frame"));
        }
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(&nonce(n)),
                AeadPayload {
                    msg: ct,
                    aad: &[SEALED_VERSION],
                },
            )
            .map_err(|_| {
                refuse("does not open: altered, dropped, replayed or reordered on the way")
            })?;
        let plain = Plain::decode(plain).map_err(|e| refuse(&e))?;
        self.next += 1;
        if plain == Plain::End {
            self.ended = true;
        }
        Ok(plain)
    }

    /// The other side sent `end` (its leaving was not a truncation).
    pub fn ended(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests;
