//! Our tokenizer gives the same ids as the Python `tokenizers` package on the
//! same `tokenizer.json`: one trained by `trainer prepare`'s trainer, and one
//! trained by Python and loaded through a model-directory URI.

mod common;

use std::process::Command;

use llmops_crds::dataset::{TokenizerTraining, TokenizerType};
use llmops_store::Credentials;
use llmops_trainer::prepare::tokenizer;

const SAMPLES: [&str; 6] = [
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, tabs\tand\nnewlines  ",
    "Unicode: naïve café — 東京 🚀 emoji",
    "numbers 1234567890 and symbols #$%&*()<|endoftext|>",
    "kalori nemo suvide anor elka",
    "",
];

fn python_ids(tokenizer_json: &std::path::Path, text_file: &std::path::Path) -> Vec<Vec<u32>> {
    let out = Command::new(common::venv_python())
        .arg(common::reference_script())
        .arg("encode")
        .arg(tokenizer_json)
        .arg(text_file)
        .output()
        .expect("run the venv python (scripts/setup-venv)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::from_value(v["ids"].clone()).unwrap()
}

fn corpus() -> Vec<String> {
    let mut docs: Vec<String> = (0..400).map(|i| common::words(i, 50).join(" ")).collect();
    docs.extend(SAMPLES.iter().map(|s| s.repeat(3)));
    docs
}

#[test]
fn trained_tokenizer_matches_python() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = TokenizerTraining {
        kind: TokenizerType::Bpe,
        vocab_size: 600,
        min_frequency: 2,
        special_tokens: vec!["<|endoftext|>".into(), "<|pad|>".into()],
    };
    let tk = tokenizer::train(corpus().into_iter(), &spec).unwrap();
    let path = tmp.path().join("tokenizer.json");
    std::fs::write(&path, tk.to_string(true).unwrap()).unwrap();
    let text = tmp.path().join("samples.txt");
    std::fs::write(
        &text,
        SAMPLES.map(|s| s.replace('\n', " ")).join("\n") + "\n",
    )
    .unwrap();
    let lines: Vec<String> = SAMPLES.iter().map(|s| s.replace('\n', " ")).collect();
    let ours = tokenizer::encode_batch(&tk, lines).unwrap();
    assert_eq!(ours, python_ids(&path, &text));
    assert!(
        ours[3].contains(&0),
        "special tokens in text map to their id"
    );
}

#[tokio::test]
async fn python_trained_tokenizer_loads_from_a_model_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let train_text = tmp.path().join("train.txt");
    std::fs::write(&train_text, corpus().join("\n")).unwrap();
    let script = format!(
        "from tokenizers import ByteLevelBPETokenizer\n\
         t = ByteLevelBPETokenizer()\n\
         t.train([{:?}], vocab_size=500, special_tokens=['</s>', '<pad>'])\n\
         t.save({:?})\n",
        train_text.display().to_string(),
        model.join("tokenizer.json").display().to_string()
    );
    let status = Command::new(common::venv_python())
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success());
    let tk = tokenizer::load(
        &format!("file://{}", model.display()),
        &Credentials::Ambient,
    )
    .await
    .unwrap();
    assert_eq!(tokenizer::special_ids(&tk, None).unwrap(), (0, 1));
    let text = tmp.path().join("samples.txt");
    let lines: Vec<String> = SAMPLES.iter().map(|s| s.replace('\n', " ")).collect();
    std::fs::write(&text, lines.join("\n") + "\n").unwrap();
    assert_eq!(
        tokenizer::encode_batch(&tk, lines).unwrap(),
        python_ids(&model.join("tokenizer.json"), &text)
    );
}
