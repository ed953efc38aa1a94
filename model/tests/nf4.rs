//! NF4 with double quantization against the Python reference
//! (`tests/python/nf4_reference.py`, numpy, written from the QLoRA paper and
//! bitsandbytes' scheme), and the quantized projections of QLoRA: forward is
//! the dequantized weight's matmul, exactly; the base leaves the store and
//! comes back for export.

mod common;

use common::{ids, max_abs_diff, run_script, tiny_model};
use llmops_model::nf4::{self, NF4_CODE, Nf4Tensor};
use llmops_model::{Family, LoraSettings, io};
use tch::{Device, Kind, Tensor};

/// bitsandbytes' NF4 table (`functional.py`, `get_4bit_type("nf4")`).
#[allow(clippy::excessive_precision)]
const BITSANDBYTES_NF4: [f64; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

#[test]
fn the_codebook_is_the_papers_quantile_construction_and_bitsandbytes_table() {
    let recomputed = nf4::nf4_codebook().unwrap();
    assert_eq!(
        recomputed, NF4_CODE,
        "recomputed quantiles differ from the table"
    );
    for (ours, theirs) in NF4_CODE.iter().zip(BITSANDBYTES_NF4) {
        assert!((*ours as f64 - theirs).abs() <= 1e-7, "{ours} vs {theirs}");
    }
    assert_eq!(NF4_CODE[7], 0.0, "zero is exact");
    let map = nf4::dynamic_map();
    assert!(map.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!((map[0], map[255]), (-0.99296874, 1.0));
}

fn read(dir: &std::path::Path, name: &str) -> Tensor {
    Tensor::read_npy(dir.join(format!("{name}.npy"))).unwrap()
}

#[test]
fn quantize_and_dequantize_equal_the_python_reference() {
    tch::manual_seed(7);
    // 305 blocks of 64 (the last one partial, two all-zero), so 2 blocks of
    // 256 constants (the second partial): every padding path is taken.
    let weights = Tensor::randn([130, 150], (Kind::Float, Device::Cpu)) * 0.02;
    let _ = weights.view([-1]).narrow(0, 0, 250).fill_(0.0);
    // A few outliers, as real weights have.
    let _ = weights.view([-1]).narrow(0, 5000, 3).fill_(0.9);
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("weights.npy");
    weights.write_npy(&input).unwrap();
    let out = tmp.path().join("reference");
    run_script(
        "nf4_reference.py",
        &[input.to_str().unwrap(), out.to_str().unwrap()],
    );

    let q = Nf4Tensor::quantize(&weights).unwrap();
    let code = Tensor::from_slice(&NF4_CODE);
    assert!(read(&out, "codebook").equal(&code), "codebook");
    let map = Tensor::from_slice(&nf4::dynamic_map());
    assert!(read(&out, "dynamic_map").equal(&map), "dynamic map");
    assert!(read(&out, "packed").equal(&q.packed), "NF4 codes");
    assert!(
        read(&out, "stat_codes").equal(&q.stat_codes),
        "8-bit constants"
    );
    assert!(
        read(&out, "stat_absmax").equal(&q.stat_absmax),
        "their absmax"
    );
    let offset = read(&out, "stat_offset").double_value(&[0]) as f32;
    assert_eq!(offset, q.stat_offset, "the constants' mean");
    assert_eq!(
        max_abs_diff(&read(&out, "absmax_dq"), &q.absmax().unwrap()),
        0.0
    );
    let dequantized = q.dequantize(Kind::Float).unwrap();
    let reference = read(&out, "dequantized");
    assert_eq!(dequantized.size(), weights.size());
    // The same fp32 operations in the same order: equal up to fp32 rounding.
    let diff = max_abs_diff(&reference, &dequantized);
    assert!(diff <= 1e-7, "dequantized values differ by {diff}");
    // The double quantization moves each absmax by less than its 8-bit step.
    let error = max_abs_diff(&dequantized, &weights);
    assert!(error < 0.9 / 7.0, "quantization error {error}");
    assert!(error > 0.0);
}

#[test]
fn nf4_takes_about_half_a_byte_a_parameter() {
    let weights = Tensor::randn([1024, 1024], (Kind::Float, Device::Cpu));
    let q = Nf4Tensor::quantize(&weights).unwrap();
    let per_param = q.bytes() as f64 / q.numel() as f64;
    // 4 bits + 8 bits / 64 + 32 bits / (64 · 256): 0.5159 bytes.
    println!(
        "NF4 + double quantization: {} bytes for {} parameters ({per_param:.4} bytes/parameter; fp32 {} bytes)",
        q.bytes(),
        q.numel(),
        4 * q.numel()
    );
    assert!((per_param - 0.515_869).abs() < 1e-5, "{per_param}");
}

fn lora(targets: &[&str]) -> LoraSettings {
    LoraSettings {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: targets.iter().map(|t| t.to_string()).collect(),
    }
}

#[test]
fn quantized_projections_multiply_by_the_dequantized_weight_and_export_back() {
    for (family, targets) in [
        (Family::Llama, vec!["q_proj", "v_proj"]),
        (Family::Gpt2, vec!["c_attn"]),
    ] {
        let (vs, mut model) = tiny_model(family, true, 5);
        let projections = model.linears_mut().len();
        model.add_lora(&vs, &lora(&targets)).unwrap();
        let before = vs.variables().len();
        let report = model.quantize_base(&vs).unwrap();
        assert_eq!(report.layers, projections);
        assert_eq!(vs.variables().len(), before - projections, "{family:?}");
        assert!(
            vs.variables()
                .iter()
                .all(|(n, t)| !t.requires_grad() || llmops_model::lora::is_adapter(n)),
            "only adapters train"
        );
        println!(
            "{family:?}: {} projection weights, fp32 {} bytes, NF4 {} bytes ({:.4} bytes/parameter)",
            report.parameters,
            report.fp32_bytes,
            report.nf4_bytes,
            report.bytes_per_parameter()
        );

        let x = Tensor::randn([2, 3, 64], (Kind::Float, Device::Cpu));
        for (name, linear) in model.linears_mut() {
            let q = linear.quantized.as_ref().unwrap();
            let w = q.dequantize(Kind::Float).unwrap();
            let w = match linear.layout {
                llmops_model::layers::WeightLayout::OutIn => w,
                llmops_model::layers::WeightLayout::InOut => w.tr(),
            };
            let input = x
                .narrow(2, 0, 1)
                .expand([2, 3, linear.in_features()], false);
            let input = input.contiguous()
                * Tensor::randn([linear.in_features()], (Kind::Float, Device::Cpu));
            let expected = input.linear(&w, linear.bias.as_ref());
            let got = linear.forward(&input).unwrap();
            assert!(
                got.equal(&expected),
                "{name}: forward is not the dequantized matmul"
            );
        }

        let tokens = ids(&[1, 5, 9, 2, 7]);
        let quantized = model.forward_t(&tokens, false).unwrap();
        model.dequantize_base(&vs).unwrap();
        assert_eq!(vs.variables().len(), before);
        let restored = model.forward_t(&tokens, false).unwrap();
        assert_eq!(max_abs_diff(&quantized, &restored), 0.0);
        model.merge_lora().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        io::save(tmp.path(), &vs, &model, &Default::default()).unwrap();
        let loaded = io::load(tmp.path(), Device::Cpu, llmops_model::Dtype::F32).unwrap();
        let again = loaded.model.forward_t(&tokens, false).unwrap();
        assert!(max_abs_diff(&quantized, &again) < 1e-5);
    }
}
