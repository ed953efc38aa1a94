//! A stand-in for vLLM: vLLM cannot run on a local node (no GPU, and no vLLM
//! installed), so a container whose command is vLLM's OpenAI server
//! (`python3 -m vllm.entrypoints.openai.api_server ...` or `vllm serve MODEL
//! ...`) runs the project's `server` binary instead, with vLLM's flags
//! translated by the table `FLAGS` and its API key by [`ENV`]. The server is told to
//! show its `/metrics` under vLLM's metric names and to answer vLLM's
//! `/health` (`--metrics-names vllm`), so the operator reads and probes it as
//! it would vLLM. What is tested through it is the pod the operator builds and
//! everything around the engine: the init container's download, the probes,
//! the API key, the metric names, the rollouts. vLLM's own engine is not.
//!
//! `--tensor-parallel-size` is checked against the container's GPUs (vLLM
//! fails to start with more than it has) and otherwise ignored: the server
//! runs on the CPU. A flag the table does not know is an error naming it,
//! rather than a stand-in that silently differs.

use std::collections::BTreeMap;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::Container;

/// What becomes of one vLLM flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flag {
    /// The server's flag of that name, same value.
    To(&'static str),
    /// `--dtype`: vLLM's names to the server's.
    Dtype,
    /// `--tensor-parallel-size`: checked against the GPUs, then dropped.
    TensorParallel,
    /// `--override-generation-config {"max_new_tokens": N}`: the server's
    /// `--max-new-tokens N` (a cap there, where vLLM takes it as the default
    /// `max_tokens`; the tests ask for fewer).
    GenerationConfig,
    /// `--api-key`: the server's key variable (never its command line).
    ApiKey,
}

/// vLLM's flags the operator passes, and what the server gets for each.
const FLAGS: [(&str, Flag); 10] = [
    ("--model", Flag::To("--model")),
    ("--served-model-name", Flag::To("--served-model-name")),
    ("--host", Flag::To("--host")),
    ("--port", Flag::To("--port")),
    ("--max-model-len", Flag::To("--max-context")),
    ("--max-num-seqs", Flag::To("--max-batch-size")),
    ("--dtype", Flag::Dtype),
    ("--tensor-parallel-size", Flag::TensorParallel),
    ("--override-generation-config", Flag::GenerationConfig),
    ("--api-key", Flag::ApiKey),
];

/// vLLM's environment variables and the server's counterparts.
pub const ENV: [(&str, &str); 1] = [("VLLM_API_KEY", llmops_contract::env::API_KEYS)];

/// What the server is always given: vLLM's metric names and `/health`, and one
/// CPU thread (the node's cores are shared by every pod).
const ALWAYS: [&str; 4] = ["--metrics-names", "vllm", "--threads", "1"];

/// The GPU resource the tensor parallelism is checked against.
const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// The server's command line for vLLM's.
pub struct StandIn {
    /// The server's arguments.
    pub args: Vec<String>,
    /// Variables to set in the server's environment (the API key of
    /// `--api-key`).
    pub env: BTreeMap<String, String>,
}

/// vLLM's arguments after its command, or `None` when `argv` is not vLLM's
/// OpenAI server. `vllm serve MODEL` becomes `--model MODEL`.
pub fn vllm_args(argv: &[String]) -> Option<Vec<String>> {
    let strs: Vec<&str> = argv.iter().map(String::as_str).collect();
    match strs.as_slice() {
        [python, "-m", "vllm.entrypoints.openai.api_server", ..]
            if python.starts_with("python") =>
        {
            Some(argv[3..].to_vec())
        }
        ["vllm", "serve", model, ..] if !model.starts_with('-') => {
            let mut args = vec!["--model".to_string(), model.to_string()];
            args.extend(argv[3..].iter().cloned());
            Some(args)
        }
        ["vllm", "serve", ..] => Some(argv[2..].to_vec()),
        _ => None,
    }
}

/// The server's arguments for vLLM's `args` in `container`.
pub fn translate(args: &[String], container: &Container) -> anyhow::Result<StandIn> {
    let mut out = Vec::new();
    let mut env = BTreeMap::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_string())),
            _ => (arg.as_str(), None),
        };
        let flag = FLAGS
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, flag)| *flag)
            .with_context(|| {
                format!(
                    "vLLM stand-in: argument {name:?} has no counterpart in the server (known: {})",
                    FLAGS.map(|(f, _)| f).join(", ")
                )
            })?;
        let value = match inline {
            Some(value) => value,
            None => rest
                .next()
                .cloned()
                .with_context(|| format!("vLLM stand-in: {name} has no value"))?,
        };
        match flag {
            Flag::To(server) => out.extend([server.to_string(), value]),
            Flag::Dtype => out.extend(["--dtype".to_string(), dtype(&value)?.to_string()]),
            Flag::TensorParallel => check_gpus(&value, container)?,
            Flag::GenerationConfig => {
                let config: serde_json::Value = serde_json::from_str(&value)
                    .with_context(|| format!("vLLM stand-in: {name} is not JSON: {value}"))?;
                if let Some(tokens) = config.get("max_new_tokens") {
                    let tokens = tokens.as_u64().with_context(|| {
                        format!("vLLM stand-in: {name} max_new_tokens is not a count: {tokens}")
                    })?;
                    out.extend(["--max-new-tokens".to_string(), tokens.to_string()]);
                }
            }
            Flag::ApiKey => {
                env.insert(llmops_contract::env::API_KEYS.to_string(), value);
            }
        }
    }
    ensure!(
        out.iter().any(|a| a == "--model"),
        "vLLM stand-in: no --model (nor `vllm serve MODEL`)"
    );
    out.extend(ALWAYS.map(String::from));
    Ok(StandIn { args: out, env })
}

/// vLLM's `--dtype` as the server's.
fn dtype(value: &str) -> anyhow::Result<&'static str> {
    Ok(match value {
        "auto" => "auto",
        "bfloat16" => "bfloat16",
        "half" | "float16" => "float16",
        "float" | "float32" => "float32",
        other => bail!("vLLM stand-in: --dtype {other:?} is not one the server has"),
    })
}

/// vLLM starts only with at least as many GPUs as tensor-parallel ranks.
fn check_gpus(value: &str, container: &Container) -> anyhow::Result<()> {
    let size: u32 = value.parse().ok().filter(|n| *n >= 1).with_context(|| {
        format!("vLLM stand-in: --tensor-parallel-size {value:?} is not a count of at least 1")
    })?;
    let resources = container.resources.as_ref();
    let gpus = resources
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get(GPU_RESOURCE))
        .or_else(|| {
            resources
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(GPU_RESOURCE))
        })
        .map_or(Ok(0), |q| q.0.parse::<u32>())
        .with_context(|| format!("vLLM stand-in: resources {GPU_RESOURCE} is not a count"))?;
    ensure!(
        size <= gpus,
        "vLLM stand-in: --tensor-parallel-size {size} needs {size} GPUs; container {} has {gpus} (resources.limits[{GPU_RESOURCE}])",
        container.name
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn gpus(n: &str) -> Container {
        serde_json::from_value(serde_json::json!({
            "name": "server",
            "resources": {"limits": {"nvidia.com/gpu": n}}
        }))
        .unwrap()
    }

    #[test]
    fn the_operators_vllm_command_becomes_the_servers() {
        let argv = strings(&[
            "python3",
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            "/models/model",
            "--served-model-name",
            "big",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--tensor-parallel-size",
            "2",
            "--dtype",
            "bfloat16",
            "--max-model-len",
            "4096",
            "--max-num-seqs",
            "32",
            "--override-generation-config",
            "{\"max_new_tokens\": 256}",
        ]);
        let args = vllm_args(&argv).unwrap();
        let stand_in = translate(&args, &gpus("2")).unwrap();
        assert_eq!(
            stand_in.args,
            strings(&[
                "--model",
                "/models/model",
                "--served-model-name",
                "big",
                "--host",
                "0.0.0.0",
                "--port",
                "8000",
                "--dtype",
                "bfloat16",
                "--max-context",
                "4096",
                "--max-batch-size",
                "32",
                "--max-new-tokens",
                "256",
                "--metrics-names",
                "vllm",
                "--threads",
                "1",
            ])
        );
        assert!(stand_in.env.is_empty());
    }

    #[test]
    fn vllm_serve_and_inline_values() {
        let argv = strings(&["vllm", "serve", "/m", "--port=9000", "--api-key", "sk-1"]);
        let stand_in = translate(&vllm_args(&argv).unwrap(), &gpus("0")).unwrap();
        assert_eq!(
            &stand_in.args[..4],
            &strings(&["--model", "/m", "--port", "9000"])[..]
        );
        assert_eq!(
            stand_in
                .env
                .get(llmops_contract::env::API_KEYS)
                .map(String::as_str),
            Some("sk-1")
        );
        assert!(vllm_args(&strings(&["server", "--model", "/m"])).is_none());
        assert!(vllm_args(&strings(&["python3", "-m", "http.server"])).is_none());
    }

    #[test]
    fn bad_input_is_refused_naming_it() {
        let too_many = translate(
            &strings(&["--model", "/m", "--tensor-parallel-size", "4"]),
            &gpus("2"),
        );
        let message = format!("{:#}", too_many.err().unwrap());
        assert!(
            message.contains("--tensor-parallel-size 4") && message.contains("has 2"),
            "{message}"
        );
        let unknown = translate(&strings(&["--model", "/m", "--enable-lora"]), &gpus("1"));
        assert!(format!("{:#}", unknown.err().unwrap()).contains("\"--enable-lora\""));
        let no_model = translate(&strings(&["--port", "1"]), &gpus("1"));
        assert!(format!("{:#}", no_model.err().unwrap()).contains("no --model"));
        let dtype = translate(&strings(&["--model", "/m", "--dtype", "fp8"]), &gpus("1"));
        assert!(format!("{:#}", dtype.err().unwrap()).contains("--dtype \"fp8\""));
    }
}
