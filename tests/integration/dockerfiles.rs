//! The images' Dockerfiles, checked without a container engine: each builds the
//! workspace package whose `[[bin]]` the image runs, copies that binary to where the
//! ENTRYPOINT and the operator's pods (`command: ["trainer"]`, `["server"]`) expect
//! it, runs as non-root, takes its base images from build arguments, and passes the
//! lint rules below (in place of hadolint, which is not built here).

use anyhow::{Context, bail, ensure};
use llmops_tests::workspace_root;
use serde_json::Value;

/// (Dockerfile directory, which is also the crate's, and the binary it runs).
const IMAGES: [(&str, &str); 3] = [
    ("operator", "operator"),
    ("trainer-image", "trainer"),
    ("server-image", "server"),
];

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

/// The package name and `[[bin]]` names of a workspace crate.
fn crate_bins(dir: &str) -> anyhow::Result<(String, Vec<String>)> {
    let text = std::fs::read_to_string(workspace_root().join(dir).join("Cargo.toml"))?;
    let manifest = Value::Object(toml_lite::parse(&text));
    let package = manifest["package"]["name"]
        .as_str()
        .context("no package name")?
        .to_string();
    let bins = manifest["bin"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["name"].as_str().map(String::from))
        .collect();
    Ok((package, bins))
}

/// Just enough TOML for `[package] name` and `[[bin]] name`.
mod toml_lite {
    use serde_json::{Map, Value};

    pub fn parse(text: &str) -> Map<String, Value> {
        let mut root = Map::new();
        let mut section: Option<(String, bool)> = None;
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
                let list = root
                    .entry(name.to_string())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Some(list) = list.as_array_mut() {
                    list.push(Value::Object(Map::new()));
                }
                section = Some((name.to_string(), true));
            } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                root.entry(name.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                section = Some((name.to_string(), false));
            } else if let (Some((name, is_list)), Some((key, value))) =
                (&section, line.split_once('='))
            {
                let Some(value) = value
                    .trim()
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                else {
                    continue;
                };
                let table = if *is_list {
                    root[name].as_array_mut().and_then(|l| l.last_mut())
                } else {
                    root.get_mut(name)
                };
                if let Some(table) = table {
                    table[key.trim()] = Value::String(value.to_string());
                }
            }
        }
        root
    }
}

#[test]
fn dockerfiles_build_and_run_the_workspace_binaries() -> anyhow::Result<()> {
    for (dir, bin) in IMAGES {
        let path = workspace_root().join(dir).join("Dockerfile");
        let text = std::fs::read_to_string(&path)?;
        let steps = instructions(&text);
        let (package, bins) = crate_bins(dir)?;
        ensure!(
            bins.iter().any(|b| b == bin),
            "{dir}/Cargo.toml has no [[bin]] {bin}: {bins:?}"
        );
        let find = |prefix: &str, needle: &str| {
            steps
                .iter()
                .any(|s| s.starts_with(prefix) && s.contains(needle))
        };
        ensure!(
            find(
                "RUN ",
                &format!("cargo build --release --locked -p {package}")
            ),
            "{dir}/Dockerfile does not build package {package}"
        );
        ensure!(
            find("RUN ", &format!("cp target/release/{bin} /{bin}")),
            "{dir}/Dockerfile does not take target/release/{bin}"
        );
        ensure!(
            find(
                "COPY ",
                &format!("--from=build /{bin} /usr/local/bin/{bin}")
            ),
            "{dir}/Dockerfile does not install {bin} in /usr/local/bin (on PATH, as the pods' command needs)"
        );
        let entrypoint: Vec<&String> = steps
            .iter()
            .filter(|s| s.starts_with("ENTRYPOINT "))
            .collect();
        let [entrypoint] = entrypoint[..] else {
            bail!("{dir}/Dockerfile: expected one ENTRYPOINT");
        };
        let form: Vec<String> = serde_json::from_str(&entrypoint["ENTRYPOINT ".len()..])
            .with_context(|| format!("{dir}/Dockerfile: ENTRYPOINT is not in JSON form"))?;
        ensure!(
            form == [format!("/usr/local/bin/{bin}")],
            "{dir}/Dockerfile: ENTRYPOINT {form:?}"
        );
    }
    // The operator starts its pods by these names, relying on PATH.
    let operator = workspace_root().join("operator/src");
    let job = std::fs::read_to_string(operator.join("workload/job.rs"))?;
    ensure!(job.contains(r#"command: Some(vec!["trainer".into()])"#));
    let server = std::fs::read_to_string(operator.join("controller/deployment/build.rs"))?;
    ensure!(
        server.contains(r#"command: vec!["server".into()]"#),
        "the built-in runtime's container no longer runs `server` by name"
    );
    Ok(())
}

#[test]
fn dockerfiles_pass_the_lint_rules() -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for (dir, _) in IMAGES {
        let text = std::fs::read_to_string(workspace_root().join(dir).join("Dockerfile"))?;
        let steps = instructions(&text);
        let mut args = Vec::new();
        let mut stages = Vec::new();
        let mut last_user = None;
        let mut complain = |what: String| problems.push(format!("{dir}/Dockerfile: {what}"));
        if !text.starts_with("# syntax=docker/dockerfile:1") {
            complain("no `# syntax=docker/dockerfile:1` (cache mounts need BuildKit)".into());
        }
        for step in &steps {
            let (op, rest) = step.split_once(' ').unwrap_or((step, ""));
            match op {
                "ARG" => {
                    let (name, default) = rest.split_once('=').unwrap_or((rest, ""));
                    if name.ends_with("_IMAGE") && stages.is_empty() {
                        if default.ends_with(":latest") || !default.contains(':') {
                            complain(format!("base image {name} has no fixed tag"));
                        }
                        args.push(name.to_string());
                    }
                }
                "FROM" => {
                    let mut words = rest.split_whitespace();
                    let image = words.next().unwrap_or_default();
                    let base = image.trim_start_matches("${").trim_end_matches('}');
                    if !(args.iter().any(|a| a == base) || stages.iter().any(|s| s == base)) {
                        complain(format!(
                            "FROM {image}: not a base-image ARG or an earlier stage"
                        ));
                    }
                    if let (Some("AS"), Some(stage)) = (words.next(), words.next()) {
                        stages.push(stage.to_string());
                    }
                    last_user = None;
                }
                "USER" => last_user = Some(rest.to_string()),
                "ADD" => complain(format!("ADD {rest}: use COPY (or RUN a download)")),
                "MAINTAINER" => complain("MAINTAINER is deprecated".into()),
                "RUN" => {
                    if rest.contains("apt-get install") && !rest.contains("--no-install-recommends")
                    {
                        complain("apt-get install without --no-install-recommends".into());
                    }
                    if rest.contains("sudo ") {
                        complain("sudo in RUN".into());
                    }
                    if rest.contains("curl ") && rest.contains("| sh") {
                        complain("a downloaded script piped to sh".into());
                    }
                    if rest.contains("pip install")
                        && !rest.contains("--no-cache-dir")
                        && !rest.contains("type=cache")
                    {
                        complain("pip install keeps its cache in the layer".into());
                    }
                }
                "CMD" | "ENTRYPOINT" if !rest.starts_with('[') => {
                    complain(format!("{op} not in JSON form"));
                }
                "WORKDIR" if !rest.starts_with('/') => {
                    complain(format!("WORKDIR {rest} is relative"));
                }
                _ => {}
            }
        }
        match last_user {
            Some(user) if !user.starts_with("0") && !user.starts_with("root") => {}
            other => complain(format!("the final stage runs as {other:?}, not non-root")),
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// Base images pinned by digest (`name:tag@sha256:...`) in the Dockerfiles' ARG
/// defaults. Ignored until the digests are filled in: they can only be read from
/// the registries (`docker buildx imagetools inspect <image>`), which this
/// project's build machines cannot reach. The release workflow resolves and pins
/// them for every release build meanwhile.
#[test]
#[ignore = "the base-image digests are not committed yet (see docs/releasing.md)"]
fn base_images_are_pinned_by_digest() -> anyhow::Result<()> {
    let mut unpinned = Vec::new();
    for (dir, _) in IMAGES {
        let text = std::fs::read_to_string(workspace_root().join(dir).join("Dockerfile"))?;
        for step in instructions(&text) {
            if let Some(rest) = step.strip_prefix("ARG ")
                && let Some((name, default)) = rest.split_once('=')
                && name.ends_with("_IMAGE")
                && !default.contains("@sha256:")
            {
                unpinned.push(format!("{dir}: {name}={default}"));
            }
        }
    }
    ensure!(unpinned.is_empty(), "not pinned: {unpinned:?}");
    Ok(())
}

/// The server image carries the gateway too, built as a package of its own (it
/// links no libtorch) and installed on PATH, where the chart's gateway
/// Deployment (`command: ["gateway"]`) finds it.
#[test]
fn the_server_image_carries_the_gateway() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(workspace_root().join("server-image/Dockerfile"))?;
    let steps = instructions(&text);
    let (package, bins) = crate_bins("gateway")?;
    ensure!(
        bins.iter().any(|b| b == "gateway"),
        "gateway/Cargo.toml has no [[bin]] gateway: {bins:?}"
    );
    let find = |prefix: &str, needle: &str| {
        steps
            .iter()
            .any(|s| s.starts_with(prefix) && s.contains(needle))
    };
    ensure!(
        find(
            "RUN ",
            &format!("cargo build --release --locked -p {package}")
        ),
        "server-image/Dockerfile does not build package {package}"
    );
    ensure!(
        find("RUN ", "cp target/release/gateway /gateway"),
        "server-image/Dockerfile does not take target/release/gateway"
    );
    ensure!(
        find("COPY ", "--from=build /gateway /usr/local/bin/gateway"),
        "server-image/Dockerfile does not install gateway in /usr/local/bin"
    );
    let chart =
        std::fs::read_to_string(workspace_root().join("charts/llmops/templates/gateway.yaml"))?;
    ensure!(chart.contains(r#"command: ["gateway"]"#));
    Ok(())
}
