//! datatrove's `GopherQualityFilter`: document length, mean word length, symbols,
//! bullet and ellipsis lines, words with a letter, stop words.

use super::chars::is_datatrove_punct;
use super::pystr::{py_lstrip, py_rstrip, PyLines};
use super::words::words_of;
use super::{on, Drop};
use serde::{Deserialize, Serialize};

/// Gopher's default stop words (datatrove's `STOP_WORDS`).
pub const GOPHER_STOP_WORDS: [&str; 8] = ["the", "be", "to", "of", "and", "that", "have", "with"];

/// datatrove's `GopherQualityFilter` (Gopher, Rae et al. 2021, appendix A).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GopherQualityConfig {
    pub enabled: Option<bool>,
    /// Fewest words (words with a character outside punctuation).
    pub min_doc_words: Option<usize>,
    pub max_doc_words: Option<usize>,
    /// Bounds on the mean length (characters) of those words.
    pub min_avg_word_length: Option<f64>,
    pub max_avg_word_length: Option<f64>,
    /// Most `#` per word, and most `...`/`…` per word (all words, punctuation included).
    pub max_symbol_word_ratio: Option<f64>,
    /// Most share of lines starting with `•` or `-`.
    pub max_bullet_lines_ratio: Option<f64>,
    /// Most share of lines ending with `...` or `…`.
    pub max_ellipsis_lines_ratio: Option<f64>,
    /// Despite datatrove's name: the least share of words that contain a letter.
    pub max_non_alpha_words_ratio: Option<f64>,
    /// Fewest distinct stop words present (case-sensitive, as in datatrove).
    pub min_stop_words: Option<usize>,
    pub stop_words: Vec<String>,
    /// How words are split: `spacy_en` (spaCy's English tokenizer, as
    /// datatrove) or `unicode` (Unicode word boundaries, UAX #29, with elided
    /// articles such as French `l'` or Italian `dell'` split off).
    pub words: WordSplit,
}

/// A word splitter.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WordSplit {
    #[default]
    SpacyEn,
    Unicode,
}

/// Words by Unicode word boundaries (UAX #29): every segment that is not
/// whitespace, punctuation included (as spaCy's tokens), split after an
/// apostrophe inside it (`l'homme` → `l'`, `homme`).
pub fn unicode_words<'t>(text: &'t str, f: &mut impl FnMut(&'t str)) {
    use unicode_segmentation::UnicodeSegmentation;
    for seg in text.split_word_bounds() {
        if seg.chars().all(char::is_whitespace) {
            continue;
        }
        let mut rest = seg;
        while let Some(i) = rest.find(['\'', '\u{2019}']) {
            let cut = i + rest[i..].chars().next().map_or(1, char::len_utf8);
            if cut >= rest.len() || i == 0 {
                break;
            }
            f(&rest[..cut]);
            rest = &rest[cut..];
        }
        f(rest);
    }
}

/// The statistics of a document the Gopher quality rules judge.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QualityStats {
    /// All words, punctuation included.
    pub words: usize,
    /// Words with a character outside punctuation.
    pub non_symbol: usize,
    /// Mean length of those (NaN when none).
    pub avg_word_length: f64,
    /// Share of all words that contain a letter.
    pub alpha_words_ratio: f64,
    /// Distinct stop words present.
    pub stop_words: usize,
}

impl Default for GopherQualityConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            min_doc_words: Some(50),
            max_doc_words: Some(100_000),
            min_avg_word_length: Some(3.0),
            max_avg_word_length: Some(10.0),
            max_symbol_word_ratio: Some(0.1),
            max_bullet_lines_ratio: Some(0.9),
            max_ellipsis_lines_ratio: Some(0.3),
            max_non_alpha_words_ratio: Some(0.8),
            min_stop_words: Some(2),
            stop_words: GOPHER_STOP_WORDS.iter().map(|s| s.to_string()).collect(),
            words: WordSplit::SpacyEn,
        }
    }
}

/// Word counts the Gopher quality rules need.
#[derive(Debug, Default)]
struct WordStats {
    words: usize,
    non_symbol: usize,
    non_symbol_chars: usize,
    alpha: usize,
}

impl WordStats {
    fn add(&mut self, w: &str) {
        let (symbol, alpha, chars) = word_kind(w);
        self.words += 1;
        if !symbol {
            self.non_symbol += 1;
            self.non_symbol_chars += chars;
        }
        self.alpha += alpha as usize;
    }
}

/// The distinct stop words seen so far, until there are enough.
struct StopWords<'c> {
    list: &'c [String],
    found: Vec<bool>,
    distinct: usize,
    enough: usize,
}

impl<'c> StopWords<'c> {
    fn see(&mut self, w: &str) {
        if self.distinct >= self.enough {
            return;
        }
        // `position` finds the first equal entry, so a repeated stop word counts once.
        if let Some(i) = self.list.iter().position(|s| s == w) {
            if !self.found[i] {
                self.found[i] = true;
                self.distinct += 1;
            }
        }
    }
}

/// Python's `text.count("#")` and `text.count("...") + text.count("…")`.
fn symbol_counts(text: &str) -> (usize, usize) {
    let hashes = text.bytes().filter(|&b| b == b'#').count();
    let mut ellipses = text.matches('…').count();
    if text.contains("...") {
        let mut dots = 0;
        for b in text.bytes() {
            if b == b'.' {
                dots += 1;
            } else {
                ellipses += dots / 3;
                dots = 0;
            }
        }
        ellipses += dots / 3;
    }
    (hashes, ellipses)
}

/// (all characters are datatrove punctuation, has a letter, length in characters).
fn word_kind(w: &str) -> (bool, bool, usize) {
    let kinds = w.bytes().fold(0, |k, c| k | ASCII_KIND[c as usize]);
    if kinds & KIND_NON_ASCII == 0 {
        return (kinds & KIND_ALNUM == 0, kinds & KIND_ALPHA != 0, w.len());
    }
    let (mut symbol, mut alpha, mut chars) = (true, false, 0);
    for c in w.chars() {
        symbol &= is_datatrove_punct(c);
        alpha |= c.is_alphabetic();
        chars += 1;
    }
    (symbol, alpha, chars)
}

const KIND_ALPHA: u8 = 1;
const KIND_ALNUM: u8 = 2;
const KIND_NON_ASCII: u8 = 4;

/// Per byte: [`KIND_ALPHA`] and [`KIND_ALNUM`] for ASCII letters and digits, [`KIND_NON_ASCII`].
static ASCII_KIND: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = if b.is_ascii_alphabetic() {
            KIND_ALPHA | KIND_ALNUM
        } else if b.is_ascii_digit() {
            KIND_ALNUM
        } else if b >= 0x80 {
            KIND_NON_ASCII
        } else {
            0
        };
        c += 1;
    }
    t
};

impl GopherQualityConfig {
    /// `Ok` when the document passes every rule, else the first rule it fails.
    pub fn check(&self, text: &str) -> Result<(), Drop> {
        let enough = on(self.min_stop_words).unwrap_or(0);
        let mut stop = StopWords { list: &self.stop_words, found: vec![false; self.stop_words.len()], distinct: 0, enough };
        let mut stats = WordStats::default();
        self.for_each_word(text, &mut |w| {
            stats.add(w);
            stop.see(w);
        });
        self.check_length(&stats)?;
        self.check_symbols(text, stats.words)?;
        self.check_lines(text)?;
        if let Some(min) = on(self.max_non_alpha_words_ratio) {
            let ratio = stats.alpha as f64 / stats.words as f64;
            if ratio < min {
                return Err(Drop::new("gopher_below_alpha_threshold", format!("{ratio:.3} of words have a letter < {min}")));
            }
        }
        if stop.distinct < enough {
            let detail = format!("{} distinct stop words < min_stop_words {enough}", stop.distinct);
            return Err(Drop::new("gopher_enough_stop_words", detail));
        }
        Ok(())
    }

    fn for_each_word<'t>(&self, text: &'t str, f: &mut impl FnMut(&'t str)) {
        match self.words {
            WordSplit::SpacyEn => words_of(text).into_iter().for_each(f),
            WordSplit::Unicode => unicode_words(text, f),
        }
    }

    /// The statistics the rules judge (every distinct stop word counted).
    pub fn stats(&self, text: &str) -> QualityStats {
        let mut stop = StopWords { list: &self.stop_words, found: vec![false; self.stop_words.len()], distinct: 0, enough: usize::MAX };
        let mut s = WordStats::default();
        self.for_each_word(text, &mut |w| {
            s.add(w);
            stop.see(w);
        });
        QualityStats {
            words: s.words,
            non_symbol: s.non_symbol,
            avg_word_length: s.non_symbol_chars as f64 / s.non_symbol as f64,
            alpha_words_ratio: if s.words == 0 { 0.0 } else { s.alpha as f64 / s.words as f64 },
            stop_words: stop.distinct,
        }
    }

    fn check_length(&self, s: &WordStats) -> Result<(), Drop> {
        let n = s.non_symbol;
        if let Some(min) = on(self.min_doc_words).filter(|&m| n < m) {
            return Err(Drop::new("gopher_short_doc", format!("{n} words < min_doc_words {min}")));
        }
        if let Some(max) = on(self.max_doc_words).filter(|&m| n > m) {
            return Err(Drop::new("gopher_long_doc", format!("{n} words > max_doc_words {max}")));
        }
        if s.words == 0 {
            return Err(Drop::new("gopher_short_doc", "no words".into()));
        }
        if n == 0 {
            return Ok(()); // datatrove's mean of nothing is NaN: both comparisons are false
        }
        let avg = s.non_symbol_chars as f64 / n as f64;
        if let Some(min) = on(self.min_avg_word_length).filter(|&m| avg < m) {
            return Err(Drop::new("gopher_below_avg_threshold", format!("mean word length {avg:.2} < {min}")));
        }
        if let Some(max) = on(self.max_avg_word_length).filter(|&m| avg > m) {
            return Err(Drop::new("gopher_above_avg_threshold", format!("mean word length {avg:.2} > {max}")));
        }
        Ok(())
    }

    fn check_symbols(&self, text: &str, words: usize) -> Result<(), Drop> {
        let Some(max) = on(self.max_symbol_word_ratio) else { return Ok(()) };
        let (hashes, ellipses) = symbol_counts(text);
        let hashes = hashes as f64 / words as f64;
        if hashes > max {
            return Err(Drop::new("gopher_too_many_hashes", format!("{hashes:.3} '#' per word > {max}")));
        }
        let ellipses = ellipses as f64 / words as f64;
        if ellipses > max {
            return Err(Drop::new("gopher_too_many_ellipsis", format!("{ellipses:.3} ellipses per word > {max}")));
        }
        Ok(())
    }

    fn check_lines(&self, text: &str) -> Result<(), Drop> {
        let (bullet_max, ellipsis_max) = (on(self.max_bullet_lines_ratio), on(self.max_ellipsis_lines_ratio));
        if bullet_max.is_none() && ellipsis_max.is_none() {
            return Ok(());
        }
        let (mut lines, mut bullets, mut ellipses) = (0usize, 0usize, 0usize);
        for line in PyLines(Some(text)) {
            lines += 1;
            let start = py_lstrip(line);
            bullets += (start.starts_with('•') || start.starts_with('-')) as usize;
            let end = py_rstrip(line);
            ellipses += (end.ends_with("...") || end.ends_with('…')) as usize;
        }
        let lines = lines.max(1) as f64;
        if let Some(max) = bullet_max.filter(|&m| bullets as f64 / lines > m) {
            return Err(Drop::new("gopher_too_many_bullets", format!("{bullets} of {lines} lines are bullets (> {max})")));
        }
        if let Some(max) = ellipsis_max.filter(|&m| ellipses as f64 / lines > m) {
            return Err(Drop::new("gopher_too_many_end_ellipsis", format!("{ellipses} of {lines} lines end with an ellipsis (> {max})")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::tests::{rule, PROSE};

    #[test]
    fn gopher_quality_keeps_prose() {
        assert_eq!(rule(GopherQualityConfig::default().check(PROSE)), "kept");
    }

    #[test]
    fn gopher_quality_length_rules() {
        let g = GopherQualityConfig::default();
        assert_eq!(rule(g.check("The cat sat with the dog by the door.")), "gopher_short_doc");
        assert_eq!(rule(g.check("")), "gopher_short_doc");
        let capped = GopherQualityConfig { max_doc_words: Some(60), ..Default::default() };
        assert_eq!(rule(capped.check(PROSE)), "gopher_long_doc");
        let short_words = "I am to be or not to be, it is up to me and so is he; we go on as we do if it is so. ".repeat(4);
        assert_eq!(rule(g.check(&short_words)), "gopher_below_avg_threshold");
        let long_words = "The incomprehensibilities of internationalisation and the counterrevolutionaries \
            with extraordinarily uncharacteristically disproportionate responsibilities. "
            .repeat(8);
        assert_eq!(rule(g.check(&long_words)), "gopher_above_avg_threshold");
    }

    #[test]
    fn gopher_quality_symbol_and_line_rules() {
        let g = GopherQualityConfig::default();
        let hashes = format!("{PROSE}\n{}", "#news #today #photo #travel ".repeat(6));
        assert_eq!(rule(g.check(&hashes)), "gopher_too_many_hashes");
        let ellipses = format!("{PROSE}\n{}", "and then... ".repeat(30));
        assert_eq!(rule(g.check(&ellipses)), "gopher_too_many_ellipsis");
        let bullets: String = PROSE.lines().map(|l| format!("- {l}\n")).collect();
        assert_eq!(rule(g.check(&bullets)), "gopher_too_many_bullets");
        let some_bullets: String =
            PROSE.lines().enumerate().map(|(i, l)| if i < 3 { format!("• {l}\n") } else { format!("{l}\n") }).collect();
        assert_eq!(rule(g.check(&some_bullets)), "kept");
        let trailing: String =
            PROSE.lines().enumerate().map(|(i, l)| if i < 2 { format!("{l}\n") } else { format!("{l} and so on...\n") }).collect();
        assert_eq!(rule(g.check(&trailing)), "gopher_too_many_end_ellipsis");
    }

    #[test]
    fn gopher_quality_alpha_and_stop_words() {
        let g = GopherQualityConfig::default();
        let numbers = format!("{PROSE}\n{}", "2019 2020 2021 2022 4500 1200 3300 ".repeat(12));
        assert_eq!(rule(g.check(&numbers)), "gopher_below_alpha_threshold");
        let no_stop = "Quick brown foxes jump over lazy dogs while cheerful children play outside near green gardens. ".repeat(5);
        assert_eq!(rule(g.check(&no_stop)), "gopher_enough_stop_words");
        let capitalised = no_stop.replace("Quick", "The quick").replace("near", "With them near");
        assert_eq!(rule(g.check(&capitalised)), "gopher_enough_stop_words", "stop words are case-sensitive");
        let one_stop = no_stop.replace("near", "near the");
        assert_eq!(rule(g.check(&one_stop)), "gopher_enough_stop_words");
        let two_stop = no_stop.replace("near", "near the").replace("over", "to");
        assert_eq!(rule(g.check(&two_stop)), "kept");
        let off = GopherQualityConfig { min_stop_words: None, ..Default::default() };
        assert_eq!(rule(off.check(&no_stop)), "kept");
    }
}
