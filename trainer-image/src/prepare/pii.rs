//! PII redaction: emails, IPv4 addresses, payment-card numbers (Luhn-checked) and
//! phone numbers are replaced by `<EMAIL>`, `<IPV4>`, `<CARD>` and `<PHONE>`.
//!
//! Kinds are applied in that order so that the most specific pattern wins: a card
//! number is never half-eaten as a phone number, and an IP is not a phone.

use std::sync::LazyLock;

use llmops_crds::dataset::PiiKind;
use regex::Regex;

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
        .expect("valid regex")
});
static IPV4: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\b")
        .expect("valid regex")
});
static CARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b[0-9](?:[ -]?[0-9]){12,18}\b").expect("valid regex"));
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{2,4}\)[ .-]?|\b[0-9]{2,4}[ .-])[0-9]{3,4}[ .-][0-9]{4}\b")
        .expect("valid regex")
});

/// Redactions made, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Redactions {
    pub email: u64,
    pub ipv4: u64,
    pub card: u64,
    pub phone: u64,
}

impl Redactions {
    pub fn total(&self) -> u64 {
        self.email + self.ipv4 + self.card + self.phone
    }

    pub fn add(&mut self, other: &Redactions) {
        self.email += other.email;
        self.ipv4 += other.ipv4;
        self.card += other.card;
        self.phone += other.phone;
    }
}

/// Luhn checksum over the digits of `s` (separators ignored).
pub fn luhn_valid(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// True when the digits of `text[start..end]` are not part of a longer number
/// (such as a 16-digit number failing the Luhn check, which is no phone number).
fn standalone(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().rev().take(2).collect::<Vec<_>>();
    let after = text[end..].chars().take(2).collect::<Vec<_>>();
    let continues = |near: &[char]| match near {
        [c, ..] if c.is_ascii_digit() => true,
        [' ' | '.' | '-', d, ..] => d.is_ascii_digit(),
        _ => false,
    };
    !continues(&before) && !continues(&after)
}

/// Replaces the `kinds` of PII in `text`, counting each replacement.
pub fn redact(text: &str, kinds: &[PiiKind], counts: &mut Redactions) -> String {
    let mut s = text.to_string();
    let mut apply =
        |re: &Regex, kind: PiiKind, placeholder: &str, check: fn(&str, usize, usize) -> bool| {
            if !kinds.contains(&kind) || !re.is_match(&s) {
                return 0;
            }
            let mut n = 0;
            let replaced = re.replace_all(&s, |caps: &regex::Captures| {
                let m = caps.get(0).expect("group 0 is the match");
                if check(&s, m.start(), m.end()) {
                    n += 1;
                    placeholder.to_string()
                } else {
                    m.as_str().to_string()
                }
            });
            let replaced = replaced.into_owned();
            s = replaced;
            n
        };
    counts.email += apply(&EMAIL, PiiKind::Email, "<EMAIL>", |_, _, _| true);
    counts.ipv4 += apply(&IPV4, PiiKind::Ipv4, "<IPV4>", |_, _, _| true);
    counts.card += apply(&CARD, PiiKind::Card, "<CARD>", |t, a, b| {
        luhn_valid(&t[a..b])
    });
    counts.phone += apply(&PHONE, PiiKind::Phone, "<PHONE>", standalone);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [PiiKind; 4] = [PiiKind::Email, PiiKind::Phone, PiiKind::Ipv4, PiiKind::Card];

    #[test]
    fn redacts_each_kind_and_counts() {
        let mut c = Redactions::default();
        let out = redact(
            "mail jane.doe+x@mail.example.com or call +1 (555) 123-4567, 555.123.4567; \
             host 192.168.0.12 paid with 4111 1111 1111 1111 not 4111 1111 1111 1112",
            &ALL,
            &mut c,
        );
        assert_eq!(
            out,
            "mail <EMAIL> or call <PHONE>, <PHONE>; host <IPV4> paid with <CARD> not 4111 1111 1111 1112"
        );
        assert_eq!(
            c,
            Redactions {
                email: 1,
                ipv4: 1,
                card: 1,
                phone: 2
            }
        );
        assert_eq!(c.total(), 5);
    }

    #[test]
    fn leaves_non_pii_and_unrequested_kinds() {
        let mut c = Redactions::default();
        let text = "on 2024-01-15 version 1.2.3 cost 300 dollars, a@b.io";
        assert_eq!(
            redact(
                text,
                &[PiiKind::Phone, PiiKind::Ipv4, PiiKind::Card],
                &mut c
            ),
            text
        );
        assert_eq!(c.total(), 0);
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid("4111-1111-1111-1111"));
        assert!(luhn_valid("378282246310005"));
        assert!(!luhn_valid("4111111111111112"));
        assert!(!luhn_valid("1234"));
    }
}
