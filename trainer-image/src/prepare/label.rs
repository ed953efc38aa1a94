//! Instruction labeling: the prompt rendered through the template, the response
//! after it, and a loss mask that makes only response tokens targets.

/// Renders the prompt part of an example.
pub fn render_prompt(template: &str, prompt: &str) -> String {
    template.replace("{prompt}", prompt)
}

/// Concatenates prompt and response ids (and EOS) with a mask: 1 = target.
/// Prompt tokens are targets only when `mask_prompt` is false; the EOS is a
/// target so the model learns to stop.
pub fn label(
    prompt: &[u32],
    response: &[u32],
    eos: Option<u32>,
    mask_prompt: bool,
) -> (Vec<u32>, Vec<u8>) {
    let mut tokens = Vec::with_capacity(prompt.len() + response.len() + 1);
    tokens.extend_from_slice(prompt);
    tokens.extend_from_slice(response);
    tokens.extend(eos);
    let mut mask = vec![u8::from(!mask_prompt); prompt.len()];
    mask.resize(tokens.len(), 1);
    (tokens, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_is_masked_response_and_eos_are_targets() {
        assert_eq!(render_prompt("Q: {prompt}\nA: ", "hi"), "Q: hi\nA: ");
        let (t, m) = label(&[1, 2, 3], &[4, 5], Some(0), true);
        assert_eq!(t, [1, 2, 3, 4, 5, 0]);
        assert_eq!(m, [0, 0, 0, 1, 1, 1]);
        let (_, m) = label(&[1], &[4], None, false);
        assert_eq!(m, [1, 1]);
    }
}
