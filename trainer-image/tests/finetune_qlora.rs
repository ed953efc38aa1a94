//! `trainer finetune` with `method.type: qlora` on CPU, on the quickstart's
//! Q&A set (`examples/quickstart/02-dataset-qa.yaml`): the base's block
//! projections held in NF4 under LoRA adapters. The loss falls; the merged
//! export is the NF4-dequantized base with the adapters folded in (every other
//! tensor untouched); a resumed run reproduces the uninterrupted one; the unmerged export is a PEFT adapter that loads onto the
//! base and merges into the same model. Prints the base's bytes in fp32 and
//! NF4 and the step time next to LoRA on the same model.

mod pretrain_common;

use std::path::Path;
use std::process::Command;

use llmops_model::nf4::Nf4Tensor;
use pretrain_common::*;
use serde_json::{Value, json};
use tch::Kind;

/// The quickstart's Q&A records (JSON lines, `question` / `answer`).
fn quickstart_qa() -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/02-dataset-qa.yaml");
    let doc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let content = doc["spec"]["sources"][0]["inline"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("{} has no inline content", path.display()));
    assert!(content.lines().count() >= 40, "the quickstart set shrank");
    content.to_string()
}

/// The quickstart Q&A set prepared as the quickstart does (its template,
/// prompt masking, 64-token rows), with a tokenizer trained on it (the
/// quickstart borrows the stories corpus's).
fn prepare(dir: &Path) -> String {
    let resource = json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "quickstart-qa", "namespace": "ml"},
        "spec": {
            "type": "instruction",
            "sources": [{"inline": {"content": quickstart_qa()},
                         "format": {"jsonl": {"promptField": "question", "responseField": "answer"}}}],
            "tokenizer": {"train": {"vocabSize": 320}},
            "segmentation": {"sequenceLength": 64, "pack": false},
            "labeling": {"template": "Q: {prompt}\nA: ", "maskPrompt": true},
            "split": {"validation": 0.1, "seed": 1},
        },
    });
    let path = dir.join("qa.json");
    std::fs::write(&path, resource.to_string()).unwrap();
    let uri = format!("file://{}", dir.join("qa").display());
    let run = Command::new(TRAINER)
        .args(["prepare", "--resource"])
        .arg(&path)
        .args(["--output", &uri])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "trainer prepare failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    uri
}

/// A Llama-shaped base (hidden 128: block projections of 64-value blocks)
/// pretrained briefly on the set, so that base and data share the tokenizer.
fn base(dir: &Path, dataset: &str) -> String {
    let mut job = job("base", "llama", json!({"maxSteps": 10}));
    job["spec"]["model"] = json!({"family": "llama", "layers": 2, "heads": 4, "kvHeads": 2,
                                  "hidden": 128, "contextLength": 64});
    assert_ok(&pretrain(dir, &job, dataset, "base"));
    format!("file://{}", model_dir(&dir.join("base")).display())
}

fn resource(kind: &str, merge: bool) -> Value {
    json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "FineTune",
        "metadata": {"name": "ft", "namespace": "ml"},
        "spec": {
            "baseModel": {"uri": "file:///unused"},
            "datasetRef": {"name": "quickstart-qa"},
            "method": {"type": kind, "lora": {"rank": 8, "alpha": 16,
                       "targetModules": ["q_proj", "v_proj", "down_proj"]}},
            "training": {"maxSteps": 40, "batchSize": 8, "microBatchSize": 4,
                         "learningRate": 1e-2, "warmupSteps": 2, "seed": 3,
                         "evalEvery": 20, "checkpointEvery": 20},
            "evaluation": {"metrics": ["perplexity"], "gates": {}},
            "output": {"mergeAdapter": merge},
        }
    })
}

fn finetune(dir: &Path, resource: &Value, base: &str, dataset: &str, output: &str) -> Value {
    let path = dir.join(format!("{output}.json"));
    std::fs::write(&path, resource.to_string()).unwrap();
    let child = Command::new(TRAINER)
        .args(["finetune", "--resource"])
        .arg(&path)
        .args(["--base-model", base, "--dataset", dataset])
        .args([
            "--output",
            &format!("file://{}", dir.join(output).display()),
        ])
        .env(
            llmops_contract::env::TERMINATION_LOG,
            termination_path(dir, output),
        )
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("WORLD_SIZE")
        .env_remove("RANK")
        .env("OMP_NUM_THREADS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = finish(child, dir, output);
    assert_eq!(run.code, 0, "trainer finetune failed:\n{}", run.stderr);
    serde_json::from_str(&run.termination).unwrap()
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

#[test]
fn qlora_learns_the_quickstart_set_and_exports_merged_or_as_a_peft_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = prepare(tmp.path());
    let base_uri = base(tmp.path(), &dataset);
    let base_dir = model_dir(&tmp.path().join("base"));

    let out = finetune(
        tmp.path(),
        &resource("qlora", true),
        &base_uri,
        &dataset,
        "qlora",
    );
    let losses = losses(&log(tmp.path(), "qlora"));
    assert_eq!(losses.len(), 40);
    let (first, last) = (mean(&losses[..5]), mean(&losses[35..]));
    println!("QLoRA loss: first 5 steps {first:.4}, last 5 {last:.4}");
    assert!(last < first * 0.95, "QLoRA did not learn: {losses:?}");

    // The merged model: block projections are the NF4 base dequantized (plus
    // the update where adapted); embeddings, norms and lm_head are the base's.
    let base = tensors(&base_dir.join("model.safetensors"));
    let tuned = tensors(&model_dir(&tmp.path().join("qlora")).join("model.safetensors"));
    assert_eq!(
        base.keys().collect::<Vec<_>>(),
        tuned.keys().collect::<Vec<_>>()
    );
    let projection = |n: &str| n.contains(".self_attn.") || n.contains(".mlp.");
    let adapted = |n: &str| {
        ["q_proj", "v_proj", "down_proj"]
            .iter()
            .any(|t| n.contains(t))
    };
    for (name, t) in &tuned {
        let diff = max_abs_diff(t, &base[name]);
        if !projection(name) {
            assert_eq!(diff, 0.0, "{name} is not quantized but changed");
            continue;
        }
        let nf4 = Nf4Tensor::quantize(&base[name]).unwrap();
        let dequantized = nf4.dequantize(Kind::Float).unwrap();
        let from_nf4 = max_abs_diff(t, &dequantized);
        if adapted(name) {
            assert!(from_nf4 > 0.0, "{name} was adapted but did not change");
        } else {
            assert_eq!(from_nf4, 0.0, "{name} is not the NF4 base");
            assert!(diff > 0.0, "{name}: NF4 rounding is invisible");
        }
    }

    // Checkpoints hold the adapters and what is not quantized; resuming from
    // step 20 quantizes the base again and reproduces the run exactly.
    let ckpt = tmp.path().join("qlora/checkpoints/step-20");
    let resumed_ckpt = tmp.path().join("resumed/checkpoints/step-20");
    std::fs::create_dir_all(&resumed_ckpt).unwrap();
    for entry in std::fs::read_dir(&ckpt).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), resumed_ckpt.join(entry.file_name())).unwrap();
    }
    let head: String = log(tmp.path(), "qlora")[..20]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(tmp.path().join("resumed/checkpoints/train_log.jsonl"), head).unwrap();
    finetune(
        tmp.path(),
        &resource("qlora", true),
        &base_uri,
        &dataset,
        "resumed",
    );
    assert_eq!(pretrain_common::losses(&log(tmp.path(), "resumed")), losses);
    let resumed = tensors(&model_dir(&tmp.path().join("resumed")).join("model.safetensors"));
    for (name, t) in &tuned {
        assert_eq!(
            max_abs_diff(t, &resumed[name]),
            0.0,
            "{name} differs after resume"
        );
    }

    // Unmerged: a PEFT adapter that, on the NF4 base, merges into the same model.
    let adapter = finetune(
        tmp.path(),
        &resource("qlora", false),
        &base_uri,
        &dataset,
        "adapter",
    );
    assert_eq!(adapter["evaluation"], out["evaluation"]);
    let dir = model_dir(&tmp.path().join("adapter"));
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 8);
    let mut loaded =
        llmops_model::io::load(&base_dir, tch::Device::Cpu, llmops_model::Dtype::F32).unwrap();
    llmops_model::peft::load_adapter(&dir, &mut loaded.model, &loaded.vs).unwrap();
    let quantized = loaded.model.quantize_base(&loaded.vs).unwrap();
    loaded.model.dequantize_base(&loaded.vs).unwrap();
    loaded.model.merge_lora().unwrap();
    let got = loaded.vs.variables();
    for (name, t) in &tuned {
        assert_eq!(max_abs_diff(t, &got[name]), 0.0, "{name}");
    }

    // Measured, not asserted: the base's projection bytes and the step time
    // against LoRA on the same model and data, in this run.
    let lora = finetune(
        tmp.path(),
        &resource("lora", true),
        &base_uri,
        &dataset,
        "lora",
    );
    println!(
        "base block projections: {} parameters, fp32 {} bytes, NF4 + double quantization {} bytes ({:.4} bytes/parameter, {:.1}x smaller)",
        quantized.parameters,
        quantized.fp32_bytes,
        quantized.nf4_bytes,
        quantized.bytes_per_parameter(),
        quantized.fp32_bytes as f64 / quantized.nf4_bytes as f64
    );
    let tokens_per_step = 8.0 * 64.0;
    for (name, run) in [("lora", &lora), ("qlora", &out)] {
        let tps = run["progress"]["tokensPerSecond"].as_f64().unwrap();
        println!(
            "{name}: {tps:.0} tokens/s, {:.1} ms/step (CPU, 1 thread)",
            1000.0 * tokens_per_step / tps
        );
    }
}
