//! `trainer finetune` end to end on CPU: a base model pretrained here on a tiny
//! instruction set is fine-tuned with LoRA (only the adapted projections change,
//! merged into a plain model) or fully, evaluated (perplexity, ROUGE-L, BLEU,
//! exact match), gated, resumed from a checkpoint exactly, and refused when the
//! dataset's tokenizer is not the base model's.

mod pretrain_common;

use std::path::Path;
use std::process::Command;

use pretrain_common::*;
use serde_json::{Value, json};

/// A dataset and a base model trained on it (so they share the tokenizer).
fn base(dir: &Path) -> (String, String) {
    let dataset = prepare_instruction_dataset(dir);
    let job = job("base", "llama", json!({"maxSteps": 20}));
    assert_ok(&pretrain(dir, &job, &dataset, "base"));
    (
        dataset,
        format!("file://{}", model_dir(&dir.join("base")).display()),
    )
}

fn finetune_resource(method: Value, gates: Value) -> Value {
    json!({
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "FineTune",
        "metadata": {"name": "ft", "namespace": "ml"},
        "spec": {
            "baseModel": {"uri": "file:///unused"},
            "datasetRef": {"name": "qa"},
            "method": method,
            "training": {"maxSteps": 15, "batchSize": 8, "microBatchSize": 4,
                         "learningRate": 1e-2, "warmupSteps": 2, "seed": 3,
                         "evalEvery": 5, "checkpointEvery": 5, "checkpointsKept": 5},
            "evaluation": {"metrics": ["perplexity", "rougeL", "bleu", "exactMatch"],
                           "samples": 8, "generation": {"maxNewTokens": 12},
                           "gates": gates},
        }
    })
}

fn lora() -> Value {
    json!({"type": "lora", "lora": {"rank": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]}})
}

fn finetune(dir: &Path, resource: &Value, base: &str, dataset: &str, output: &str) -> Run {
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
    finish(child, dir, output)
}

fn result(run: &Run) -> Value {
    assert_eq!(run.code, 0, "trainer finetune failed:\n{}", run.stderr);
    serde_json::from_str(&run.termination).unwrap()
}

#[test]
fn lora_trains_only_the_adapted_projections_and_exports_a_merged_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (dataset, base_uri) = base(tmp.path());
    let resource = finetune_resource(lora(), json!({"maxPerplexity": 1.0e6}));
    let run = finetune(tmp.path(), &resource, &base_uri, &dataset, "lora");
    let out = result(&run);

    let eval = &out["evaluation"];
    for key in ["perplexity", "rougeL", "bleu", "exactMatch"] {
        assert!(eval[key].is_number(), "no {key}: {eval}");
    }
    // Every held-out record up to the 8 asked for (the tiny set has fewer).
    let samples = eval["samples"].as_i64().unwrap();
    assert!((1..=8).contains(&samples), "samples {samples}");
    assert!(eval["rougeL"].as_f64().unwrap() <= 1.0);
    assert!(eval["bleu"].as_f64().unwrap() <= 100.0);
    assert_eq!(out["gate"]["passed"], true, "{}", out["gate"]);
    assert!(
        out["artifact"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let losses = losses(&log(tmp.path(), "lora"));
    assert_eq!(losses.len(), 15);
    assert!(losses[14] < losses[0], "LoRA did not learn: {losses:?}");

    // The merged model is a plain model: base weights everywhere except the
    // adapted projections, and no adapter tensors.
    let base = tensors(&model_dir(&tmp.path().join("base")).join("model.safetensors"));
    let tuned = tensors(&model_dir(&tmp.path().join("lora")).join("model.safetensors"));
    assert_eq!(
        base.keys().collect::<Vec<_>>(),
        tuned.keys().collect::<Vec<_>>()
    );
    for (name, t) in &tuned {
        let diff = max_abs_diff(t, &base[name]);
        if name.ends_with("q_proj.weight") || name.ends_with("v_proj.weight") {
            assert!(diff > 0.0, "{name} was adapted but did not change");
        } else {
            assert_eq!(diff, 0.0, "{name} is frozen but changed");
        }
    }
    let lineage: Value = serde_json::from_str(
        &std::fs::read_to_string(model_dir(&tmp.path().join("lora")).join("llmops.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(lineage["kind"], "FineTune");
    assert_eq!(lineage["lineage"]["baseModel"]["uri"], base_uri);
    assert_eq!(lineage["metrics"]["gate"]["passed"], true);

    // Resuming the LoRA run from its step-5 checkpoint (adapters included)
    // reproduces it exactly.
    let ckpt = tmp.path().join("lora/checkpoints/step-5");
    assert!(ckpt.join("adapters.safetensors").exists());
    let resumed_ckpt = tmp.path().join("resumed/checkpoints/step-5");
    std::fs::create_dir_all(&resumed_ckpt).unwrap();
    for entry in std::fs::read_dir(&ckpt).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), resumed_ckpt.join(entry.file_name())).unwrap();
    }
    let full_log = log(tmp.path(), "lora");
    let head: String = full_log[..5].iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(tmp.path().join("resumed/checkpoints/train_log.jsonl"), head).unwrap();
    result(&finetune(
        tmp.path(),
        &resource,
        &base_uri,
        &dataset,
        "resumed",
    ));
    assert_eq!(pretrain_common::losses(&log(tmp.path(), "resumed")), losses);
    let resumed = tensors(&model_dir(&tmp.path().join("resumed")).join("model.safetensors"));
    for (name, t) in &tuned {
        assert_eq!(
            max_abs_diff(t, &resumed[name]),
            0.0,
            "{name} differs after resume"
        );
    }
}

#[test]
fn an_unmerged_lora_fine_tune_exports_a_peft_adapter_that_merges_into_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (dataset, base_uri) = base(tmp.path());
    let merged_resource = finetune_resource(lora(), json!({"maxPerplexity": 1.0e6}));
    let merged = result(&finetune(
        tmp.path(),
        &merged_resource,
        &base_uri,
        &dataset,
        "merged",
    ));
    let mut resource = merged_resource.clone();
    resource["spec"]["output"] = json!({"mergeAdapter": false});
    let out = result(&finetune(
        tmp.path(),
        &resource,
        &base_uri,
        &dataset,
        "adapter",
    ));
    // Evaluated as the merged run was: the same training, the same scores.
    assert_eq!(out["evaluation"], merged["evaluation"]);

    // The export is the adapter alone, in the PEFT layout, with its manifest.
    let dir = model_dir(&tmp.path().join("adapter"));
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "llmops.json",
            "manifest.json",
            "tokenizer.json"
        ]
    );
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["target_modules"], json!(["q_proj", "v_proj"]));
    assert_eq!(config["base_model_name_or_path"], base_uri);
    let adapters = tensors(&dir.join("adapter_model.safetensors"));
    assert!(!adapters.is_empty());
    assert!(
        adapters
            .keys()
            .all(|k| k.starts_with("base_model.model.model.layers.")
                && (k.contains(".q_proj.lora_") || k.contains(".v_proj.lora_")))
    );

    // On its base, merged, it is the merged run's model, weight for weight.
    let base_dir = model_dir(&tmp.path().join("base"));
    let mut loaded =
        llmops_model::io::load(&base_dir, tch::Device::Cpu, llmops_model::Dtype::F32).unwrap();
    llmops_model::peft::load_adapter(&dir, &mut loaded.model, &loaded.vs).unwrap();
    loaded.model.merge_lora().unwrap();
    let want = tensors(&model_dir(&tmp.path().join("merged")).join("model.safetensors"));
    let got = loaded.vs.variables();
    for (name, t) in &want {
        assert_eq!(max_abs_diff(t, &got[name]), 0.0, "{name}");
    }
}

#[test]
fn an_unmerged_full_fine_tune_is_refused_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let (dataset, base_uri) = base(tmp.path());
    let mut resource = finetune_resource(json!({"type": "full"}), json!({}));
    resource["spec"]["output"] = json!({"mergeAdapter": false});
    let run = finetune(tmp.path(), &resource, &base_uri, &dataset, "full");
    assert_ne!(run.code, 0);
    assert!(
        run.termination.contains("spec.output.mergeAdapter"),
        "{}",
        run.termination
    );
}

#[test]
fn a_full_fine_tune_changes_every_matrix_and_a_failed_gate_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let (dataset, base_uri) = base(tmp.path());
    let resource = finetune_resource(json!({"type": "full"}), json!({"maxPerplexity": 1.0}));
    let out = result(&finetune(
        tmp.path(),
        &resource,
        &base_uri,
        &dataset,
        "full",
    ));
    assert_eq!(out["gate"]["passed"], false);
    let message = out["gate"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("perplexity ") && message.ends_with(" > 1"),
        "{message}"
    );
    let base = tensors(&model_dir(&tmp.path().join("base")).join("model.safetensors"));
    for (name, t) in tensors(&model_dir(&tmp.path().join("full")).join("model.safetensors")) {
        if t.dim() == 2 {
            assert!(max_abs_diff(&t, &base[&name]) > 0.0, "{name} did not train");
        }
    }
}

#[test]
fn a_dataset_with_another_tokenizer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, base_uri) = base(tmp.path());
    let other = prepare_dataset(tmp.path(), 32);
    let resource = finetune_resource(lora(), json!({}));
    let run = finetune(tmp.path(), &resource, &base_uri, &other, "mismatch");
    assert_eq!(run.code, 2, "a permanent error: {}", run.stderr);
    assert!(run.stderr.contains("different tokenizer"), "{}", run.stderr);
}

#[test]
fn early_stopping_ends_training_once_validation_stops_improving() {
    let tmp = tempfile::tempdir().unwrap();
    let (dataset, base_uri) = base(tmp.path());
    let mut resource = finetune_resource(lora(), json!({}));
    // No decrease can beat a min delta of 100: the second evaluation (step 10
    // of 15) is one without improvement, and patience 1 stops there.
    resource["spec"]["earlyStopping"] = json!({"patience": 1, "minDelta": 100.0});
    let out = result(&finetune(
        tmp.path(),
        &resource,
        &base_uri,
        &dataset,
        "early",
    ));
    assert_eq!(out["progress"]["step"], 10, "{}", out["progress"]);
    assert_eq!(log(tmp.path(), "early").len(), 10);
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(
            tmp.path()
                .join("early/checkpoints/step-10/trainer_state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(state["stoppedEarly"], true, "{state}");
    // A restart (e.g. after a failed upload) exports again without training on.
    let again = result(&finetune(
        tmp.path(),
        &resource,
        &base_uri,
        &dataset,
        "early",
    ));
    assert_eq!(again["progress"]["step"], 10);
    assert_eq!(log(tmp.path(), "early").len(), 10);
}
