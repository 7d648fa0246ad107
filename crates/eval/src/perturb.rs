//! Text perturbations at stated strengths, deterministic from a seed: what
//! robustness is measured under, and the character noise that training can
//! use as augmentation. No tch.
//!
//! Words are runs of non-whitespace; the whitespace between them is kept.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A perturbation of text and its strength.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "strength")]
pub enum Perturbation {
    /// Each word of two or more letters gets, with this probability, one typo:
    /// two neighbouring letters swapped, a letter deleted, inserted or replaced.
    Typo(f64),
    /// Each word's case is changed (upper, lower or title, at random) with this probability.
    Case(f64),
    /// Each word is dropped with this probability (at least one word stays).
    WordDrop(f64),
}

impl Perturbation {
    pub fn name(&self) -> String {
        match self {
            Perturbation::Typo(p) => format!("typos ({:.0}% of words)", p * 100.0),
            Perturbation::Case(p) => format!("case changes ({:.0}% of words)", p * 100.0),
            Perturbation::WordDrop(p) => format!("word drops ({:.0}% of words)", p * 100.0),
        }
    }

    /// Short key for metric names: `typo@0.1`.
    pub fn key(&self) -> String {
        match self {
            Perturbation::Typo(p) => format!("typo@{p}"),
            Perturbation::Case(p) => format!("case@{p}"),
            Perturbation::WordDrop(p) => format!("word_drop@{p}"),
        }
    }

    /// `text` perturbed, as a pure function of `(text, self, seed)`.
    pub fn apply(&self, text: &str, seed: u64) -> String {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        match *self {
            Perturbation::Typo(p) => {
                map_words(text, |w| if rng.random_bool(p.clamp(0.0, 1.0)) { typo(w, &mut rng) } else { Some(w.into()) })
            }
            Perturbation::Case(p) => {
                map_words(text, |w| if rng.random_bool(p.clamp(0.0, 1.0)) { Some(recase(w, &mut rng)) } else { Some(w.into()) })
            }
            Perturbation::WordDrop(p) => {
                let n_words = text.split_whitespace().count();
                let mut kept = 0usize;
                let mut seen = 0usize;
                map_words(text, |w| {
                    seen += 1;
                    let last_chance = seen == n_words && kept == 0;
                    if !last_chance && rng.random_bool(p.clamp(0.0, 1.0)) {
                        None
                    } else {
                        kept += 1;
                        Some(w.into())
                    }
                })
            }
        }
    }
}

/// Character noise for augmentation: [`Perturbation::Typo`] at `rate`.
pub fn char_noise(text: &str, rate: f64, seed: u64) -> String {
    Perturbation::Typo(rate).apply(text, seed)
}

/// Rebuilds `text` with each word replaced by `f(word)` (`None` drops it and
/// the whitespace before it).
fn map_words(text: &str, mut f: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let ws_len = rest.len() - rest.trim_start().len();
        let (ws, after) = rest.split_at(ws_len);
        if after.is_empty() {
            out.push_str(ws);
            break;
        }
        let word_len = after.find(char::is_whitespace).unwrap_or(after.len());
        let (word, tail) = after.split_at(word_len);
        if let Some(w) = f(word) {
            // The whitespace before a kept word (the text's own leading
            // whitespace included); a text whose first words were dropped does
            // not begin with the space after them.
            if !out.is_empty() || rest.len() == text.len() {
                out.push_str(ws);
            }
            out.push_str(&w);
        }
        rest = tail;
    }
    out
}

const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

/// One typo in a word with at least two letters (others are left alone).
fn typo(word: &str, rng: &mut ChaCha8Rng) -> Option<String> {
    let mut chars: Vec<char> = word.chars().collect();
    let letters: Vec<usize> = (0..chars.len()).filter(|&i| chars[i].is_alphabetic()).collect();
    if letters.len() < 2 {
        return Some(word.into());
    }
    let i = letters[rng.random_range(0..letters.len())];
    let letter = LETTERS[rng.random_range(0..LETTERS.len())] as char;
    match rng.random_range(0..4u8) {
        0 => {
            let j = if i + 1 < chars.len() { i + 1 } else { i - 1 };
            chars.swap(i, j);
        }
        1 => {
            chars.remove(i);
        }
        2 => chars.insert(i, letter),
        _ => chars[i] = letter,
    }
    Some(chars.into_iter().collect())
}

fn recase(word: &str, rng: &mut ChaCha8Rng) -> String {
    match rng.random_range(0..3u8) {
        0 => word.to_uppercase(),
        1 => word.to_lowercase(),
        _ => {
            let mut c = word.chars();
            c.next().map_or(String::new(), |f| f.to_uppercase().chain(c.flat_map(char::to_lowercase)).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "How do I top up my card with a bank transfer?";

    #[test]
    fn strength_zero_changes_nothing_and_one_changes_every_word() {
        for p in [Perturbation::Typo(0.0), Perturbation::Case(0.0), Perturbation::WordDrop(0.0)] {
            assert_eq!(p.apply(TEXT, 1), TEXT, "{p:?}");
        }
        let typos = Perturbation::Typo(1.0).apply(TEXT, 1);
        let changed = TEXT.split_whitespace().zip(typos.split_whitespace()).filter(|(a, b)| a != b).count();
        assert!(changed >= 7, "most words of two or more letters get a typo: {typos}");
        assert_eq!(Perturbation::WordDrop(1.0).apply(TEXT, 1).split_whitespace().count(), 1, "one word always stays");
        let cased = Perturbation::Case(1.0).apply(TEXT, 3);
        assert_eq!(cased.to_lowercase(), TEXT.to_lowercase());
        assert_ne!(cased, TEXT);
    }

    #[test]
    fn deterministic_per_seed_and_word_drops_keep_order() {
        let p = Perturbation::WordDrop(0.3);
        assert_eq!(p.apply(TEXT, 9), p.apply(TEXT, 9));
        let dropped = p.apply(TEXT, 9);
        let mut words = TEXT.split_whitespace();
        for w in dropped.split_whitespace() {
            assert!(words.any(|x| x == w), "{w} out of order in {dropped}");
        }
        assert!(dropped.split_whitespace().count() < TEXT.split_whitespace().count());
        assert!(!dropped.starts_with(' ') && !dropped.contains("  "), "{dropped:?}");
        assert_ne!(Perturbation::Typo(0.5).apply(TEXT, 1), Perturbation::Typo(0.5).apply(TEXT, 2));
    }
}
