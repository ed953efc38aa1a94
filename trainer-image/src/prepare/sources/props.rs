//! Properties of what sources accept from a Dataset: URIs of any shape are
//! listed or refused with an error, never a panic, and the address check
//! refuses exactly the link-local and metadata ranges. Nothing here connects
//! anywhere: addresses are checked as values.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use llmops_crds::dataset::{HttpSource, PvcSource, Source};
use llmops_store::ArtifactUri;
use proptest::prelude::*;

use super::http::{check_addrs, check_url, is_link_local_or_metadata};
use super::{Limits, inputs};

/// The ranges, written out independently of the code under test.
fn expected_refused(ip: IpAddr) -> bool {
    let v4 = |v4: Ipv4Addr| v4.octets()[..2] == [169, 254];
    match ip {
        IpAddr::V4(a) => v4(a),
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let low32 = Ipv4Addr::from(bits as u32);
            (bits >> 118) == (0xfe80 >> 6)
                || a == "fd00:ec2::254".parse::<Ipv6Addr>().unwrap()
                || ((bits >> 32) == 0xffff && v4(low32))
                || ((bits >> 32) == 0 && v4(low32))
                || ((bits >> 32) == 0x0064_ff9b_0000_0000_0000_0000 && v4(low32))
        }
    }
}

/// Addresses near the interesting ranges as often as anywhere else.
fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|b| IpAddr::V4(b.into())),
        any::<u16>().prop_map(|b| IpAddr::V4(Ipv4Addr::new(169, 254, (b >> 8) as u8, b as u8))),
        any::<u32>().prop_map(|b| IpAddr::V6(Ipv4Addr::from(b).to_ipv6_mapped())),
        any::<u128>().prop_map(|b| IpAddr::V6(b.into())),
        any::<u128>().prop_map(|b| IpAddr::V6(((0xfe80u128 << 112) | (b >> 16)).into())),
        any::<u16>().prop_map(|b| IpAddr::V6(
            (0x0064_ff9b_0000_0000_0000_0000_a9fe_0000u128 | u128::from(b)).into()
        )),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        // Failures are reported with their minimal input; no files are written.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_address_check_refuses_exactly_the_ranges(ip in any_ip()) {
        prop_assert_eq!(is_link_local_or_metadata(ip), expected_refused(ip));
        if let IpAddr::V4(v4) = ip {
            // An IPv4 address refused or not is so in IPv6 clothing too.
            prop_assert_eq!(
                is_link_local_or_metadata(IpAddr::V6(v4.to_ipv6_mapped())),
                is_link_local_or_metadata(ip)
            );
        }
    }

    /// Resolution never hands a refused address to the connector, and refuses
    /// a host only when nothing else is left.
    #[test]
    fn resolved_addresses_never_include_refused_ones(
        ips in prop::collection::vec(any_ip(), 0..6),
        allow in any::<bool>(),
    ) {
        let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, 443)).collect();
        match check_addrs("host.example", addrs.clone(), allow) {
            Ok(kept) if allow => prop_assert_eq!(kept, addrs),
            Ok(kept) => {
                prop_assert!(kept.iter().all(|a| !is_link_local_or_metadata(a.ip())));
                prop_assert_eq!(
                    kept.len(),
                    ips.iter().filter(|ip| !is_link_local_or_metadata(**ip)).count()
                );
            }
            Err(e) => {
                prop_assert!(!allow && !ips.is_empty());
                prop_assert!(ips.iter().all(|ip| is_link_local_or_metadata(*ip)));
                prop_assert!(e.to_string().contains("LLMOPS_ALLOW_LINK_LOCAL_SOURCES"));
            }
        }
    }

    /// A URL with a literal address is refused exactly when the address is,
    /// however the address is written into it.
    #[test]
    fn urls_with_literal_addresses_are_checked(ip in any_ip(), redirects in 0usize..8) {
        let host = match ip {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        let url = url::Url::parse(&format!("http://{host}:8080/data.jsonl")).unwrap();
        let limits = Limits::default();
        let result = check_url(&url, redirects, &limits);
        prop_assert_eq!(
            result.is_err(),
            redirects > limits.max_redirects || is_link_local_or_metadata(ip)
        );
    }

    /// Any string as a source URI parses or fails with an error; never a panic.
    #[test]
    fn any_uri_parses_or_fails(uri in "(s3|gs|az|file|pvc|http|https|ftp)?(://)?[ -~]{0,60}") {
        let _ = ArtifactUri::parse_with_pvc_root(&uri, "/mnt/pvc");
        if let Ok(url) = url::Url::parse(&uri) {
            let _ = check_url(&url, 0, &Limits::default());
        }
    }

    /// http(s) URLs parse as http sources that keep scheme, host and path.
    #[test]
    fn http_uris_keep_their_parts(
        scheme in prop::sample::select(vec!["http", "https"]),
        // No "--" in a label: `xn--` names are punycode, which this does not make.
        host in "[a-z](-?[a-z0-9]){0,20}(\\.[a-z](-?[a-z0-9]){0,10}){0,3}",
        // Dot segments (`/.`, `/..`) are normalised away by URL parsing.
        path in "(/[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,11}){0,4}",
    ) {
        let uri = format!("{scheme}://{host}{path}");
        let parsed = ArtifactUri::parse_with_pvc_root(&uri, "/r").unwrap();
        let ArtifactUri::Http { url } = parsed else {
            return Err(TestCaseError::fail(format!("{uri} is not http")));
        };
        prop_assert_eq!(url.scheme(), scheme);
        prop_assert_eq!(url.host_str(), Some(host.as_str()));
        prop_assert_eq!(url.path(), if path.is_empty() { "/" } else { path.as_str() });
    }

    /// A `pvc://` URI of a claim name and a path without `..` stays below the
    /// claim's mount.
    #[test]
    fn pvc_uris_stay_below_their_claim(
        claim in "[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?",
        components in prop::collection::vec("[A-Za-z0-9_. -]{0,8}", 0..5),
    ) {
        prop_assume!(!components.iter().any(|c| c == ".."));
        prop_assume!(claim != "." && claim != "..");
        let uri = format!("pvc://{claim}/{}", components.join("/"));
        let parsed = ArtifactUri::parse_with_pvc_root(&uri, "/r").unwrap();
        let ArtifactUri::Local { path } = parsed else {
            return Err(TestCaseError::fail(format!("{uri} is not local")));
        };
        prop_assert!(path.starts_with(format!("/r/{claim}")), "{}", path.display());
    }

    /// Listing the inputs of an http or pvc source with any URL, claim or path
    /// gives inputs or an error naming what to fix, and never connects: http
    /// sources are only fetched when opened.
    #[test]
    fn any_http_or_pvc_source_lists_or_fails(
        url in "(http|https|ftp)://[ -~]{0,40}",
        claim in "[ -~]{0,12}",
        path in "[ -~]{0,24}",
    ) {
        let rt = runtime();
        let http = Source {
            http: Some(HttpSource { url: url.clone(), sha256: None }),
            ..Source::default()
        };
        match inputs(0, &http, rt.handle()) {
            Ok(listed) => {
                prop_assert_eq!(listed.len(), 1);
                prop_assert!(listed[0].name.contains(&url));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        let pvc = Source {
            pvc: Some(PvcSource { claim_name: claim.clone(), path }),
            ..Source::default()
        };
        if let Ok(listed) = inputs(0, &pvc, rt.handle()) {
            // Only a claim that names a real directory below the root lists.
            prop_assert!(!matches!(claim.as_str(), "" | "." | ".."));
            prop_assert!(!claim.contains('/'));
            prop_assert!(listed.iter().all(|i| i.name.starts_with("source 0 (pvc://")));
        }
    }
}
