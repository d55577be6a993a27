//! Tickets: the signed JWT a portal hands the browser (DESIGN §2 "Ticket").
//!
//! Owns parsing, HS256 verification, claim checks, minting and the
//! replay key. Pure code: no clock, no I/O; `now` is unix seconds.
//!
//! ```text
//!  eyJhbGciOi… . eyJleHAiOj… . dWmw1uUftS…      compact JWS, RFC 7515 §7.1
//!  └─ header ─┘   └─ claims ─┘  └─ MAC ────┘     base64url, no `=`
//!  └──── signing input (ASCII) ─┘                HMAC-SHA256(key[kid], input)
//!
//!  header  {"alg":"HS256","kid":"k1","typ":"JWT"}
//!  claims  {"exp":…,"iat":…,"jti":"…","sub":"…","upstream":"pve1",
//!           "console":"vnc", optional nbf aud node vmid guest ip max_session
//!           mode record}
//! ```
//!
//! Order of work, cheapest and most hostile first: length cap, shape,
//! base64, header, key lookup, MAC, and only then the claims JSON, so an
//! unauthenticated sender never reaches the claim parser.
//!
//! `verify` does not go through the serde derives on [`Claims`]: it reads
//! the claims by hand so every wrong type names its claim and `null`,
//! floats, negatives and duplicate keys are refused.

use std::cell::Cell;
use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use ring::hmac;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

/// Longest token accepted, in bytes, checked before any decoding.
///
/// Bounds the work an unauthenticated handshake can cause; real tickets
/// are a few hundred bytes.
pub const MAX_TICKET_LEN: usize = 4096;

/// Shortest HMAC key accepted, in bytes.
///
/// > A key of the same size as the hash output (for instance, 256 bits
/// > for "HS256") or larger MUST be used with this algorithm.
/// > — RFC 7518 §3.2
pub const MIN_KEY_LEN: usize = 32;

/// `jti` length bounds, in characters: long enough to be unguessable,
/// short enough for replay caches.
const JTI_LEN: (usize, usize) = (16, 128);
/// Longest `sub`, in characters (it lands in audit lines).
const SUB_MAX: usize = 256;
/// Longest `upstream`, in characters (a config table name).
const UPSTREAM_MAX: usize = 128;

/// One HS256 verification key, named by the `kid` header.
///
/// Holds only ring's prepared key: the secret bytes are dropped after
/// construction, and `Debug` shows the id alone.
#[derive(Clone)]
pub struct Key {
    id: String,
    hmac: hmac::Key,
    /// The secret is one anybody can know (see [`is_well_known_secret`]).
    well_known: bool,
}

/// SHA-256 of secrets published in this repository's README, configs and
/// tests, whatever their pattern; the patterns below cover the rest.
const PUBLISHED: &[[u8; 32]] = &[];

/// True for secrets nobody should sign tickets with: every byte the same
/// (all-zero included), a run counting up or down by one (the bytes 0..31
/// of the README, config and test examples; `defghi…`), or a secret
/// published in this repository ([`PUBLISHED`]).
pub fn is_well_known_secret(secret: &[u8]) -> bool {
    let Some(&first) = secret.first() else {
        return true;
    };
    let same = secret.iter().all(|&b| b == first);
    let up = secret.windows(2).all(|w| w[1] == w[0].wrapping_add(1));
    let down = secret.windows(2).all(|w| w[1] == w[0].wrapping_sub(1));
    let digest: [u8; 32] = Sha256::digest(secret).into();
    same || up || down || PUBLISHED.contains(&digest)
}

impl Key {
    /// Builds a key from its id and base64 secret.
    ///
    /// Accepts the standard or url-safe alphabet, padded or not, and trims
    /// surrounding ASCII whitespace (secret files end in a newline).
    /// Mixing the two alphabets is refused.
    ///
    /// # Errors
    /// [`KeyError`] when the id is empty, the secret is not base64 or it
    /// decodes to fewer than [`MIN_KEY_LEN`] bytes.
    pub fn from_secret_b64(id: &str, secret_b64: &str) -> Result<Key, KeyError> {
        if id.is_empty() {
            return Err(KeyError::EmptyId);
        }
        let text = secret_b64.trim_ascii();
        let url = text.contains(['-', '_']);
        let std = text.contains(['+', '/']);
        if url && std {
            return Err(KeyError::BadBase64);
        }
        let cfg = GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent);
        let engine = if url {
            GeneralPurpose::new(&alphabet::URL_SAFE, cfg)
        } else {
            GeneralPurpose::new(&alphabet::STANDARD, cfg)
        };
        let secret = engine.decode(text).map_err(|_| KeyError::BadBase64)?;
        if secret.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort {
                bytes: secret.len(),
            });
        }
        Ok(Key {
            id: id.to_owned(),
            hmac: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            well_known: is_well_known_secret(&secret),
        })
    }

    /// The secret is a sample anybody can know ([`is_well_known_secret`]):
    /// the config loader refuses such keys.
    pub fn is_well_known(&self) -> bool {
        self.well_known
    }

    /// The key id, as matched against the `kid` header.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a configured key was refused. Never carries the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// The secret is not base64 (standard or url-safe).
    BadBase64,
    /// The decoded secret is shorter than [`MIN_KEY_LEN`].
    TooShort {
        /// Decoded length, so the operator knows how far off it is.
        bytes: usize,
    },
    /// The key id is empty, so no `kid` could name it.
    EmptyId,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::BadBase64 => f.write_str("key secret is not valid base64"),
            KeyError::TooShort { bytes } => write!(
                f,
                "key secret is {bytes} bytes, HS256 needs at least {MIN_KEY_LEN}"
            ),
            KeyError::EmptyId => f.write_str("key id is empty"),
        }
    }
}

impl std::error::Error for KeyError {}

/// The configured keys; several at once so secrets can rotate.
///
/// Lookup is by `kid`; with duplicate ids the first wins, so config
/// validation should refuse duplicates.
#[derive(Clone, Default)]
pub struct KeyRing {
    keys: Vec<Key>,
}

impl KeyRing {
    /// Wraps the keys, in config order.
    #[must_use]
    pub fn new(keys: Vec<Key>) -> Self {
        KeyRing { keys }
    }

    /// The key a `kid` names, if any.
    #[must_use]
    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == kid)
    }

    /// The first configured key: the one `ticket mint` signs with.
    #[must_use]
    pub fn first(&self) -> Option<&Key> {
        self.keys.first()
    }

    /// How many keys are configured.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.id))
            .finish()
    }
}

/// What the relay demands of a ticket beyond its signature (`[tickets]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Longest allowed `exp - iat`, seconds: caps what a leaked ticket is worth.
    pub max_ttl: u64,
    /// Clock skew tolerated between portal and relay, seconds.
    pub leeway: u64,
    /// When set, `aud` must equal it, so one ticket opens one relay only.
    pub audience: Option<String>,
}

/// Which console the ticket opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Console {
    /// Graphical console, noVNC (`"vnc"`).
    Vnc,
    /// Terminal console, xterm.js (`"term"`).
    Term,
}

/// Proxmox guest kind, which picks the API path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Guest {
    /// A QEMU virtual machine (`"qemu"`).
    Qemu,
    /// An LXC container (`"lxc"`).
    Lxc,
}

/// What the browser may do on the console (`mode` claim, docs/design.md §2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Input reaches the console (`"control"`, the default).
    #[default]
    Control,
    /// The relay drops every input message (`"view"`): src/relay/viewonly.rs.
    View,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Control => "control",
            Mode::View => "view",
        }
    }

    fn is_control(&self) -> bool {
        *self == Mode::Control
    }
}

/// The verified claims of a ticket (DESIGN §2 claim table).
///
/// `Debug` prints the `jti`, which is a bearer secret until used:
/// log [`Claims::replay_key`] instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Connect-by deadline, unix seconds.
    pub exp: u64,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Not before, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Unique ticket id, 16–128 characters: the replay and reconnect key.
    pub jti: String,
    /// Customer / user id, for audit and per-user limits.
    pub sub: String,
    /// Relay id the ticket is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Name of a configured upstream.
    pub upstream: String,
    /// Proxmox node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Proxmox VM / container id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmid: Option<u64>,
    /// Proxmox guest kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Guest>,
    /// Graphical or terminal console.
    pub console: Console,
    /// The only client IP allowed to use the ticket (unparsed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Session lifetime cap, seconds (the caller clamps it to config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_session: Option<u64>,
    /// View only or control (absent: control).
    #[serde(default, skip_serializing_if = "Mode::is_control")]
    pub mode: Mode,
    /// Record this console (`"record": true`; docs/recording.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record: bool,
}

/// Why a ticket was refused: one variant per rule.
///
/// Carries no token bytes, claim values or key material, so it is safe
/// to log, count and send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketError {
    /// Longer than [`MAX_TICKET_LEN`].
    TooLarge,
    /// Not exactly three `.`-separated segments.
    Malformed,
    /// A segment is not strict base64url without padding.
    BadBase64,
    /// The signature segment is empty (`alg: none` style).
    EmptySignature,
    /// The header is not a JSON object.
    BadHeader,
    /// A JSON object in the header or claims repeats a key; parsers
    /// disagree on which copy wins, so neither is trusted.
    DuplicateKey,
    /// `alg` missing or not exactly `"HS256"`.
    BadAlgorithm,
    /// No `kid` in the header.
    MissingKid,
    /// `kid` is not a string.
    BadKid,
    /// `kid` names no configured key.
    UnknownKid,
    /// `typ` present but not the string `"JWT"` (any case).
    BadTyp,
    /// A `crit` header: extensions we do not implement must not be ignored
    /// (RFC 7515 §4.1.11).
    CritHeader,
    /// The MAC does not match.
    BadSignature,
    /// The claims are not a JSON object.
    MalformedClaims,
    /// A required claim is absent.
    MissingClaim(&'static str),
    /// A claim has the wrong type, length or value.
    BadClaim(&'static str),
    /// `now` is at or past `exp + leeway`.
    Expired,
    /// `iat` is more than `leeway` in the future.
    IssuedInFuture,
    /// `nbf` is more than `leeway` in the future.
    NotYetValid,
    /// `exp - iat` exceeds `max_ttl`.
    TtlTooLong,
    /// The relay requires an audience and the ticket has none.
    MissingAudience,
    /// The ticket is bound to another relay.
    WrongAudience,
}

impl TicketError {
    /// Every label [`TicketError::label`] can return, for metrics
    /// that declare their label set up front.
    pub const LABELS: [&'static str; 22] = [
        "too_large",
        "malformed",
        "bad_base64",
        "empty_signature",
        "bad_header",
        "duplicate_key",
        "bad_algorithm",
        "missing_kid",
        "bad_kid",
        "unknown_kid",
        "bad_typ",
        "crit_header",
        "bad_signature",
        "malformed_claims",
        "missing_claim",
        "bad_claim",
        "expired",
        "issued_in_future",
        "not_yet_valid",
        "ttl_too_long",
        "missing_audience",
        "wrong_audience",
    ];

    /// Stable `snake_case` label for metrics and audit lines.
    ///
    /// Claim names are left out so the label set stays fixed.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            TicketError::TooLarge => "too_large",
            TicketError::Malformed => "malformed",
            TicketError::BadBase64 => "bad_base64",
            TicketError::EmptySignature => "empty_signature",
            TicketError::BadHeader => "bad_header",
            TicketError::DuplicateKey => "duplicate_key",
            TicketError::BadAlgorithm => "bad_algorithm",
            TicketError::MissingKid => "missing_kid",
            TicketError::BadKid => "bad_kid",
            TicketError::UnknownKid => "unknown_kid",
            TicketError::BadTyp => "bad_typ",
            TicketError::CritHeader => "crit_header",
            TicketError::BadSignature => "bad_signature",
            TicketError::MalformedClaims => "malformed_claims",
            TicketError::MissingClaim(_) => "missing_claim",
            TicketError::BadClaim(_) => "bad_claim",
            TicketError::Expired => "expired",
            TicketError::IssuedInFuture => "issued_in_future",
            TicketError::NotYetValid => "not_yet_valid",
            TicketError::TtlTooLong => "ttl_too_long",
            TicketError::MissingAudience => "missing_audience",
            TicketError::WrongAudience => "wrong_audience",
        }
    }

    /// HTTP status for the handshake: 401, or 403 when a valid ticket is
    /// bound to another relay (DESIGN §2 status table).
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            TicketError::WrongAudience => 403,
            _ => 401,
        }
    }
}

impl fmt::Display for TicketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            TicketError::TooLarge => "ticket too large",
            TicketError::Malformed => "ticket is not a compact JWS",
            TicketError::BadBase64 => "ticket is not base64url",
            TicketError::EmptySignature => "ticket is unsigned",
            TicketError::BadHeader => "ticket header is not a JSON object",
            TicketError::DuplicateKey => "ticket repeats a JSON key",
            TicketError::BadAlgorithm => "ticket algorithm is not HS256",
            TicketError::MissingKid => "ticket has no key id",
            TicketError::BadKid => "ticket key id is not a string",
            TicketError::UnknownKid => "ticket key id is unknown",
            TicketError::BadTyp => "ticket type is not JWT",
            TicketError::CritHeader => "ticket has critical header extensions",
            TicketError::BadSignature => "ticket signature is invalid",
            TicketError::MalformedClaims => "ticket claims are not a JSON object",
            TicketError::MissingClaim(name) => return write!(f, "ticket claim {name} missing"),
            TicketError::BadClaim(name) => return write!(f, "ticket claim {name} invalid"),
            TicketError::Expired => "ticket expired",
            TicketError::IssuedInFuture => "ticket issued in the future",
            TicketError::NotYetValid => "ticket not yet valid",
            TicketError::TtlTooLong => "ticket lifetime exceeds max_ttl",
            TicketError::MissingAudience => "ticket has no audience",
            TicketError::WrongAudience => "ticket is for another relay",
        };
        f.write_str(text)
    }
}

impl std::error::Error for TicketError {}

/// Verifies a ticket completely: signature, claims, time and audience.
///
/// # Errors
/// The first rule the ticket breaks, as a [`TicketError`].
pub fn verify(
    token: &str,
    keys: &KeyRing,
    policy: &Policy,
    now: u64,
) -> Result<Claims, TicketError> {
    let claims = verify_signature(token, keys)?;
    claims.check_time(policy, now)?;
    claims.check_audience(policy)?;
    Ok(claims)
}

/// Verifies everything except time and audience.
///
/// For the reconnect grant, which honours a ticket past `exp`; anyone
/// else wants [`verify`].
///
/// # Errors
/// As [`verify`], less the time and audience variants.
pub fn verify_signature(token: &str, keys: &KeyRing) -> Result<Claims, TicketError> {
    let parts = split(token)?;
    let header = parse_object(&parts.header, TicketError::BadHeader)?;
    let key = check_header(&header, keys)?;
    // After the header, so `alg: none` tokens are counted as such.
    if parts.signature.is_empty() {
        return Err(TicketError::EmptySignature);
    }
    hmac::verify(&key.hmac, parts.signing_input.as_bytes(), &parts.signature)
        .map_err(|_| TicketError::BadSignature)?;
    let claims = parse_object(&parts.payload, TicketError::MalformedClaims)?;
    claims_from_map(&claims)
}

/// Decodes header and claims without checking the MAC, for
/// `ticket inspect`.
///
/// Applies the same shape rules as [`verify`] (length, segments, strict
/// base64url, non-empty signature, JSON objects, no duplicate keys), so
/// it never shows as well-formed what `verify` would call malformed.
/// The result is unauthenticated: never act on it.
///
/// # Errors
/// The shape variants of [`TicketError`], up to `MalformedClaims`.
pub fn decode_unverified(token: &str) -> Result<(Value, Value), TicketError> {
    let parts = split(token)?;
    let header = parse_object(&parts.header, TicketError::BadHeader)?;
    if parts.signature.is_empty() {
        return Err(TicketError::EmptySignature);
    }
    let claims = parse_object(&parts.payload, TicketError::MalformedClaims)?;
    Ok((Value::Object(header), Value::Object(claims)))
}

/// Signs claims as a compact JWS with `key`.
///
/// The header is exactly `{"alg":"HS256","kid":"<id>","typ":"JWT"}`;
/// absent optional claims are left out, not `null`. Claims are not
/// validated here: verify the result if they came from a person.
#[must_use]
pub fn mint(claims: &Claims, key: &Key) -> String {
    let header = format!(
        r#"{{"alg":"HS256","kid":{},"typ":"JWT"}}"#,
        Value::String(key.id.clone())
    );
    let payload = Value::Object(claims_to_map(claims)).to_string();
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let tag = hmac::sign(&key.hmac, token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut token);
    token
}

impl Claims {
    /// Checks the time claims against `now`, in this order: expired,
    /// issued in the future, not yet valid, lifetime over `max_ttl`.
    ///
    /// > The processing of the "exp" claim requires that the current
    /// > date/time MUST be before the expiration date/time.
    /// > — RFC 7519 §4.1.4
    ///
    /// # Errors
    /// `Expired`, `IssuedInFuture`, `NotYetValid` or `TtlTooLong`.
    pub fn check_time(&self, policy: &Policy, now: u64) -> Result<(), TicketError> {
        let late = now.saturating_add(policy.leeway);
        if self.exp.saturating_add(policy.leeway) <= now {
            return Err(TicketError::Expired);
        }
        if self.iat > late {
            return Err(TicketError::IssuedInFuture);
        }
        if self.nbf.is_some_and(|nbf| nbf > late) {
            return Err(TicketError::NotYetValid);
        }
        if self.exp.saturating_sub(self.iat) > policy.max_ttl {
            return Err(TicketError::TtlTooLong);
        }
        Ok(())
    }

    /// Checks `aud` when the relay is configured with an audience;
    /// without one, any `aud` is accepted.
    ///
    /// # Errors
    /// `MissingAudience` (401) or `WrongAudience` (403).
    pub fn check_audience(&self, policy: &Policy) -> Result<(), TicketError> {
        let Some(want) = &policy.audience else {
            return Ok(());
        };
        match &self.aud {
            None => Err(TicketError::MissingAudience),
            Some(aud) if aud == want => Ok(()),
            Some(_) => Err(TicketError::WrongAudience),
        }
    }

    /// SHA-256 of the `jti`: the key for replay caches and audit lines,
    /// because the raw `jti` is a bearer secret until it is used.
    #[must_use]
    pub fn replay_key(&self) -> [u8; 32] {
        Sha256::digest(self.jti.as_bytes()).into()
    }
}

/// A token cut into its segments, base64 already undone.
struct Parts<'a> {
    /// `header_b64 "." payload_b64`, exactly as sent: what the MAC covers.
    signing_input: &'a str,
    header: Vec<u8>,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

fn split(token: &str) -> Result<Parts<'_>, TicketError> {
    if token.len() > MAX_TICKET_LEN {
        return Err(TicketError::TooLarge);
    }
    let mut segments = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(TicketError::Malformed);
    };
    // URL_SAFE_NO_PAD refuses `=`, `+`, `/`, whitespace and non-zero
    // trailing bits, so every token has exactly one spelling.
    let b64 = |seg: &str| {
        URL_SAFE_NO_PAD
            .decode(seg)
            .map_err(|_| TicketError::BadBase64)
    };
    Ok(Parts {
        signing_input: &token[..h.len() + 1 + p.len()],
        header: b64(h)?,
        payload: b64(p)?,
        signature: b64(s)?,
    })
}

/// Checks alg, crit, typ and kid; returns the key the MAC must match.
fn check_header<'k>(
    header: &Map<String, Value>,
    keys: &'k KeyRing,
) -> Result<&'k Key, TicketError> {
    // Exact match: RFC 7515 §4.1.1 makes "alg" case-sensitive.
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(TicketError::BadAlgorithm);
    }
    if header.contains_key("crit") {
        return Err(TicketError::CritHeader);
    }
    if let Some(typ) = header.get("typ") {
        // RFC 7519 §5.1: "JWT", compared case-insensitively.
        if !typ.as_str().is_some_and(|t| t.eq_ignore_ascii_case("JWT")) {
            return Err(TicketError::BadTyp);
        }
    }
    let kid = match header.get("kid") {
        None => return Err(TicketError::MissingKid),
        Some(Value::String(kid)) => kid,
        Some(_) => return Err(TicketError::BadKid),
    };
    keys.get(kid).ok_or(TicketError::UnknownKid)
}

/// Parses one segment as a JSON object, refusing duplicate keys at any
/// depth. `not_object` is the error for anything else.
fn parse_object(bytes: &[u8], not_object: TicketError) -> Result<Map<String, Value>, TicketError> {
    let dup = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Strict(&dup)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(Value::Object(map)) => Ok(map),
        Err(_) if dup.get() => Err(TicketError::DuplicateKey),
        _ => Err(not_object),
    }
}

/// Builds a `serde_json::Value` as `serde_json` does, but fails on a
/// repeated object key (`serde_json` keeps the last copy silently).
/// The flag tells that failure apart from a syntax error.
#[derive(Clone, Copy)]
struct Strict<'a>(&'a Cell<bool>);

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity, so this is never Null in practice.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                self.0.set(true);
                return Err(de::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(self)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// Reads the claims by hand: each wrong type names its claim.
fn claims_from_map(m: &Map<String, Value>) -> Result<Claims, TicketError> {
    Ok(Claims {
        exp: required(m, "exp", int)?,
        iat: required(m, "iat", int)?,
        nbf: optional(m, "nbf", int)?,
        jti: required(m, "jti", |v| text(v, JTI_LEN.0, JTI_LEN.1))?,
        sub: required(m, "sub", |v| text(v, 1, SUB_MAX))?,
        aud: optional(m, "aud", audience)?,
        upstream: required(m, "upstream", |v| text(v, 1, UPSTREAM_MAX))?,
        node: optional(m, "node", |v| text(v, 0, usize::MAX))?,
        vmid: optional(m, "vmid", int)?,
        guest: optional(m, "guest", |v| match v.as_str()? {
            "qemu" => Some(Guest::Qemu),
            "lxc" => Some(Guest::Lxc),
            _ => None,
        })?,
        console: required(m, "console", |v| match v.as_str()? {
            "vnc" => Some(Console::Vnc),
            "term" => Some(Console::Term),
            _ => None,
        })?,
        ip: optional(m, "ip", |v| text(v, 0, usize::MAX))?,
        max_session: optional(m, "max_session", int)?,
        mode: optional(m, "mode", |v| match v.as_str()? {
            "control" => Some(Mode::Control),
            "view" => Some(Mode::View),
            _ => None,
        })?
        .unwrap_or_default(),
        record: optional(m, "record", serde_json::Value::as_bool)?.unwrap_or(false),
    })
}

fn required<T>(
    m: &Map<String, Value>,
    name: &'static str,
    read: impl Fn(&Value) -> Option<T>,
) -> Result<T, TicketError> {
    let v = m.get(name).ok_or(TicketError::MissingClaim(name))?;
    read(v).ok_or(TicketError::BadClaim(name))
}

/// An optional claim; `null` is a wrong type, not absence, so a portal
/// bug shows up instead of silently dropping a binding such as `ip`.
fn optional<T>(
    m: &Map<String, Value>,
    name: &'static str,
    read: impl Fn(&Value) -> Option<T>,
) -> Result<Option<T>, TicketError> {
    m.get(name)
        .map(|v| read(v).ok_or(TicketError::BadClaim(name)))
        .transpose()
}

/// A non-negative JSON integer: strings, floats (even `1.0`) and
/// negatives are refused.
fn int(v: &Value) -> Option<u64> {
    v.as_u64()
}

/// A string of `min..=max` characters without control characters, which
/// would forge lines in logs and audit.
fn text(v: &Value, min: usize, max: usize) -> Option<String> {
    let s = v.as_str()?;
    let n = s.chars().count();
    ((min..=max).contains(&n) && !s.chars().any(char::is_control)).then(|| s.to_owned())
}

/// `aud` as a string, or an array of exactly one string (`PyJWT` and
/// php-jwt let portals send a list); longer lists are refused because a
/// ticket valid at several relays defeats per-relay single use.
fn audience(v: &Value) -> Option<String> {
    match v {
        Value::Array(items) => match items.as_slice() {
            [one] => text(one, 0, usize::MAX),
            _ => None,
        },
        _ => text(v, 0, usize::MAX),
    }
}

/// The JSON `mint` signs: what [`claims_from_map`] reads back.
fn claims_to_map(c: &Claims) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_owned(), v);
    };
    put("exp", c.exp.into());
    put("iat", c.iat.into());
    if let Some(nbf) = c.nbf {
        put("nbf", nbf.into());
    }
    put("jti", c.jti.clone().into());
    put("sub", c.sub.clone().into());
    if let Some(aud) = &c.aud {
        put("aud", aud.clone().into());
    }
    put("upstream", c.upstream.clone().into());
    if let Some(node) = &c.node {
        put("node", node.clone().into());
    }
    if let Some(vmid) = c.vmid {
        put("vmid", vmid.into());
    }
    if let Some(guest) = c.guest {
        let g = match guest {
            Guest::Qemu => "qemu",
            Guest::Lxc => "lxc",
        };
        put("guest", g.into());
    }
    let console = match c.console {
        Console::Vnc => "vnc",
        Console::Term => "term",
    };
    put("console", console.into());
    if let Some(ip) = &c.ip {
        put("ip", ip.clone().into());
    }
    if let Some(max) = c.max_session {
        put("max_session", max.into());
    }
    if c.mode != Mode::Control {
        put("mode", c.mode.as_str().into());
    }
    if c.record {
        put("record", true.into());
    }
    m
}

#[cfg(test)]
mod tests;
