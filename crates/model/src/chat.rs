//! Chat templates, `tokenizer_config.json`, and chat generation.
//!
//! A template is Jinja source, as the Hugging Face ecosystem stores it in
//! `tokenizer_config.json`'s `chat_template`, rendered by `minijinja` with
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token` and
//! `raise_exception`. forja's default is ChatML (`<|im_start|>role\n…<|im_end|>\n`).
//! [`ChatTemplate::encode`] tokenises a conversation and marks which tokens
//! belong to assistant turns, by rendering prefixes of the conversation: the
//! text an assistant turn adds after the generation prompt is its target.

use crate::generate::{generate_batch, SamplingConfig};
use crate::Gpt;
use anyhow::{bail, Context};
use forja_core::Message;
use forja_tokenizer::Tokenizer;
use std::path::Path;

pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";

/// ChatML, as Qwen and others write it.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The file of a model folder that holds the template (and the special tokens).
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// A compiled chat template.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    pub source: String,
    /// The token that ends an assistant turn (generation stops there).
    pub end_of_turn: String,
}

/// A conversation as token ids, with the assistant tokens marked.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// `assistant[i]`: token `i` is part of an assistant turn (a training target).
    pub assistant: Vec<bool>,
}

fn raise_exception(msg: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    pub fn new(source: &str, end_of_turn: &str) -> anyhow::Result<Self> {
        let mut env = minijinja::Environment::new();
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.to_string()).context("compiling the chat template")?;
        Ok(Self { env, source: source.to_string(), end_of_turn: end_of_turn.to_string() })
    }

    /// ChatML with `<|im_end|>` ending turns.
    pub fn chatml() -> Self {
        // The constant compiles (tested); a failure here is a bug.
        Self::new(CHATML, IM_END).expect("ChatML template compiles")
    }

    /// The conversation as text.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> anyhow::Result<String> {
        let tmpl = self.env.get_template("chat")?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => "",
            eos_token => self.end_of_turn.as_str(),
        };
        tmpl.render(ctx).context("rendering the chat template")
    }

    /// Token ids of the conversation and its assistant mask. Each text span is
    /// tokenised on its own (as the prompt and the generated answer are at
    /// inference). Fails when the template does not render prefixes as prefixes.
    pub fn encode(&self, tok: &Tokenizer, messages: &[Message]) -> anyhow::Result<Encoded> {
        let full = self.render(messages, false)?;
        let mut spans: Vec<(usize, usize)> = Vec::new(); // assistant byte ranges of `full`
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            if !through.starts_with(&before) || !full.starts_with(&through) {
                bail!("the chat template does not render conversation prefixes as prefixes (turn {i}); assistant tokens cannot be found");
            }
            spans.push((before.len(), through.len()));
        }
        let mut enc = Encoded { ids: Vec::new(), assistant: Vec::new() };
        let mut at = 0;
        let mut push = |text: &str, target: bool| -> anyhow::Result<()> {
            if !text.is_empty() {
                let ids = tok.encode(text)?;
                enc.assistant.extend(std::iter::repeat_n(target, ids.len()));
                enc.ids.extend(ids);
            }
            Ok(())
        };
        for (start, end) in spans {
            push(&full[at..start], false)?;
            push(&full[start..end], true)?;
            at = end;
        }
        push(&full[at..], false)?;
        Ok(enc)
    }
}

/// The chat template of a model folder (`tokenizer_config.json`'s
/// `chat_template` and `eos_token`), if it has one.
pub fn read_template(dir: &Path) -> anyhow::Result<Option<ChatTemplate>> {
    let path = dir.join(TOKENIZER_CONFIG);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let Some(source) = cfg.get("chat_template").and_then(|v| v.as_str()) else { return Ok(None) };
    let eos = cfg.get("eos_token").and_then(|v| v.as_str().map(str::to_string).or_else(|| v.get("content")?.as_str().map(str::to_string)));
    let t = ChatTemplate::new(source, eos.as_deref().unwrap_or(IM_END)).with_context(|| path.display().to_string())?;
    Ok(Some(t))
}

/// Writes `tokenizer_config.json` (template, special tokens) for `transformers`.
pub fn write_tokenizer_config(dir: &Path, template: &ChatTemplate, max_length: i64) -> anyhow::Result<()> {
    let cfg = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": template.source,
        "eos_token": template.end_of_turn,
        "pad_token": template.end_of_turn,
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": false,
    });
    forja_core::fsutil::atomic_write(&dir.join(TOKENIZER_CONFIG), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
    Ok(())
}

/// Chat sampling: the base controls plus stop strings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    pub sampling: SamplingConfig,
    /// The answer is cut before the first of these.
    pub stop: Vec<String>,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self { sampling: SamplingConfig { temperature: 0.0, max_new_tokens: 128, ..Default::default() }, stop: Vec::new() }
    }
}

/// The assistant's next turn for each conversation: the template with a
/// generation prompt, generation stopping at the end-of-turn token (and the
/// tokenizer's end of text), answers cut at the first stop string.
pub fn respond(
    model: &Gpt,
    tok: &Tokenizer,
    template: &ChatTemplate,
    conversations: &[Vec<Message>],
    cfg: &ChatConfig,
) -> anyhow::Result<Vec<String>> {
    let prompts: Vec<Vec<u32>> = conversations.iter().map(|c| tok.encode(&template.render(c, true)?)).collect::<anyhow::Result<_>>()?;
    let stop: Vec<u32> = [template.end_of_turn.as_str(), forja_tokenizer::EOT].iter().filter_map(|t| tok.token_to_id(t)).collect();
    anyhow::ensure!(!stop.is_empty(), "the tokenizer has no end-of-turn token `{}`: generation would never stop", template.end_of_turn);
    let out = generate_batch(model, &prompts, &stop, &cfg.sampling)?;
    out.into_iter()
        .map(|g| {
            let ids: Vec<u32> = g.tokens.into_iter().filter(|t| !stop.contains(t)).collect();
            let mut text = tok.decode(&ids)?;
            if let Some(cut) = cfg.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(cut);
            }
            Ok(text.trim().to_string())
        })
        .collect()
}

/// The next assistant turn of `messages` from the GPT model folder `dir`, with
/// the folder's own chat template (ChatML when it has none).
pub fn chat_with_folder(dir: &Path, messages: &[Message], cfg: &ChatConfig, device: tch::Device) -> anyhow::Result<String> {
    let (_vs, model, tok) = crate::load_gpt(dir, device)?;
    let template = read_template(dir)?.unwrap_or_else(ChatTemplate::chatml);
    let mut answers = respond(&model, &tok, &template, &[messages.to_vec()], cfg)?;
    answers.pop().context("no answer generated")
}
