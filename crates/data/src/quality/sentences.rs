//! Sentences as spaCy's rule-based sentencizer finds them: a new sentence starts
//! at the first word that is not punctuation after a `.`, `!`, `?` (or another
//! script's sentence end) word.

use super::chars::{is_punct_class, is_quote};
use super::tables::SENTENCE_ENDS;
use super::words::for_each_word;

/// spaCy's sentencizer, one word at a time.
#[derive(Default)]
struct Sentencizer {
    any: bool,
    /// Whether the last word given was not the first (its start is a cut).
    any_before: bool,
    seen_end: bool,
}

impl Sentencizer {
    /// Whether `w` starts a new sentence.
    fn starts(&mut self, w: &str) -> bool {
        let end = is_sentence_end(w);
        let starts = if self.any { self.seen_end && !end && !is_punct_word(w) } else { true };
        self.any_before = self.any;
        self.any = true;
        if starts {
            self.seen_end = false;
        }
        self.seen_end |= end;
        starts
    }
}

pub(super) fn count_sentences(text: &str) -> usize {
    let mut s = Sentencizer::default();
    let mut n = 0;
    for_each_word(text, &mut |w| n += s.starts(w) as usize);
    n
}

/// The text cut at sentence starts (datatrove's `split_into_sentences`, up to
/// whitespace at the cuts).
pub(super) fn sentence_pieces(text: &str) -> Vec<&str> {
    if text.is_empty() {
        return Vec::new();
    }
    let mut s = Sentencizer::default();
    let mut starts = vec![0];
    for_each_word(text, &mut |w| {
        if s.starts(w) && s.any_before {
            starts.push(w.as_ptr() as usize - text.as_ptr() as usize);
        }
    });
    starts.push(text.len());
    starts.windows(2).map(|w| &text[w[0]..w[1]]).collect()
}

/// A sentence-final word: `.`, `!`, `?` or another script's (spaCy's `punct_chars`).
fn is_sentence_end(w: &str) -> bool {
    let mut chars = w.chars();
    match (chars.next(), chars.next()) {
        (Some('.' | '!' | '?'), None) => true,
        (Some(c), None) if !c.is_ascii() => SENTENCE_ENDS.binary_search(&c).is_ok(),
        _ => false,
    }
}

/// Every character is punctuation (Unicode category P*; spaCy's `is_punct`).
fn is_punct_word(w: &str) -> bool {
    w.chars().all(|c| {
        if c.is_ascii() {
            c.is_ascii_punctuation() && !matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '`' | '|' | '~')
        } else {
            is_punct_class(c)
                || is_quote(c)
                || matches!(c, '§' | '¶' | '\u{2010}'..='\u{2027}' | '\u{2030}'..='\u{2043}' | '\u{2045}'..='\u{2051}')
                || SENTENCE_ENDS.binary_search(&c).is_ok()
        }
    })
}
