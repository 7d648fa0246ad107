//! Prompts and answers as token ids, the same way for every trainer here.
//!
//! A preference pair's `prompt` is either a plain instruction (one user turn)
//! or a dialogue in the HH-RLHF form (`\n\nHuman: …\n\nAssistant: …`, ending
//! with `\n\nAssistant:`). A model folder with a chat template (an SFT model)
//! sees the dialogue as messages rendered by its template with a generation
//! prompt, and an answer ends with the end-of-turn token — exactly what chat
//! generation produces. A folder without a template whose tokenizer has
//! ChatML's tokens is spoken to in ChatML (as the server does). Any other
//! folder sees the raw text, and an answer ends with `<|endoftext|>` when the
//! tokenizer has it.

use anyhow::Context;
use forja_core::Message;
use forja_model::chat::{read_template, ChatTemplate, IM_END, IM_START};
use forja_tokenizer::Tokenizer;
use std::path::Path;

pub const HUMAN: &str = "\n\nHuman:";
pub const ASSISTANT: &str = "\n\nAssistant:";

/// Splits an HH-RLHF dialogue into its turns (`user` / `assistant`); text
/// before the first `Human:` turn is a `system` turn. `None` when the text is
/// not in that form.
pub fn hh_turns(text: &str) -> Option<Vec<Message>> {
    let start = text.find(HUMAN)?;
    let mut turns = Vec::new();
    if start > 0 {
        turns.push(Message { role: "system".into(), content: text[..start].trim().to_string() });
    }
    let mut rest = &text[start..];
    loop {
        let (role, marker) = if rest.starts_with(HUMAN) {
            ("user", HUMAN)
        } else if rest.starts_with(ASSISTANT) {
            ("assistant", ASSISTANT)
        } else {
            return None;
        };
        rest = &rest[marker.len()..];
        let end = [rest.find(HUMAN), rest.find(ASSISTANT)].into_iter().flatten().min().unwrap_or(rest.len());
        turns.push(Message { role: role.into(), content: rest[..end].trim().to_string() });
        rest = &rest[end..];
        if rest.is_empty() {
            return Some(turns);
        }
    }
}

/// A prompt's conversation: HH dialogues turn by turn (a trailing empty
/// assistant turn, the generation prompt, dropped), anything else one user turn.
pub fn prompt_messages(prompt: &str) -> Vec<Message> {
    match hh_turns(prompt) {
        Some(mut turns) => {
            if turns.last().is_some_and(|m| m.role == "assistant" && m.content.is_empty()) {
                turns.pop();
            }
            turns
        }
        None => vec![Message { role: "user".into(), content: prompt.trim().to_string() }],
    }
}

/// A conversation as prompt text, the inverse of [`prompt_messages`]: one
/// user turn is its content; otherwise system turns first, then the HH-RLHF
/// form ending in `\n\nAssistant:`.
pub fn messages_text(messages: &[Message]) -> String {
    if let [m] = messages {
        if m.role == "user" {
            return m.content.clone();
        }
    }
    let system: Vec<&str> = messages.iter().filter(|m| m.role == "system").map(|m| m.content.as_str()).collect();
    let mut s = system.join("\n\n");
    for m in messages.iter().filter(|m| m.role != "system") {
        s += if m.role == "assistant" { ASSISTANT } else { HUMAN };
        s += " ";
        s += &m.content;
    }
    s + ASSISTANT
}

/// How one model folder turns prompts and answers into ids.
pub struct Formatter {
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    /// The token that ends an answer (end of turn, else `<|endoftext|>`).
    pub end: Option<u32>,
}

impl Formatter {
    /// The formatter of a model folder: its tokenizer and chat template.
    pub fn for_model(dir: &Path) -> anyhow::Result<Self> {
        let tokenizer = Tokenizer::load(&dir.join(forja_model::checkpoint::TOKENIZER))?;
        let chatml = [IM_START, IM_END].iter().all(|t| tokenizer.token_to_id(t).is_some());
        let template = read_template(dir)?.or_else(|| chatml.then(ChatTemplate::chatml));
        let end = match &template {
            Some(t) => Some(
                tokenizer
                    .token_to_id(&t.end_of_turn)
                    .with_context(|| format!("{}: the end-of-turn token `{}` is not in the tokenizer", dir.display(), t.end_of_turn))?,
            ),
            None => tokenizer.token_to_id(forja_tokenizer::EOT),
        };
        Ok(Self { tokenizer, template, end })
    }

    /// The prompt's ids, ready for the answer to follow.
    pub fn prompt_ids(&self, prompt: &str) -> anyhow::Result<Vec<u32>> {
        match &self.template {
            Some(t) => self.tokenizer.encode(&t.render(&prompt_messages(prompt), true)?),
            None => self.tokenizer.encode(prompt),
        }
    }

    /// An answer's ids, ending with the end token.
    pub fn answer_ids(&self, prompt: &str, answer: &str) -> anyhow::Result<Vec<u32>> {
        let text = match &self.template {
            Some(_) => answer.trim().to_string(),
            // Raw text: the answer follows the prompt after a space.
            None if prompt.ends_with(char::is_whitespace) || answer.starts_with(char::is_whitespace) => answer.to_string(),
            None => format!(" {answer}"),
        };
        let mut ids = self.tokenizer.encode(&text)?;
        ids.extend(self.end);
        Ok(ids)
    }

    /// Generated ids as answer text (the end token and anything after it dropped).
    pub fn answer_text(&self, ids: &[u32]) -> anyhow::Result<String> {
        let cut = ids.iter().position(|t| Some(*t) == self.end).unwrap_or(ids.len());
        Ok(self.tokenizer.decode(&ids[..cut])?.trim().to_string())
    }
}

/// The last `max` of `ids` (a prompt cut from its start to fit a context).
pub fn last_tokens(mut ids: Vec<u32>, max: usize) -> Vec<u32> {
    ids.drain(..ids.len().saturating_sub(max));
    ids
}

/// A prompt and an answer as ids, fitted into `max_len` tokens: the answer is
/// cut at its end when it alone is too long (keeping `min_prompt` prompt
/// tokens), then the prompt loses tokens from its start (the end of a dialogue
/// matters most), as TRL's `keep_end`. Returns whether anything was cut.
pub fn fit(prompt: &mut Vec<u32>, answers: &mut [&mut Vec<u32>], max_len: usize, min_prompt: usize) -> bool {
    let mut cut = false;
    let room = max_len.saturating_sub(min_prompt.min(prompt.len()));
    for a in answers.iter_mut() {
        if a.len() > room {
            a.truncate(room);
            cut = true;
        }
    }
    let longest = answers.iter().map(|a| a.len()).max().unwrap_or(0);
    if prompt.len() + longest > max_len {
        let drop = prompt.len() + longest - max_len;
        prompt.drain(..drop);
        cut = true;
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hh_dialogues_split_into_turns() {
        let t = hh_turns("\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:").expect("HH form");
        let roles: Vec<&str> = t.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
        assert_eq!(t[2].content, "how?");
        assert_eq!(prompt_messages("\n\nHuman: a\n\nAssistant:").len(), 1);
        assert!(hh_turns("plain text").is_none());
        assert_eq!(prompt_messages("plain text")[0].role, "user");
        // System turns go first and come back.
        let conv = vec![
            Message { role: "system".into(), content: "Be brief.".into() },
            Message { role: "user".into(), content: "Q: 2 + 2?".into() },
        ];
        let text = messages_text(&conv);
        assert_eq!(text, "Be brief.\n\nHuman: Q: 2 + 2?\n\nAssistant:");
        assert_eq!(prompt_messages(&text), conv);
        assert_eq!(messages_text(&conv[1..]), "Q: 2 + 2?");
    }

    #[test]
    fn fit_cuts_answers_then_the_prompt_start() {
        let (mut p, mut a, mut b) = ((0..10).collect::<Vec<u32>>(), vec![1u32; 4], vec![2u32; 6]);
        assert!(fit(&mut p, &mut [&mut a, &mut b], 12, 2));
        assert_eq!(p, (4..10).collect::<Vec<u32>>());
        assert_eq!((a.len(), b.len()), (4, 6));
        let (mut p, mut a) = ((0..3).collect::<Vec<u32>>(), vec![1u32; 20]);
        assert!(fit(&mut p, &mut [&mut a], 8, 2));
        assert_eq!((p.len() + a.len(), a.len()), (8, 6));
        let (mut p, mut a) = (vec![1u32; 3], vec![1u32; 3]);
        assert!(!fit(&mut p, &mut [&mut a], 8, 2));
    }
}
