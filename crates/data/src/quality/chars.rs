//! Character classes: spaCy's letters, punctuation, quotes, currency and icons,
//! datatrove's punctuation, and a byte table of spaces and line breaks.

use super::tables::{DATATROVE_PUNCT, SPACY_ALPHA};

pub(super) const OTHER: u8 = 0;
pub(super) const SPACE: u8 = 1;
/// Lead bytes of the non-ASCII spaces (U+0085, U+00A0, U+1680, U+2000..U+205F, U+3000).
pub(super) const MAYBE_SPACE: u8 = 2;
/// Lead bytes of non-ASCII line breaks (U+0085, U+2028, U+2029).
pub(super) const MAYBE_BREAK: u8 = 3;
/// ASCII line breaks of Python's `splitlines` that are also spaces.
pub(super) const BREAK: u8 = 4;
pub(super) const LETTER: u8 = 5;

pub(super) static BYTE_CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    t[b' ' as usize] = SPACE;
    t[b'\t' as usize] = SPACE;
    let mut i = 0x0a;
    while i <= 0x0d {
        t[i] = BREAK;
        i += 1;
    }
    t[0x1c] = BREAK;
    t[0x1d] = BREAK;
    t[0x1e] = BREAK;
    t[0x1f] = SPACE;
    t[0xc2] = MAYBE_BREAK;
    t[0xe2] = MAYBE_BREAK;
    t[0xe1] = MAYBE_SPACE;
    t[0xe3] = MAYBE_SPACE;
    let mut c = 0;
    while c < 26 {
        t[b'a' as usize + c] = LETTER;
        t[b'A' as usize + c] = LETTER;
        c += 1;
    }
    t
};

pub(super) fn first_char(s: &str) -> char {
    s.chars().next().unwrap_or('\0')
}

pub(super) fn last_char(s: &str) -> char {
    s.chars().next_back().unwrap_or('\0')
}

pub(super) fn char_at(s: &str, i: usize) -> char {
    first_char(&s[i..])
}

/// spaCy's `ALPHA`: the letters of the scripts its tokenizer rules know.
pub(super) fn is_alpha(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    let i = SPACY_ALPHA.partition_point(|&(_, hi)| hi < c);
    SPACY_ALPHA.get(i).is_some_and(|&(lo, _)| lo <= c)
}

/// spaCy's `ALPHA_LOWER` (lower case, or a letter of a script without case).
pub(super) fn is_lower(c: char) -> bool {
    is_alpha(c) && !c.is_uppercase()
}

/// spaCy's `ALPHA_UPPER` (upper case, or a letter of a script without case).
pub(super) fn is_upper(c: char) -> bool {
    is_alpha(c) && !c.is_lowercase()
}

/// spaCy's `LIST_PUNCT`.
pub(super) fn is_punct_class(c: char) -> bool {
    matches!(
        c,
        '…' | ','
            | ':'
            | ';'
            | '!'
            | '?'
            | '¿'
            | '؟'
            | '¡'
            | '('
            | ')'
            | '['
            | ']'
            | '{'
            | '}'
            | '<'
            | '>'
            | '_'
            | '#'
            | '*'
            | '&'
            | '。'
            | '？'
            | '！'
            | '，'
            | '、'
            | '；'
            | '：'
            | '～'
            | '·'
            | '।'
            | '،'
            | '۔'
            | '؛'
            | '٪'
    )
}

/// spaCy's `LIST_QUOTES`.
pub(super) fn is_quote(c: char) -> bool {
    matches!(
        c,
        '\'' | '"'
            | '”'
            | '“'
            | '`'
            | '‘'
            | '´'
            | '’'
            | '‚'
            | ','
            | '„'
            | '»'
            | '«'
            | '「'
            | '」'
            | '『'
            | '』'
            | '（'
            | '）'
            | '〔'
            | '〕'
            | '【'
            | '】'
            | '《'
            | '》'
            | '〈'
            | '〉'
            | '\u{2329}'
            | '\u{232a}'
            | '⟦'
            | '⟧'
    )
}

/// spaCy's `LIST_CURRENCY` (single characters).
fn is_currency(c: char) -> bool {
    matches!(c, '$' | '£' | '¥' | '฿' | '﷼' | '\u{20a0}'..='\u{20bf}')
}

/// spaCy's `LIST_ICONS` (symbols and emoji), approximately.
pub(super) fn is_icon(c: char) -> bool {
    matches!(
        c,
        '¦' | '©' | '®' | '°' | '\u{2100}'..='\u{214f}' | '\u{2195}'..='\u{21ff}' | '\u{2300}'..='\u{23ff}'
            | '\u{2440}'..='\u{24ff}' | '\u{2500}'..='\u{27bf}' | '\u{2800}'..='\u{28ff}' | '\u{2b00}'..='\u{2bff}'
            | '\u{fffc}'..='\u{fffd}'
            | '\u{1f000}'..='\u{1faff}'
    ) && !c.is_alphanumeric()
}

pub(super) fn is_prefix_char(c: char) -> bool {
    is_punct_class(c) || is_quote(c) || is_currency(c) || is_icon(c) || matches!(c, '§' | '%' | '=' | '—' | '–')
}

pub(super) fn is_suffix_char(c: char) -> bool {
    is_punct_class(c) || is_quote(c) || is_icon(c) || matches!(c, '—' | '–')
}

/// datatrove's `PUNCTUATION_SET` (ASCII punctuation, control characters and
/// the listed Unicode punctuation and sentence ends).
pub(super) fn is_datatrove_punct(c: char) -> bool {
    match c {
        '\0'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => true,
        c if c.is_ascii() => c.is_ascii_punctuation(),
        c => DATATROVE_PUNCT.binary_search(&c).is_ok(),
    }
}
