//! Web-text quality rules: datatrove 0.10.1's `GopherQualityFilter`,
//! `GopherRepetitionFilter` and `C4QualityFilter` with the same defaults and the
//! same order of checks, so that a benchmark can run the same chain in both; plus
//! boilerplate-line removal (lines repeated across many documents of one source,
//! such as menus and footers), which datatrove does not have.
//!
//! Each rule is a config struct whose [`Default`] is datatrove's default. A
//! threshold that datatrove lets you switch off with `None` is an `Option`; as in
//! datatrove (`if self.x and ...`), `Some(0)` switches it off too. C4's `-1`
//! ("disabled") is `None` here. `enabled` is resolved by the caller.
//!
//! A dropped document comes back as a [`Drop`] whose `rule` is datatrove's own
//! reason string, prefixed with `gopher_` (repetition) or `c4_` (C4) where
//! datatrove has no prefix: `gopher_short_doc`, `gopher_long_doc`,
//! `gopher_below_avg_threshold`, `gopher_above_avg_threshold`,
//! `gopher_too_many_hashes`, `gopher_too_many_ellipsis`, `gopher_too_many_bullets`,
//! `gopher_too_many_end_ellipsis`, `gopher_below_alpha_threshold`,
//! `gopher_enough_stop_words`; `gopher_dup_para_frac`, `gopher_dup_para_char_frac`,
//! `gopher_dup_line_frac`, `gopher_dup_line_char_frac`, `gopher_top_{n}_gram`,
//! `gopher_duplicated_{n}_n_grams` (n = 1..=10; other n read `gopher_top_n_gram` and
//! `gopher_duplicated_n_n_grams`); `c4_lorem_ipsum`, `c4_curly_bracket`,
//! `c4_too_few_sentences`.
//!
//! # Words
//!
//! datatrove splits English words with spaCy's blank `en` tokenizer (spaCy 3.8) and
//! counts sentences with spaCy's rule-based sentencizer. Here [`split_words`] is a
//! re-implementation of that tokenizer's rules (`quality/words.rs` lists them), returning
//! slices of the text, and `quality/sentences.rs` counts sentences as the sentencizer does.
//! Punctuation words count in Gopher's word-based ratios as they do in datatrove.
//!
//! Checked against datatrove 0.10.1 with spaCy 3.8.18: of 1,843 documents (the 1,000 of
//! `fixtures/c4-sample` and the 843 messier ones of `fixtures/oscar-sample` and
//! `fixtures/dclm-quality-labels`), 1,842 split into exactly spaCy's words (the other
//! differs in one word), and every keep/drop decision, every drop reason and every C4
//! output text is the same. The test `c4_sample_matches_datatrove` pins the first 200.
//!
//! # Deliberate differences from datatrove
//!
//! * Words: the splitter above instead of spaCy. Not copied: spaCy's full URL grammar (IP
//!   addresses, for one), its stacked contractions (`could've've`), and its exception
//!   matcher across spaces. Upper and lower case are Rust's, within spaCy's letters.
//! * A word "has a letter" (Gopher's alpha ratio) by Rust's `char::is_alphabetic`, where
//!   Python's `str.isalpha` differs for some combining marks.
//! * "Lower case" in C4's `lorem ipsum`, `javascript` and policy checks is ASCII case folding.
//! * Repetition n-grams are compared as word sequences through 64-bit hashes; datatrove
//!   compares `"".join(words)` for the duplicated n-gram rule, which differs only when two
//!   different word sequences concatenate to the same string.
//! * Where datatrove would raise (division by zero on an empty document, an endless loop for
//!   n = 0), this module does not: Gopher quality drops a document with no words as
//!   `gopher_short_doc`, Gopher repetition keeps an empty document, n-gram sizes of 0 are skipped.
//! * [`LineEdits`] counts a document's removed lines only when the document is kept.
//!
//! # Speed
//!
//! Over 200 times datatrove's in-process speed on the C4 sample (one thread, release build,
//! the three filters chained, measured on the development machine): words are slices split by a byte-level scanner (ASCII words
//! without a table look-up or regex), Gopher repetition and quality share one split of a
//! document (this thread's last split is kept), word counts bound the n-gram rules so that
//! most documents skip counting n-grams, and C4 scans a document once for its phrases and
//! citations before looking at lines.

mod boilerplate;
mod c4;
mod chars;
mod gopher;
mod hash;
mod pystr;
mod repetition;
mod sentences;
mod tables;
mod words;

pub use boilerplate::{BoilerplateConfig, LineStats};
pub use c4::{C4Config, LineEdits};
pub use gopher::{unicode_words, GopherQualityConfig, QualityStats, WordSplit, GOPHER_STOP_WORDS};
pub use repetition::GopherRepetitionConfig;
pub use words::split_words;

/// Why a document was dropped: `rule` is a stable snake_case name (the count key
/// and the reject reason prefix), `detail` a short explanation with the measured
/// value and the threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drop {
    pub rule: &'static str,
    pub detail: String,
}

impl Drop {
    fn new(rule: &'static str, detail: String) -> Self {
        Self { rule, detail }
    }
}

impl std::fmt::Display for Drop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

/// A threshold as datatrove reads it (`if self.x and ...`): `None` and zero are off.
fn on<T: Default + PartialEq + Copy>(threshold: Option<T>) -> Option<T> {
    threshold.filter(|v| *v != T::default())
}

#[cfg(test)]
mod tests {
    use super::pystr::is_space;
    use super::*;

    /// Ordinary English prose: passes every rule.
    pub(super) const PROSE: &str =
        "The old harbour town sits at the mouth of a wide river, and its stone houses climb the hill above the water.\n\
        Fishermen have worked from the quay for centuries, and many families still mend their nets by hand in the morning.\n\
        In summer the narrow streets fill with visitors who come to walk the cliffs and eat fresh crab at the market.\n\
        The museum near the church tells the story of the great storm of 1887, which destroyed half of the fleet.\n\
        Local volunteers restored the lifeboat station last year with money raised at concerts and village fairs.\n\
        Walkers can follow a marked path along the coast to the lighthouse, which opens to the public on weekends.";

    pub(super) fn rule<T>(r: Result<T, Drop>) -> &'static str {
        match r {
            Ok(_) => "kept",
            Err(d) => d.rule,
        }
    }

    fn fixture_texts(n: usize) -> Vec<String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/c4-sample/c4_sample.jsonl");
        let data = std::fs::read_to_string(path).expect("c4 sample fixture");
        data.lines()
            .take(n)
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json line");
                v["text"].as_str().expect("text field").to_string()
            })
            .collect()
    }

    fn chain(text: &str) -> Result<String, Drop> {
        GopherRepetitionConfig::default().check(text)?;
        GopherQualityConfig::default().check(text)?;
        C4Config::default().apply(text, &mut LineEdits::default())
    }

    /// What datatrove 0.10.1 (`GopherRepetitionFilter` → `GopherQualityFilter` →
    /// `C4QualityFilter`, defaults, English) does with the first 200 documents: the
    /// dropped ones with the first rule they fail; the kept ones' C4 text has these
    /// characters and lines in total.
    const DATATROVE_FIRST_200: &str = "2 gopher_short_doc, 5 gopher_duplicated_10_n_grams, 6 gopher_short_doc, \
        10 gopher_short_doc, 12 gopher_duplicated_5_n_grams, 14 gopher_top_3_gram, 26 gopher_top_3_gram, \
        31 gopher_below_alpha_threshold, 32 gopher_short_doc, 33 gopher_short_doc, 37 gopher_short_doc, \
        42 gopher_below_alpha_threshold, 44 gopher_short_doc, 45 c4_too_few_sentences, 46 gopher_below_alpha_threshold, \
        52 gopher_below_alpha_threshold, 70 c4_too_few_sentences, 80 gopher_below_alpha_threshold, 83 gopher_short_doc, \
        85 gopher_top_3_gram, 86 gopher_duplicated_5_n_grams, 87 gopher_short_doc, 93 gopher_duplicated_5_n_grams, \
        94 c4_too_few_sentences, 96 gopher_duplicated_5_n_grams, 99 gopher_below_alpha_threshold, \
        100 gopher_below_alpha_threshold, 101 c4_too_few_sentences, 105 gopher_short_doc, 108 gopher_below_alpha_threshold, \
        109 c4_too_few_sentences, 111 c4_too_few_sentences, 112 c4_too_few_sentences, 117 gopher_short_doc, \
        118 gopher_top_4_gram, 119 c4_too_few_sentences, 126 c4_too_few_sentences, 127 gopher_top_4_gram, \
        130 c4_too_few_sentences, 132 gopher_below_alpha_threshold, 134 gopher_below_alpha_threshold, \
        135 gopher_below_alpha_threshold, 146 c4_too_few_sentences, 147 gopher_below_alpha_threshold, \
        151 c4_too_few_sentences, 154 gopher_below_alpha_threshold, 155 gopher_duplicated_5_n_grams, \
        156 gopher_duplicated_6_n_grams, 157 gopher_duplicated_5_n_grams, 160 c4_too_few_sentences, \
        167 c4_too_few_sentences, 169 gopher_short_doc, 172 gopher_short_doc, 176 c4_too_few_sentences, \
        179 c4_too_few_sentences, 183 gopher_duplicated_5_n_grams, 184 gopher_below_alpha_threshold, \
        191 gopher_below_alpha_threshold, 194 gopher_duplicated_5_n_grams, 195 c4_too_few_sentences, \
        196 c4_too_few_sentences, 197 gopher_short_doc, 198 gopher_top_3_gram";
    const DATATROVE_FIRST_200_KEPT: (usize, usize, usize) = (137, 355_505, 1390);

    #[test]
    fn c4_sample_matches_datatrove() {
        let texts = fixture_texts(200);
        let mut dropped = Vec::new();
        let (mut kept, mut chars, mut lines) = (0, 0, 0);
        for (i, t) in texts.iter().enumerate() {
            match chain(t) {
                Ok(out) => {
                    kept += 1;
                    chars += out.chars().count();
                    lines += out.lines().count();
                }
                Err(d) => dropped.push(format!("{i} {}", d.rule)),
            }
        }
        let expected: Vec<&str> = DATATROVE_FIRST_200.split(", ").collect();
        assert_eq!(dropped, expected);
        assert_eq!((kept, chars, lines), DATATROVE_FIRST_200_KEPT);
    }

    /// Words are non-empty slices of the text, in order, covering everything but spaces;
    /// no rule panics on odd text.
    #[test]
    fn words_cover_the_text() {
        #[rustfmt::skip]
        let pieces = [
            "a", "Hello,", "world.", " ", "\n", "\u{a0}", "\u{2028}", "don't", "dont", "’s", "...", "…", "U.S.", "e.g.",
            "(see", "http://x.org/a-b)", "10km", "5pm", ":)", "):", "#tag", "«quoted»", "日本語。", "well-known", "3-4",
            "$10.50", "'''", "\"", "°C.", "y’all", "naïve", "Straße", "ʻOkina", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "!!!", "-", "—", "a.b", "A.", "co.", "\u{fffd}", "\u{1f600}", "\t", "\r\n", "x\u{0}y", "{", "[1]", "lorem ipsum",
            "\u{1c}",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize
        };
        for _ in 0..2000 {
            let mut text = String::new();
            for _ in 0..next() % 12 {
                text.push_str(pieces[next() % pieces.len()]);
                if next() % 2 == 0 {
                    text.push(' ');
                }
            }
            let words = split_words(&text);
            let mut at = 0;
            for w in &words {
                let start = w.as_ptr() as usize - text.as_ptr() as usize;
                assert!(!w.is_empty() && start >= at, "{text:?}: {words:?}");
                assert!(text[at..start].chars().all(is_space), "{text:?}: {words:?}");
                at = start + w.len();
            }
            assert!(text[at..].chars().all(is_space), "{text:?}: {words:?}");
            let _ = chain(&text);
            let _ = C4Config { split_paragraph: false, ..Default::default() }.apply(&text, &mut LineEdits::default());
        }
    }

    #[test]
    fn c4_sample_passes_a_sensible_share() {
        let texts = fixture_texts(200);
        assert_eq!(texts.len(), 200);
        let kept = texts.iter().filter(|t| chain(t).is_ok()).count();
        // datatrove 0.10.1 keeps 137 of these 200.
        assert!((60..=190).contains(&kept), "{kept} of 200 kept");
    }

    /// `cargo test -p forja-data --lib quality -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn timing() {
        let texts = fixture_texts(1000);
        let rounds = 5;
        let start = std::time::Instant::now();
        let mut kept = 0;
        for _ in 0..rounds {
            kept += texts.iter().filter(|t| chain(t).is_ok()).count();
        }
        let secs = start.elapsed().as_secs_f64();
        let docs = (rounds * texts.len()) as f64;
        let mb = (rounds * texts.iter().map(String::len).sum::<usize>()) as f64 / 1e6;
        println!("{docs} docs in {secs:.3}s: {:.0} docs/s, {:.1} MB/s, kept {kept}", docs / secs, mb / secs);
    }
}
