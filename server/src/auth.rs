//! Who may do what. Four roles, and what proves each:
//!
//! | role | credential | may |
//! |---|---|---|
//! | driver | a driver token (`POST /api/drivers/enter`, or minted by the fleet) | send its own pings; create and revoke its share links |
//! | viewer | a share token (made by the driver, or the fleet) | watch that one driver until the link expires or is revoked |
//! | fleet | the fleet API key | send pings for any driver, and orders; mint driver tokens and share links; nearest drivers |
//! | customer | an order token (`POST /api/orders`) | watch and cancel that one order |
//! | admin | the admin key | all the fleet may, plus `/metrics` and revoking any driver's links |
//!
//! The heat (counts, never identities) and `/healthz` stay public.
//!
//! Tokens are `v1.<kind>.<driver id>.<issued ms>.<expires ms>.<mac>`, the MAC being HMAC-SHA256 under the
//! server's secret over everything before it (base64url). They need no lookup to check; revoking share links is
//! a per-driver time (links issued at or before it are dead), kept until the longest link could have expired.
//! The keys are compared through the same MAC, so the comparison takes the same time whatever matches.

use std::{collections::HashMap, time::Duration};

use axum::http::{header, HeaderMap};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use protocol::problem::{ErrorCode, Problem};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The shortest secret accepted from the operator.
pub const MIN_SECRET_BYTES: usize = 32;

/// What a credential proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Driver { driver_id: String, expires_ms: i64 },
    Viewer { driver_id: String, issued_ms: i64, expires_ms: i64 },
    Customer { order_id: String, expires_ms: i64 },
    Fleet,
    Admin,
}

impl Role {
    /// Whether this role may send pings as `driver_id`.
    pub fn may_ping_as(&self, driver_id: &str) -> bool {
        match self {
            Role::Driver { driver_id: id, .. } => id == driver_id,
            Role::Fleet | Role::Admin => true,
            Role::Viewer { .. } | Role::Customer { .. } => false,
        }
    }

    /// Whether this role may send pings at all (a driver its own, the fleet any driver's).
    pub fn may_send_pings(&self) -> bool {
        matches!(self, Role::Driver { .. } | Role::Fleet | Role::Admin)
    }

    /// Whether this role may see and cancel `order_id`: its customer, or the fleet.
    pub fn may_see_order(&self, order_id: &str) -> bool {
        match self {
            Role::Customer { order_id: id, .. } => id == order_id,
            Role::Fleet | Role::Admin => true,
            Role::Driver { .. } | Role::Viewer { .. } => false,
        }
    }

    /// Whether this role may act for the fleet (orders, nearest drivers, minting tokens).
    pub fn is_fleet(&self) -> bool {
        matches!(self, Role::Fleet | Role::Admin)
    }

    /// Whether this role may watch `driver_id`.
    pub fn may_track(&self, driver_id: &str) -> bool {
        match self {
            Role::Viewer { driver_id: id, .. } => id == driver_id,
            Role::Fleet | Role::Admin => true,
            Role::Driver { .. } | Role::Customer { .. } => false,
        }
    }

    /// Whether this role may read the driver's history (its trail): the driver itself, or the fleet. A share
    /// link follows the driver now, not where it went before.
    pub fn may_see_history_of(&self, driver_id: &str) -> bool {
        match self {
            Role::Driver { driver_id: id, .. } => id == driver_id,
            Role::Fleet | Role::Admin => true,
            Role::Viewer { .. } | Role::Customer { .. } => false,
        }
    }

    /// When the credential stops working (keys do not expire).
    pub fn expires_ms(&self) -> Option<i64> {
        match self {
            Role::Driver { expires_ms, .. } | Role::Viewer { expires_ms, .. } | Role::Customer { expires_ms, .. } => {
                Some(*expires_ms)
            }
            Role::Fleet | Role::Admin => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Driver,
    Share,
    /// An order's customer token (its subject is the order id).
    Order,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Driver => "drv",
            Kind::Share => "shr",
            Kind::Order => "ord",
        }
    }
}

/// A token just made, and when it ends.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Issued {
    pub driver_id: String,
    pub token: String,
    pub expires_ms: i64,
}

pub struct Auth {
    secret: Vec<u8>,
    /// MACs of the configured keys (`None`: that role is off).
    fleet_key: Option<Vec<u8>>,
    admin_key: Option<Vec<u8>>,
    /// Per driver: share links issued at or before this time are revoked.
    revoked: Mutex<HashMap<String, i64>>,
    /// The longest a share link lives: how long a revocation must be remembered.
    max_share: Duration,
}

/// Where the secret came from, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    Configured,
    Generated,
}

impl Auth {
    /// `secret`: the operator's (at least [`MIN_SECRET_BYTES`]), or `None` to make a random one for this process.
    pub fn new(
        secret: Option<&str>,
        fleet_key: Option<&str>,
        admin_key: Option<&str>,
        max_share: Duration,
    ) -> anyhow::Result<(Auth, SecretSource)> {
        let (secret, source) = match secret.filter(|s| !s.is_empty()) {
            Some(s) if s.len() < MIN_SECRET_BYTES => {
                anyhow::bail!("the secret is {} bytes; it must be at least {MIN_SECRET_BYTES}", s.len())
            }
            Some(s) => (s.as_bytes().to_vec(), SecretSource::Configured),
            None => {
                let mut bytes = vec![0u8; 32];
                getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a secret: {e}"))?;
                (bytes, SecretSource::Generated)
            }
        };
        let mut auth = Auth { secret, fleet_key: None, admin_key: None, revoked: Mutex::default(), max_share };
        auth.fleet_key = auth.key_mac("fleet", fleet_key)?;
        auth.admin_key = auth.key_mac("admin", admin_key)?;
        Ok((auth, source))
    }

    /// What a configured key is stored as (`None`: not configured, so that role is off).
    fn key_mac(&self, name: &str, key: Option<&str>) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(key) = key.filter(|k| !k.is_empty()) else { return Ok(None) };
        if key.len() < 16 {
            anyhow::bail!("the {name} key is {} bytes; it must be at least 16", key.len());
        }
        Ok(Some(self.mac(&["key", key])))
    }

    fn mac(&self, parts: &[&str]) -> Vec<u8> {
        self.keyed(parts).finalize().into_bytes().to_vec()
    }

    fn keyed(&self, parts: &[&str]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                mac.update(b".");
            }
            mac.update(part.as_bytes());
        }
        mac
    }

    pub fn fleet_enabled(&self) -> bool {
        self.fleet_key.is_some()
    }

    pub fn admin_enabled(&self) -> bool {
        self.admin_key.is_some()
    }

    /// A token of `kind` for `driver_id`, valid for `ttl` from `now_ms`. A share link is never issued at or
    /// before the driver's revocation time, so a link made right after "stop sharing" works.
    pub fn issue(&self, kind: Kind, driver_id: &str, ttl: Duration, now_ms: i64) -> Issued {
        let issued = match kind {
            Kind::Share => self.revoked.lock().get(driver_id).map_or(now_ms, |r| now_ms.max(r + 1)),
            Kind::Driver | Kind::Order => now_ms,
        };
        let expires_ms = issued + ttl.as_millis() as i64;
        let (issued_s, expires_s) = (issued.to_string(), expires_ms.to_string());
        let body = ["v1", kind.tag(), driver_id, &issued_s, &expires_s];
        let mac = B64.encode(self.mac(&body));
        Issued { driver_id: driver_id.to_string(), token: format!("{}.{mac}", body.join(".")), expires_ms }
    }

    /// What `credential` (a token or a key) proves at `now_ms`.
    pub fn verify(&self, credential: &str, now_ms: i64) -> Result<Role, Problem> {
        let credential = credential.trim();
        if credential.starts_with("v1.") {
            return self.verify_token(credential, now_ms);
        }
        let matches = |stored: &Option<Vec<u8>>| {
            stored.as_ref().is_some_and(|mac| self.keyed(&["key", credential]).verify_slice(mac).is_ok())
        };
        if matches(&self.admin_key) {
            Ok(Role::Admin)
        } else if matches(&self.fleet_key) {
            Ok(Role::Fleet)
        } else {
            Err(invalid("the credential is neither a pulsemap token nor a configured key"))
        }
    }

    fn verify_token(&self, token: &str, now_ms: i64) -> Result<Role, Problem> {
        let parts: Vec<&str> = token.split('.').collect();
        let [version, kind, driver_id, issued, expires, mac] = parts[..] else {
            return Err(invalid("a token has six dot-separated parts"));
        };
        let mac = B64.decode(mac).map_err(|_| invalid("the token's signature is not base64url"))?;
        if self.keyed(&[version, kind, driver_id, issued, expires]).verify_slice(&mac).is_err() {
            return Err(invalid("the token's signature does not match (made by another server, or altered)"));
        }
        let (Ok(issued_ms), Ok(expires_ms)) = (issued.parse::<i64>(), expires.parse::<i64>()) else {
            return Err(invalid("the token's times are not numbers"));
        };
        if now_ms >= expires_ms {
            return Err(Problem::field(ErrorCode::TokenExpired, "token", "the token has expired"));
        }
        match kind {
            "drv" => Ok(Role::Driver { driver_id: driver_id.to_string(), expires_ms }),
            "shr" => {
                if self.is_revoked(driver_id, issued_ms) {
                    return Err(revoked());
                }
                Ok(Role::Viewer { driver_id: driver_id.to_string(), issued_ms, expires_ms })
            }
            "ord" => Ok(Role::Customer { order_id: driver_id.to_string(), expires_ms }),
            _ => Err(invalid("unknown token kind")),
        }
    }

    /// Whether a share link for `driver_id` issued at `issued_ms` has been revoked.
    pub fn is_revoked(&self, driver_id: &str, issued_ms: i64) -> bool {
        self.revoked.lock().get(driver_id).is_some_and(|before| issued_ms <= *before)
    }

    /// Revokes every share link of `driver_id` issued at or before `before_ms`. Entries older than the longest
    /// link are forgotten, so the map holds at most the drivers revoked within that time.
    pub fn revoke(&self, driver_id: &str, before_ms: i64) {
        let mut revoked = self.revoked.lock();
        // Known already (each of the driver's trackers hears of a revocation): nothing to do.
        if revoked.get(driver_id).is_some_and(|at| *at >= before_ms) {
            return;
        }
        let forget_before = before_ms - self.max_share.as_millis() as i64;
        revoked.retain(|_, at| *at > forget_before);
        let at = revoked.entry(driver_id.to_string()).or_insert(before_ms);
        *at = (*at).max(before_ms);
    }

    /// The role the request's `Authorization: Bearer` header proves, if it has one.
    pub fn from_headers(&self, headers: &HeaderMap, now_ms: i64) -> Result<Option<Role>, Problem> {
        let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
        let value = value.to_str().map_err(|_| invalid("the Authorization header is not text"))?;
        let credential = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| invalid("use `Authorization: Bearer <token or key>`"))?;
        self.verify(credential, now_ms).map(Some)
    }

    /// The request's role, which must be one `allowed` accepts.
    pub fn require(
        &self,
        headers: &HeaderMap,
        now_ms: i64,
        what: &str,
        allowed: impl FnOnce(&Role) -> bool,
    ) -> Result<Role, Problem> {
        match self.from_headers(headers, now_ms)? {
            Some(role) if allowed(&role) => Ok(role),
            Some(_) => {
                Err(Problem::field(ErrorCode::Forbidden, "authorization", format!("this credential may not {what}")))
            }
            None => Err(Problem::field(
                ErrorCode::Unauthorized,
                "authorization",
                format!("{what} needs `Authorization: Bearer <token or key>`"),
            )),
        }
    }
}

fn invalid(message: &str) -> Problem {
    Problem::field(ErrorCode::TokenInvalid, "token", message)
}

pub(crate) fn revoked() -> Problem {
    Problem::field(ErrorCode::ShareRevoked, "token", "the driver stopped sharing: this link no longer works")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn auth() -> Auth {
        let secret = "s".repeat(32);
        Auth::new(Some(&secret), Some("fleet-key-0123456789"), Some("admin-key-0123456789"), HOUR).unwrap().0
    }

    #[test]
    fn a_driver_token_proves_its_driver_until_it_expires() {
        let auth = auth();
        let t = auth.issue(Kind::Driver, "drv-1", HOUR, 1_000);
        let role = Role::Driver { driver_id: "drv-1".into(), expires_ms: t.expires_ms };
        assert_eq!(auth.verify(&t.token, 2_000).unwrap(), role);
        assert!(auth.verify(&t.token, 2_000).unwrap().may_ping_as("drv-1"));
        assert!(!auth.verify(&t.token, 2_000).unwrap().may_ping_as("drv-2"));
        let expired = auth.verify(&t.token, t.expires_ms).unwrap_err();
        assert_eq!(expired.code, ErrorCode::TokenExpired);
    }

    #[test]
    fn altered_or_foreign_tokens_are_refused() {
        let auth = auth();
        let t = auth.issue(Kind::Driver, "drv-1", HOUR, 1_000).token;
        let other_driver = t.replacen("drv-1", "drv-2", 1);
        let longer = t.replacen(".3601000.", ".9999999999999.", 1);
        let as_share = t.replacen(".drv.", ".shr.", 1);
        let foreign =
            Auth::new(Some(&"x".repeat(32)), None, None, HOUR).unwrap().0.issue(Kind::Driver, "drv-1", HOUR, 1_000);
        for bad in [other_driver, longer, as_share, foreign.token, "v1.drv".into(), "v1.drv.a.1.2.!!".into()] {
            assert_eq!(auth.verify(&bad, 2_000).unwrap_err().code, ErrorCode::TokenInvalid, "{bad}");
        }
    }

    #[test]
    fn an_order_token_sees_its_order_only() {
        let auth = auth();
        let t = auth.issue(Kind::Order, "o-1", HOUR, 1_000);
        let role = auth.verify(&t.token, 2_000).unwrap();
        assert_eq!(role, Role::Customer { order_id: "o-1".into(), expires_ms: t.expires_ms });
        assert!(role.may_see_order("o-1") && !role.may_see_order("o-2"));
        assert!(!role.may_send_pings() && !role.may_track("o-1") && !role.is_fleet());
        assert_eq!(
            auth.verify(&t.token.replacen(".ord.", ".drv.", 1), 2_000).unwrap_err().code,
            ErrorCode::TokenInvalid
        );
        assert!(
            Role::Fleet.may_see_order("o-1")
                && !Role::Driver { driver_id: "d".into(), expires_ms: 9 }.may_see_order("o-1")
        );
    }

    #[test]
    fn keys_give_their_roles_and_a_short_secret_is_refused() {
        let auth = auth();
        assert_eq!(auth.verify("fleet-key-0123456789", 0).unwrap(), Role::Fleet);
        assert_eq!(auth.verify("admin-key-0123456789", 0).unwrap(), Role::Admin);
        assert_eq!(auth.verify("fleet-key-012345678", 0).unwrap_err().code, ErrorCode::TokenInvalid);
        assert!(Auth::new(Some("short"), None, None, HOUR).is_err());
        let (generated, source) = Auth::new(None, None, None, HOUR).unwrap();
        assert_eq!(source, SecretSource::Generated);
        assert!(!generated.fleet_enabled() && !generated.admin_enabled());
        assert!(generated.verify("fleet-key-0123456789", 0).is_err(), "no key configured: no fleet role");
    }

    #[test]
    fn revoking_kills_earlier_share_links_only() {
        let auth = auth();
        let old = auth.issue(Kind::Share, "drv-1", HOUR, 1_000);
        let other = auth.issue(Kind::Share, "drv-2", HOUR, 1_000);
        auth.revoke("drv-1", 5_000);
        assert_eq!(auth.verify(&old.token, 6_000).unwrap_err().code, ErrorCode::ShareRevoked);
        assert!(auth.verify(&other.token, 6_000).is_ok());
        // Made in the same millisecond as the revocation: still a new link.
        let new = auth.issue(Kind::Share, "drv-1", HOUR, 5_000);
        let role = Role::Viewer { driver_id: "drv-1".into(), issued_ms: 5_001, expires_ms: new.expires_ms };
        assert_eq!(auth.verify(&new.token, 6_000).unwrap(), role);
        assert!(role.may_track("drv-1") && !role.may_track("drv-2") && !role.may_ping_as("drv-1"));
        // Remembered only as long as a link lives.
        auth.revoke("drv-3", 5_000 + 2 * HOUR.as_millis() as i64);
        assert!(!auth.revoked.lock().contains_key("drv-1"));
    }
}
