//! The operator connects only to addresses the API gives it (pod IPs in status,
//! the apiserver of its kubeconfig). An IPv4 literal in its source other than a
//! bind address (0.0.0.0, loopback) would be a hard-coded network: none may appear.

use std::net::Ipv4Addr;
use std::path::Path;

fn rust_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("operator/src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// IPv4 literals in `text` that are neither unspecified nor loopback.
fn foreign_addresses(text: &str) -> Vec<Ipv4Addr> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|token| token.matches('.').count() == 3)
        .filter_map(|token| token.parse::<Ipv4Addr>().ok())
        .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
        .collect()
}

#[test]
fn the_detector_finds_private_and_public_literals() {
    assert_eq!(
        foreign_addresses("let a = \"10.244.0.5\"; let b = \"127.0.0.1\"; 0.0.0.0 1.2.3"),
        [Ipv4Addr::new(10, 244, 0, 5)]
    );
}

#[test]
fn the_operator_source_holds_no_network_addresses() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(!files.is_empty());
    let offending: Vec<String> = files
        .iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(path).expect("a readable source file");
            foreign_addresses(&text)
                .into_iter()
                .map(move |ip| format!("{}: {ip}", path.display()))
        })
        .collect();
    assert!(offending.is_empty(), "hard-coded addresses: {offending:?}");
}
