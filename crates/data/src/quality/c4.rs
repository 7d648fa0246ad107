//! datatrove's `C4QualityFilter`: line rules (long words, terminal punctuation,
//! short lines, javascript, policies, citations), then document rules (lorem
//! ipsum, curly brackets, too few sentences).

use super::pystr::{is_space, py_strip, PyLines};
use super::sentences::{count_sentences, sentence_pieces};
use super::Drop;
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// datatrove's `C4QualityFilter` (Raffel et al. 2020, and TensorFlow Datasets'
/// `c4_utils`): line rules, then document rules. The bad-words list is not part of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct C4Config {
    pub enabled: Option<bool>,
    /// Apply the rules to lines (`true`, as C4) or to sentences (`false`; kept ones are joined with spaces).
    pub split_paragraph: bool,
    /// Remove Wikipedia-style citations: `[1]`, `[]`, `[edit]`, `[citation needed]`.
    pub remove_citations: bool,
    /// Remove lines that do not end in `.`, `?`, `!`, `"` or `'`, or that end in `...`.
    pub filter_no_terminal_punct: bool,
    /// Drop documents with fewer sentences in their kept lines (`None`: off; datatrove's -1).
    pub min_num_sentences: Option<usize>,
    /// Remove lines with fewer whitespace-separated words (`None`: off).
    pub min_words_per_line: Option<usize>,
    /// Remove lines with a whitespace-separated word longer than this (characters; `None`: off).
    pub max_word_length: Option<usize>,
    /// Drop documents with a kept line containing "lorem ipsum".
    pub filter_lorem_ipsum: bool,
    /// Remove lines containing "javascript".
    pub filter_javascript: bool,
    /// Drop documents with a kept line containing `{`.
    pub filter_curly_bracket: bool,
    /// Remove lines mentioning terms of use, privacy or cookie policies, or cookies.
    pub filter_policy: bool,
}

impl Default for C4Config {
    fn default() -> Self {
        Self {
            enabled: None,
            split_paragraph: true,
            remove_citations: true,
            filter_no_terminal_punct: true,
            min_num_sentences: Some(5),
            min_words_per_line: Some(3),
            max_word_length: Some(1000),
            filter_lorem_ipsum: true,
            filter_javascript: true,
            filter_curly_bracket: true,
            filter_policy: true,
        }
    }
}

/// Line-level edits C4 made to a kept document, counted per kind:
/// `c4_line_long_word`, `c4_line_no_terminal_punct`, `c4_line_too_few_words`,
/// `c4_line_javascript`, `c4_line_policy` (lines removed) and `c4_citation`
/// (citations removed from kept lines).
#[derive(Default, Debug, Clone)]
pub struct LineEdits {
    pub counts: BTreeMap<&'static str, usize>,
}

impl LineEdits {
    /// All edits together.
    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    /// Adds another document's (or run's) edits.
    pub fn add(&mut self, other: &LineEdits) {
        for (k, n) in &other.counts {
            *self.counts.entry(k).or_default() += n;
        }
    }
}

/// Kinds of [`LineEdits`], in the order of `Edits`' slots.
const EDIT_KINDS: [&str; 6] =
    ["c4_line_long_word", "c4_line_no_terminal_punct", "c4_line_too_few_words", "c4_line_javascript", "c4_line_policy", "c4_citation"];
const LONG_WORD: usize = 0;
const NO_TERMINAL_PUNCT: usize = 1;
const TOO_FEW_WORDS: usize = 2;
const JAVASCRIPT: usize = 3;
const POLICY: usize = 4;
const CITATION: usize = 5;

type Edits = [usize; EDIT_KINDS.len()];

static CITATION_RE: LazyLock<Regex> = LazyLock::new(|| build_regex(r"\[\d*\]|\[edit\]|\[citation needed\]"));
const POLICY_SUBSTRINGS: [&str; 6] = ["terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies"];
/// Parts of the phrases of the lower-cased checks: a document without any skips them.
const PHRASE_HINTS: [&str; 5] = ["lorem ipsum", "javascript", "terms of use", "privacy policy", "cookie"];

fn has_phrase_hint(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    PHRASE_HINTS.iter().any(|p| lower.contains(p))
}

fn build_regex(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| panic!("bad built-in pattern {pattern}: {e}"))
}

/// What a scan of the whole document found possible in its lines.
#[derive(Clone, Copy)]
struct Scan {
    phrases: bool,
    citations: bool,
}

enum Verdict<'a> {
    /// The line as kept, and the citations removed from it.
    Keep(Cow<'a, str>, usize),
    Remove(usize),
}

impl C4Config {
    /// The document with C4's lines removed (as datatrove writes `doc.text` back),
    /// or why it is dropped. Edits are added to `edits` only for a kept document.
    pub fn apply(&self, text: &str, edits: &mut LineEdits) -> Result<String, Drop> {
        let pieces: Vec<&str> = if self.split_paragraph { PyLines(Some(text)).collect() } else { sentence_pieces(text) };
        // A phrase or citation in a line is one in the text: most documents skip those checks.
        let scan = Scan {
            phrases: (self.filter_lorem_ipsum || self.filter_javascript || self.filter_policy) && has_phrase_hint(text),
            citations: self.remove_citations && text.contains('['),
        };
        let mut counts: Edits = [0; EDIT_KINDS.len()];
        let mut kept: Vec<Cow<str>> = Vec::with_capacity(pieces.len());
        let mut sentences = 0;
        for piece in pieces {
            match self.judge(piece, scan)? {
                Verdict::Remove(kind) => counts[kind] += 1,
                Verdict::Keep(line, cites) => {
                    counts[CITATION] += cites;
                    sentences += self.sentences_in(&line, sentences);
                    kept.push(line);
                }
            }
        }
        if let Some(min) = self.min_num_sentences.filter(|&m| sentences < m) {
            return Err(Drop::new("c4_too_few_sentences", format!("{sentences} sentences in kept lines < {min}")));
        }
        for (kind, &n) in EDIT_KINDS.iter().zip(&counts) {
            if n > 0 {
                *edits.counts.entry(kind).or_default() += n;
            }
        }
        Ok(join_stripped(&kept, if self.split_paragraph { "\n" } else { " " }))
    }

    /// One line (or sentence): kept (maybe without citations), removed, or the document dropped.
    fn judge<'a>(&self, raw: &'a str, scan: Scan) -> Result<Verdict<'a>, Drop> {
        let stripped = py_strip(raw);
        let mut words = stripped.split(is_space).filter(|w| !w.is_empty());
        // A word longer than `max` characters needs more than `max` bytes.
        if let Some(max) = self.max_word_length.filter(|&m| stripped.len() > m) {
            if words.clone().any(|w| w.len() > max && w.chars().count() > max) {
                return Ok(Verdict::Remove(LONG_WORD));
            }
        }
        let (line, cites) = if scan.citations { remove_citations(stripped) } else { (Cow::Borrowed(stripped), 0) };
        if self.filter_no_terminal_punct && !ends_in_terminal_punct(&line) {
            return Ok(Verdict::Remove(NO_TERMINAL_PUNCT));
        }
        if let Some(min) = self.min_words_per_line {
            if words.by_ref().take(min).count() < min {
                return Ok(Verdict::Remove(TOO_FEW_WORDS));
            }
        }
        let phrase = scan.phrases;
        if phrase && self.filter_lorem_ipsum && contains_ascii_ci(&line, "lorem ipsum") {
            return Err(Drop::new("c4_lorem_ipsum", format!("line contains \"lorem ipsum\": {}", excerpt(&line))));
        }
        if phrase && self.filter_javascript && contains_ascii_ci(&line, "javascript") {
            return Ok(Verdict::Remove(JAVASCRIPT));
        }
        if self.filter_curly_bracket && line.contains('{') {
            return Err(Drop::new("c4_curly_bracket", format!("line contains '{{': {}", excerpt(&line))));
        }
        if phrase && self.filter_policy && POLICY_SUBSTRINGS.iter().any(|p| contains_ascii_ci(&line, p)) {
            return Ok(Verdict::Remove(POLICY));
        }
        Ok(Verdict::Keep(line, cites))
    }

    /// Sentences a kept line adds to the count (0 once the minimum is reached: the
    /// count only decides `< min_num_sentences`).
    fn sentences_in(&self, line: &str, so_far: usize) -> usize {
        match self.min_num_sentences {
            Some(min) if so_far < min => {
                if self.split_paragraph {
                    count_sentences(line)
                } else {
                    1
                }
            }
            _ => 0,
        }
    }
}

/// C4's `END_PUNCTUATION` check.
fn ends_in_terminal_punct(line: &str) -> bool {
    line.ends_with(['.', '?', '!', '"', '\'']) && !line.ends_with("...")
}

/// The line without citations, and how many were removed.
fn remove_citations(line: &str) -> (Cow<'_, str>, usize) {
    if !line.contains('[') {
        return (Cow::Borrowed(line), 0);
    }
    let (mut out, mut last, mut n) = (String::new(), 0, 0);
    for m in CITATION_RE.find_iter(line) {
        out.push_str(&line[last..m.start()]);
        last = m.end();
        n += 1;
    }
    if n == 0 {
        return (Cow::Borrowed(line), 0);
    }
    out.push_str(&line[last..]);
    (Cow::Owned(out), n)
}

fn contains_ascii_ci(hay: &str, needle: &str) -> bool {
    hay.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The first 60 characters of a line, for a drop's detail.
fn excerpt(line: &str) -> String {
    match line.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}

/// Kept lines joined with `sep`, then stripped (datatrove's `.join(...).strip()`).
fn join_stripped(kept: &[Cow<str>], sep: &str) -> String {
    let mut out = String::with_capacity(kept.iter().map(|l| l.len() + 1).sum());
    for (i, line) in kept.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        out.push_str(line);
    }
    let trimmed = py_strip(&out);
    if trimmed.len() == out.len() {
        out
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::tests::PROSE;

    fn c4(text: &str) -> (&'static str, String, LineEdits) {
        let mut edits = LineEdits::default();
        match C4Config::default().apply(text, &mut edits) {
            Ok(t) => ("kept", t, edits),
            Err(d) => (d.rule, String::new(), edits),
        }
    }

    #[test]
    fn c4_keeps_prose_unchanged() {
        let (r, text, edits) = c4(PROSE);
        assert_eq!((r, text.as_str()), ("kept", PROSE));
        assert_eq!(edits.total(), 0);
    }

    #[test]
    fn c4_line_edits() {
        let doc = format!(
            "Menu\n{PROSE}\nPlease enable JavaScript to view the comments.\nThis site uses cookies to improve your experience.\n\
             The tower was finished in 1889.[1]\nToo short.\nEnd of text...\n{}\n",
            "x".repeat(1001)
        );
        let (r, text, edits) = c4(&doc);
        assert_eq!(r, "kept");
        assert_eq!(text, format!("{PROSE}\nThe tower was finished in 1889."));
        let counts: Vec<(&str, usize)> = edits.counts.into_iter().collect();
        assert_eq!(
            counts,
            [
                ("c4_citation", 1),
                ("c4_line_javascript", 1),
                ("c4_line_long_word", 1),
                ("c4_line_no_terminal_punct", 2),
                ("c4_line_policy", 1),
                ("c4_line_too_few_words", 1),
            ]
        );
    }

    #[test]
    fn c4_document_drops() {
        assert_eq!(c4(&format!("{PROSE}\nLorem ipsum dolor sit amet, consectetur.")).0, "c4_lorem_ipsum");
        assert_eq!(c4(&format!("{PROSE}\nCall it as function f(x) {{ return x; }}.")).0, "c4_curly_bracket");
        assert_eq!(c4(&format!("{PROSE}\nA line without the brace {{ never counts")).0, "kept");
        assert_eq!(c4("One short sentence here.\nAnd another one there.").0, "c4_too_few_sentences");
        assert_eq!(c4("Two sentences here. And two more! Then one more? Yes, five in one line.").0, "c4_too_few_sentences");
        assert_eq!(c4("Two sentences here. And two more! Then one more? Yes, a fourth. A fifth one.").0, "kept");
        let mut edits = LineEdits::default();
        let lenient = C4Config { min_num_sentences: None, ..Default::default() };
        assert_eq!(lenient.apply("Just one sentence here.", &mut edits), Ok("Just one sentence here.".to_string()));
    }

    #[test]
    fn c4_sentence_mode() {
        let cfg = C4Config { split_paragraph: false, ..Default::default() };
        let mut edits = LineEdits::default();
        let text = "First sentence is here. Second one follows it. A third sentence now! Is this the fourth? Fifth one ends it. menu";
        let out = cfg.apply(text, &mut edits).map_err(|d| d.to_string());
        assert_eq!(
            out,
            Ok("First sentence is here. Second one follows it. A third sentence now! Is this the fourth? Fifth one ends it.".into())
        );
        assert_eq!(edits.counts.get("c4_line_no_terminal_punct"), Some(&1));
    }
}
