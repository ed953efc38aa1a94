//! The bounds `trainer prepare` puts on what a source may make it hold or wait
//! for, so that a hostile or broken source (a zip bomb, a 10 GB line, a server
//! that never answers) ends the run with an error naming the source instead of
//! an OOM kill or a hang.
//!
//! Each limit has a default and an environment variable of the pod
//! ([`llmops_contract::env`]) that overrides it.

use std::sync::OnceLock;
use std::time::Duration;

use llmops_contract::env;

use crate::prepare::PrepareError;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Default for [`Limits::source_bytes`].
pub const DEFAULT_SOURCE_MAX_BYTES: u64 = 10 * GIB;
/// Default for [`Limits::gzip_member_bytes`].
pub const DEFAULT_GZIP_MEMBER_MAX_BYTES: u64 = GIB;
/// Default for [`Limits::line_bytes`].
pub const DEFAULT_LINE_MAX_BYTES: u64 = 16 * MIB;
/// Default for [`Limits::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`Limits::read_timeout`]: long enough for a slow server, short
/// enough that a stalled one fails the run well before anyone would notice.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Redirects followed per request; each target is checked like the first URL.
pub const MAX_REDIRECTS: usize = 5;

/// The limits in force for one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes downloaded from one http(s) source ([`env::SOURCE_MAX_BYTES`]).
    pub source_bytes: u64,
    /// Bytes one gzip member decompresses to ([`env::GZIP_MEMBER_MAX_BYTES`]).
    pub gzip_member_bytes: u64,
    /// Bytes of one line after decompression ([`env::LINE_MAX_BYTES`]).
    pub line_bytes: u64,
    /// Connecting to an http(s) source ([`env::HTTP_CONNECT_TIMEOUT_SECONDS`]).
    pub connect_timeout: Duration,
    /// Waiting for the next bytes of an http(s) source
    /// ([`env::HTTP_READ_TIMEOUT_SECONDS`]).
    pub read_timeout: Duration,
    /// Redirects followed per http(s) request.
    pub max_redirects: usize,
    /// Whether http(s) sources may reach link-local and cloud-metadata
    /// addresses ([`env::ALLOW_LINK_LOCAL_SOURCES`]).
    pub allow_link_local: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            source_bytes: DEFAULT_SOURCE_MAX_BYTES,
            gzip_member_bytes: DEFAULT_GZIP_MEMBER_MAX_BYTES,
            line_bytes: DEFAULT_LINE_MAX_BYTES,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_redirects: MAX_REDIRECTS,
            allow_link_local: false,
        }
    }
}

impl Limits {
    /// The limits of this process, read from its environment once. A variable
    /// that is set but unreadable is an error rather than silently the default,
    /// so a typo cannot lift or tighten a limit unnoticed.
    pub fn current() -> Result<&'static Limits, PrepareError> {
        static CURRENT: OnceLock<Result<Limits, String>> = OnceLock::new();
        CURRENT
            .get_or_init(|| Self::from_vars(|name| std::env::var(name).ok()))
            .as_ref()
            .map_err(|e| PrepareError::InvalidSpec(e.clone()))
    }

    /// The limits of this process where an error cannot be returned: the
    /// defaults when a variable is unreadable, which [`super::inputs`] has
    /// already reported before any source is read.
    pub fn in_force() -> Limits {
        Self::current().cloned().unwrap_or_default()
    }

    /// The limits given the variables `var` returns.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Limits, String> {
        let d = Limits::default();
        let bytes = |name: &str, default: u64| match var(name) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!(
                    "environment variable {name}={v:?} must be a positive number of bytes"
                )),
            },
        };
        let seconds = |name: &str, default: Duration| match var(name) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<f64>() {
                Ok(s) if s > 0.0 && s.is_finite() && s < 1e9 => Ok(Duration::from_secs_f64(s)),
                _ => Err(format!(
                    "environment variable {name}={v:?} must be a positive number of seconds"
                )),
            },
        };
        let allow_link_local = match var(env::ALLOW_LINK_LOCAL_SOURCES) {
            None => false,
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "" | "0" | "false" | "no" => false,
                "1" | "true" | "yes" => true,
                _ => {
                    return Err(format!(
                        "environment variable {}={v:?} must be true or false",
                        env::ALLOW_LINK_LOCAL_SOURCES
                    ));
                }
            },
        };
        Ok(Limits {
            source_bytes: bytes(env::SOURCE_MAX_BYTES, d.source_bytes)?,
            gzip_member_bytes: bytes(env::GZIP_MEMBER_MAX_BYTES, d.gzip_member_bytes)?,
            line_bytes: bytes(env::LINE_MAX_BYTES, d.line_bytes)?,
            connect_timeout: seconds(env::HTTP_CONNECT_TIMEOUT_SECONDS, d.connect_timeout)?,
            read_timeout: seconds(env::HTTP_READ_TIMEOUT_SECONDS, d.read_timeout)?,
            max_redirects: d.max_redirects,
            allow_link_local,
        })
    }
}

/// Writes a byte count the way people read it: `16 MiB`, `1 GiB`, `1000 bytes`.
pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= GIB && n % GIB == 0 => format!("{} GiB", n / GIB),
        n if n >= MIB && n % MIB == 0 => format!("{} MiB", n / MIB),
        n if n >= 1024 && n % 1024 == 0 => format!("{} KiB", n / 1024),
        n => format!("{n} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<Limits, String> {
        Limits::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(with(&[]).unwrap(), Limits::default());
        let l = with(&[
            (env::LINE_MAX_BYTES, "1024"),
            (env::HTTP_READ_TIMEOUT_SECONDS, "1.5"),
            (env::ALLOW_LINK_LOCAL_SOURCES, "true"),
        ])
        .unwrap();
        assert_eq!(l.line_bytes, 1024);
        assert_eq!(l.read_timeout, Duration::from_millis(1500));
        assert!(l.allow_link_local);
        for (name, bad) in [
            (env::LINE_MAX_BYTES, "16M"),
            (env::SOURCE_MAX_BYTES, "0"),
            (env::HTTP_CONNECT_TIMEOUT_SECONDS, "-1"),
            (env::ALLOW_LINK_LOCAL_SOURCES, "maybe"),
        ] {
            let err = with(&[(name, bad)]).unwrap_err();
            assert!(err.contains(name) && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn byte_counts_read_like_the_defaults() {
        assert_eq!(human_bytes(DEFAULT_SOURCE_MAX_BYTES), "10 GiB");
        assert_eq!(human_bytes(DEFAULT_LINE_MAX_BYTES), "16 MiB");
        assert_eq!(human_bytes(2048), "2 KiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
    }
}
