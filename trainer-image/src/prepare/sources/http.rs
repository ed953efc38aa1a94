//! Downloading http(s) sources within [`Limits`]: connect and read timeouts, a
//! bounded number of redirects each checked like the first URL, and no
//! link-local or cloud-metadata addresses unless
//! [`env::ALLOW_LINK_LOCAL_SOURCES`] allows them.
//!
//! Refusing those addresses keeps a Dataset from reading the node's instance
//! credentials (`http://169.254.169.254/...`) into its artifact. Addresses are
//! checked after resolution, on every connection, so a name that resolves
//! there or a redirect that leads there is refused as well as a literal one.
//! Through an HTTP proxy (`HTTPS_PROXY`, ...) the proxy resolves names, so only
//! literal addresses in URLs are checked.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use futures::TryStreamExt;
use llmops_contract::env;
use llmops_store::{ByteStream, StoreError};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

use super::bounded::download_too_large;
use super::limits::Limits;
use crate::prepare::PrepareError;

/// Why a URL or an address is not read.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{}", address_message(host, *addr))]
    Address { host: String, addr: IpAddr },
    #[error("more than {max} redirects (the last to {url}); point the source at the final URL")]
    TooManyRedirects { max: usize, url: String },
    #[error("redirected to {url}, which is not http(s); point the source at an http(s) URL")]
    Scheme { url: String },
}

fn address_message(host: &str, addr: IpAddr) -> String {
    let what = if host.trim_matches(['[', ']']) == addr.to_string() {
        format!("{addr} is")
    } else {
        format!("{host} resolves to {addr},")
    };
    format!(
        "{what} a link-local or cloud-metadata address, which sources may not read; use another URL, or set {}=true on the trainer to allow it",
        env::ALLOW_LINK_LOCAL_SOURCES
    )
}

/// The AWS instance metadata service's IPv6 address.
const EC2_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// Whether `ip` is link-local (169.254.0.0/16, fe80::/10) or a cloud metadata
/// address, also when written as an IPv4-mapped, IPv4-compatible or NAT64
/// IPv6 address.
pub fn is_link_local_or_metadata(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded_v4 = if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [.., a, b, c, d] = v6.octets();
                Some(std::net::Ipv4Addr::new(a, b, c, d))
            } else {
                v6.to_ipv4()
            };
            (s[0] & 0xffc0) == 0xfe80
                || v6 == EC2_METADATA_V6
                || embedded_v4.is_some_and(|v4| v4.is_link_local())
        }
    }
}

/// The addresses of `host` a source may connect to: all of them when `allow`,
/// else those that are not link-local or metadata addresses. Refuses the host
/// when that leaves none.
pub fn check_addrs(
    host: &str,
    addrs: impl IntoIterator<Item = SocketAddr>,
    allow: bool,
) -> Result<Vec<SocketAddr>, Refused> {
    let addrs: Vec<SocketAddr> = addrs.into_iter().collect();
    if allow {
        return Ok(addrs);
    }
    let kept: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| !is_link_local_or_metadata(a.ip()))
        .collect();
    match addrs.first() {
        Some(refused) if kept.is_empty() => Err(Refused::Address {
            host: host.to_string(),
            addr: refused.ip(),
        }),
        _ => Ok(kept),
    }
}

/// Checks a URL before it is requested: the first one, and each redirect
/// target (`redirects` is how many were followed to reach it). Names are
/// checked when they resolve ([`CheckedResolver`]); literal addresses never
/// are resolved, so they are checked here.
pub fn check_url(url: &Url, redirects: usize, limits: &Limits) -> Result<(), Refused> {
    if redirects > limits.max_redirects {
        return Err(Refused::TooManyRedirects {
            max: limits.max_redirects,
            url: url.to_string(),
        });
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refused::Scheme {
            url: url.to_string(),
        });
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    check_addrs(
        url.host_str().unwrap_or_default(),
        [SocketAddr::new(ip, 0)],
        limits.allow_link_local,
    )
    .map(drop)
}

/// Resolves names as the system does, then drops the addresses sources may
/// not reach. Runs for every connection, redirects included.
struct CheckedResolver;

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let kept = check_addrs(&host, addrs, false)?;
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// A client that follows `limits`.
pub fn client(limits: &Limits) -> Result<reqwest::Client, reqwest::Error> {
    let redirect_limits = limits.clone();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(limits.connect_timeout)
        .read_timeout(limits.read_timeout)
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            let redirects = attempt.previous().len();
            match check_url(attempt.url(), redirects, &redirect_limits) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        }));
    if !limits.allow_link_local {
        builder = builder.dns_resolver(CheckedResolver);
    }
    builder.build()
}

/// Starts downloading `url` (`display` as the source spells it): the response's
/// bytes, or an error that says what to fix. A declared length over the limit
/// fails before any byte is read; the bytes themselves are capped by the
/// caller ([`super::bounded::Capped`]), since a server may not declare one.
pub async fn get(
    client: &reqwest::Client,
    url: &Url,
    display: &str,
    limits: &Limits,
    source_name: &str,
) -> Result<ByteStream, PrepareError> {
    let refused = |reason: String| PrepareError::RefusedSource {
        source_name: source_name.to_string(),
        reason,
    };
    check_url(url, 0, limits).map_err(|e| refused(e.to_string()))?;
    let response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| request_error(e, display, limits, source_name))?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(StoreError::NotFound {
            uri: display.to_string(),
        }
        .into());
    }
    // A redirect the client did not follow (to a location that is not a URL it
    // can request) would otherwise read as an empty source.
    if response.status().is_redirection() {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
            .unwrap_or_default();
        return Err(PrepareError::RefusedSource {
            source_name: source_name.to_string(),
            reason: format!(
                "following redirects from {display}: {}",
                Refused::Scheme { url: location }
            ),
        });
    }
    let response = response
        .error_for_status()
        .map_err(|e| request_error(e, display, limits, source_name))?;
    if let Some(length) = response.content_length()
        && length > limits.source_bytes
    {
        return Err(PrepareError::TooLarge {
            source_name: source_name.to_string(),
            limit: download_too_large(limits.source_bytes, None),
        });
    }
    let uri = display.to_string();
    let limits = limits.clone();
    Ok(Box::pin(response.bytes_stream().map_err(move |e| {
        StoreError::Unreachable {
            uri: uri.clone(),
            reason: reason(e, &limits),
        }
    })))
}

/// Names a refusal (from the resolver or the redirect policy) as one, and a
/// timeout with the variable that sets it; anything else reads as before.
fn request_error(
    err: reqwest::Error,
    display: &str,
    limits: &Limits,
    source_name: &str,
) -> PrepareError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = cause {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            // The redirect policy's refusals name the target themselves; the
            // resolver's carry the URL it was resolving for.
            let reason = match err.url() {
                _ if err.is_redirect() => format!("following redirects from {display}: {refused}"),
                Some(at) if at.as_str() != display => {
                    format!("{display} redirected to {at}: {refused}")
                }
                _ => refused.to_string(),
            };
            return PrepareError::RefusedSource {
                source_name: source_name.to_string(),
                reason,
            };
        }
        cause = e.source();
    }
    StoreError::Unreachable {
        uri: display.to_string(),
        reason: reason(err, limits),
    }
    .into()
}

fn reason(err: reqwest::Error, limits: &Limits) -> String {
    let seconds = |d: Duration| format!("{} s", d.as_secs_f64());
    if err.is_timeout() && err.is_connect() {
        format!(
            "no connection within {} (raise {} for a slow network)",
            seconds(limits.connect_timeout),
            env::HTTP_CONNECT_TIMEOUT_SECONDS
        )
    } else if err.is_timeout() {
        format!(
            "no bytes for {} (raise {} for a slow server)",
            seconds(limits.read_timeout),
            env::HTTP_READ_TIMEOUT_SECONDS
        )
    } else {
        err.without_url().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 80)
    }

    #[test]
    fn link_local_and_metadata_addresses_are_recognised() {
        for refused in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "febf:ffff::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(
                is_link_local_or_metadata(refused.parse().unwrap()),
                "{refused}"
            );
        }
        for allowed in [
            "127.0.0.1",
            "10.0.0.1",
            "169.253.255.255",
            "169.255.0.0",
            "::1",
            "fec0::1",
            "fd00:ec2::253",
            "2001:db8::1",
        ] {
            assert!(
                !is_link_local_or_metadata(allowed.parse().unwrap()),
                "{allowed}"
            );
        }
    }

    #[test]
    fn resolved_addresses_are_filtered_and_a_host_with_none_left_refused() {
        let kept =
            check_addrs("mixed", [sock("169.254.169.254"), sock("127.0.0.1")], false).unwrap();
        assert_eq!(kept, [sock("127.0.0.1")]);
        let err = check_addrs("metadata.internal", [sock("169.254.169.254")], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("metadata.internal resolves to 169.254.169.254, a link-local")
                && err.contains(env::ALLOW_LINK_LOCAL_SOURCES),
            "{err}"
        );
        assert_eq!(
            check_addrs("metadata.internal", [sock("fd00:ec2::254")], true).unwrap(),
            [sock("fd00:ec2::254")]
        );
    }

    #[test]
    fn urls_and_redirect_targets_are_checked() {
        let limits = Limits::default();
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(check_url(&url("http://127.0.0.1:8080/x"), 0, &limits).is_ok());
        assert!(check_url(&url("https://example.org/x"), 5, &limits).is_ok());
        let err = check_url(&url("http://169.254.169.254/latest"), 1, &limits).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("169.254.169.254 is a link-local"),
            "{err}"
        );
        let err = check_url(&url("http://[fd00:ec2::254]/"), 0, &limits).unwrap_err();
        assert!(err.to_string().starts_with("fd00:ec2::254 is"), "{err}");
        assert!(matches!(
            check_url(&url("https://example.org/x"), 6, &limits),
            Err(Refused::TooManyRedirects { max: 5, .. })
        ));
        assert!(matches!(
            check_url(&url("file:///etc/passwd"), 1, &limits),
            Err(Refused::Scheme { .. })
        ));
        let allowed = Limits {
            allow_link_local: true,
            ..Limits::default()
        };
        assert!(check_url(&url("http://169.254.169.254/latest"), 0, &allowed).is_ok());
    }

    /// Resolution goes through the check; only loopback is resolved here.
    #[tokio::test]
    async fn the_resolver_keeps_loopback() {
        let addrs: Vec<SocketAddr> = CheckedResolver
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
