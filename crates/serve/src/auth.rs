//! API keys and per-key rate limits.
//!
//! Keys are kept only as BLAKE3 hashes and compared in constant time (every
//! stored hash is compared, `blake3::Hash` equality is constant-time), so
//! neither memory nor timing gives a key away. Each key has a label
//! (`key-` + 8 hex of its hash) for logs and feedback; the key itself is never
//! logged.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::path::Path;

/// Who a request is from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    pub label: String,
    pub admin: bool,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Denied {
    Missing,
    Invalid,
    NotAdmin,
    /// Over a per-key limit; retry after this many seconds.
    Limited {
        limit: &'static str,
        retry_after: u64,
    },
    /// A single request larger than the per-minute token budget.
    TooLarge {
        tokens: u32,
        per_minute: u32,
    },
}

/// Settings of authentication and rate limits.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub api_keys: Vec<String>,
    pub admin_keys: Vec<String>,
    /// Serve without keys (local use only).
    pub no_auth: bool,
    /// Per key; 0: unlimited.
    pub requests_per_minute: u32,
    /// Prompt + requested completion tokens per key; 0: unlimited.
    pub tokens_per_minute: u32,
}

/// Reads keys from a file: one per line, `#` comments and blank lines skipped.
pub fn read_keys(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading API keys {}: {e}", path.display()))?;
    let keys: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect();
    anyhow::ensure!(!keys.is_empty(), "{}: no API keys in the file", path.display());
    Ok(keys)
}

/// Keys from a comma-separated list (`FORJA_API_KEYS`).
pub fn split_keys(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_string).collect()
}

pub struct Auth {
    keys: Vec<(blake3::Hash, Caller)>,
    no_auth: bool,
    requests: Option<DefaultKeyedRateLimiter<String>>,
    tokens: Option<(DefaultKeyedRateLimiter<String>, u32)>,
}

fn label(hash: &blake3::Hash) -> String {
    format!("key-{}", &hash.to_hex()[..8])
}

impl Auth {
    pub fn new(cfg: &AuthConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(
            cfg.no_auth || !cfg.api_keys.is_empty(),
            "no API keys: set FORJA_API_KEYS (comma-separated) or --api-keys FILE, or pass --no-auth for local use"
        );
        let mut keys = Vec::new();
        for (k, admin) in cfg.api_keys.iter().map(|k| (k, false)).chain(cfg.admin_keys.iter().map(|k| (k, true))) {
            anyhow::ensure!(k.len() >= 8, "API keys must be at least 8 characters (one is {})", k.len());
            let hash = blake3::hash(k.as_bytes());
            keys.push((hash, Caller { label: label(&hash), admin }));
        }
        let per_minute = |n: u32| NonZeroU32::new(n).map(Quota::per_minute);
        Ok(Self {
            keys,
            no_auth: cfg.no_auth,
            requests: per_minute(cfg.requests_per_minute).map(RateLimiter::keyed),
            tokens: per_minute(cfg.tokens_per_minute).map(|q| (RateLimiter::keyed(q), cfg.tokens_per_minute)),
        })
    }

    /// The caller of a request with this `Authorization` header value.
    pub fn check(&self, header: Option<&str>) -> Result<Caller, Denied> {
        let presented = header.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer "))).map(str::trim);
        let Some(presented) = presented.filter(|k| !k.is_empty()) else {
            return if self.no_auth { Ok(Caller { label: "anonymous".into(), admin: false }) } else { Err(Denied::Missing) };
        };
        let hash = blake3::hash(presented.as_bytes());
        // Compare against every key, without stopping at a match.
        let mut found: Option<&Caller> = None;
        for (h, caller) in &self.keys {
            if *h == hash {
                found = Some(caller);
            }
        }
        match found {
            Some(c) => Ok(c.clone()),
            None if self.no_auth && self.keys.is_empty() => Ok(Caller { label: "anonymous".into(), admin: false }),
            None => Err(Denied::Invalid),
        }
    }

    /// Counts one request against the caller's request limit.
    pub fn request(&self, caller: &Caller) -> Result<(), Denied> {
        let Some(limiter) = &self.requests else { return Ok(()) };
        limiter.check_key(&caller.label).map_err(|not_until| Denied::Limited {
            limit: "requests per minute",
            retry_after: not_until.wait_time_from(DefaultClock::default().now()).as_secs().max(1),
        })
    }

    /// Counts `tokens` against the caller's token limit.
    pub fn spend(&self, caller: &Caller, tokens: u32) -> Result<(), Denied> {
        let Some((limiter, per_minute)) = &self.tokens else { return Ok(()) };
        let Some(n) = NonZeroU32::new(tokens) else { return Ok(()) };
        match limiter.check_key_n(&caller.label, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Denied::Limited {
                limit: "tokens per minute",
                retry_after: not_until.wait_time_from(DefaultClock::default().now()).as_secs().max(1),
            }),
            Err(_) => Err(Denied::TooLarge { tokens, per_minute: *per_minute }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(rpm: u32, tpm: u32) -> Auth {
        let cfg = AuthConfig {
            api_keys: vec!["user-key-1".into(), "user-key-2".into()],
            admin_keys: vec!["admin-key-1".into()],
            no_auth: false,
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
        };
        Auth::new(&cfg).expect("valid config")
    }

    #[test]
    fn keys_are_checked_and_labelled_without_the_key() {
        let a = auth(0, 0);
        assert_eq!(a.check(None), Err(Denied::Missing));
        assert_eq!(a.check(Some("Bearer nope-nope")), Err(Denied::Invalid));
        assert_eq!(a.check(Some("user-key-1")), Err(Denied::Missing), "the Bearer scheme is required");
        let c = a.check(Some("Bearer user-key-2")).expect("a valid key");
        assert!(!c.admin && c.label.starts_with("key-") && !c.label.contains("user"));
        assert!(a.check(Some("Bearer admin-key-1")).expect("admin").admin);
        assert!(Auth::new(&AuthConfig::default()).is_err(), "no keys and no --no-auth is refused");
        let short = AuthConfig { api_keys: vec!["abc".into()], ..Default::default() };
        assert!(Auth::new(&short).is_err());
    }

    #[test]
    fn limits_are_per_key() {
        let a = auth(2, 100);
        let (one, two) = (a.check(Some("Bearer user-key-1")).expect("key"), a.check(Some("Bearer user-key-2")).expect("key"));
        assert!(a.request(&one).is_ok() && a.request(&one).is_ok());
        assert!(matches!(a.request(&one), Err(Denied::Limited { limit: "requests per minute", retry_after }) if retry_after >= 1));
        assert!(a.request(&two).is_ok(), "another key has its own budget");
        assert!(a.spend(&two, 80).is_ok());
        assert!(matches!(a.spend(&two, 80), Err(Denied::Limited { limit: "tokens per minute", .. })));
        assert_eq!(a.spend(&one, 101), Err(Denied::TooLarge { tokens: 101, per_minute: 100 }));
    }
}
