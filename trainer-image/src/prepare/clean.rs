//! Text normalisation: Unicode form, control characters, case, punctuation and
//! whitespace, in that order (so NFKC-folded punctuation is stripped too).

use llmops_crds::dataset::{Normalization, UnicodeForm};
use unicode_normalization::UnicodeNormalization;

/// Normalises `text` as `spec` says.
pub fn normalize(text: &str, spec: &Normalization) -> String {
    let mut s: String = match spec.unicode {
        UnicodeForm::NFC => text.nfc().collect(),
        UnicodeForm::NFKC => text.nfkc().collect(),
        UnicodeForm::None => text.to_string(),
    };
    if spec.remove_control_characters {
        // `\r\n` and lone `\r` are line breaks, not noise: keep them as `\n`.
        s = s.replace("\r\n", "\n").replace('\r', "\n");
        s.retain(|c| !c.is_control() || c == '\n' || c == '\t');
    }
    if spec.lowercase {
        s = s.to_lowercase();
    }
    if spec.strip_punctuation {
        s.retain(|c| !is_punctuation(c));
    }
    if spec.collapse_whitespace {
        s = collapse_whitespace(&s);
    }
    s
}

/// ASCII punctuation and the Unicode punctuation blocks that occur in real text
/// (general punctuation, CJK punctuation, Latin-1 quotes and marks). Symbols such
/// as `$` or `+` that carry meaning in code and prices are ASCII punctuation and
/// go too, as users who ask for stripping expect.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(c,
            '\u{00A1}' | '\u{00A7}' | '\u{00AB}' | '\u{00B6}' | '\u{00B7}' | '\u{00BB}' | '\u{00BF}'
            | '\u{2010}'..='\u{2027}'
            | '\u{2030}'..='\u{205E}'
            | '\u{3001}'..='\u{3003}'
            | '\u{3008}'..='\u{3011}'
            | '\u{3014}'..='\u{301F}'
            | '\u{FF01}'..='\u{FF0F}'
            | '\u{FF1A}'..='\u{FF20}')
}

/// Collapses runs of horizontal whitespace to one space, drops spaces at line
/// ends, keeps at most one blank line between paragraphs, and trims.
fn collapse_whitespace(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    let mut newlines = 0usize;
    for c in s.chars() {
        if c == '\n' {
            pending_space = false;
            newlines += 1;
        } else if c.is_whitespace() {
            pending_space = true;
        } else {
            if !out.is_empty() {
                if newlines > 0 {
                    out.push_str(if newlines > 1 { "\n\n" } else { "\n" });
                } else if pending_space {
                    out.push(' ');
                }
            }
            newlines = 0;
            pending_space = false;
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Normalization {
        Normalization::default()
    }

    #[test]
    fn nfc_and_nfkc() {
        let decomposed = "e\u{0301}";
        assert_eq!(normalize(decomposed, &spec()), "\u{e9}");
        let nfkc = Normalization {
            unicode: UnicodeForm::NFKC,
            ..spec()
        };
        assert_eq!(normalize("\u{FB01}le \u{FF21}", &nfkc), "file A");
        assert_eq!(normalize("\u{FB01}", &spec()), "\u{FB01}");
    }

    #[test]
    fn whitespace_and_control_characters() {
        assert_eq!(
            normalize("  a \t b\u{0007}c  \r\n\r\n\n\nd  \n", &spec()),
            "a bc\n\nd"
        );
        let keep = Normalization {
            collapse_whitespace: false,
            remove_control_characters: false,
            ..spec()
        };
        assert_eq!(normalize(" a\u{0007} ", &keep), " a\u{0007} ");
    }

    #[test]
    fn lowercase_and_punctuation() {
        let s = Normalization {
            lowercase: true,
            strip_punctuation: true,
            ..spec()
        };
        assert_eq!(
            normalize("Hello, World! \u{201C}Quoted\u{201D}\u{2026}", &s),
            "hello world quoted"
        );
    }
}
