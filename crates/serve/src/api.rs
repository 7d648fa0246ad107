//! OpenAI request shapes and their validation: every limit is checked here,
//! before the engine, and each error names the field and the limit.

use crate::engine::GenParams;
use crate::error::ApiError;
use crate::model::{Frontend, Kind};
use forja_core::Message;
use forja_model::bert::encode_for_bert;
use serde::Deserialize;

/// Limits on what one request may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_prompt_tokens: usize,
    pub max_tokens: usize,
    pub max_n: usize,
    /// Prompts in one completions request.
    pub max_prompts: usize,
    pub max_stop: usize,
    pub max_stop_chars: usize,
    pub max_embedding_inputs: usize,
    pub max_logprobs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_prompt_tokens: 8192,
            max_tokens: 2048,
            max_n: 8,
            max_prompts: 32,
            max_stop: 16,
            max_stop_chars: 64,
            max_embedding_inputs: 256,
            max_logprobs: 20,
        }
    }
}

/// Parses a JSON body; errors name the field (`messages[0].role`) and the problem.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad_request(format!("the body is not valid JSON: {inner}"));
        }
        let text = inner.to_string();
        if let Some(field) = text.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
            let field = if path == "." || path.is_empty() { field.to_string() } else { format!("{path}.{field}") };
            return ApiError::invalid(&field, format!("`{field}` is required"));
        }
        if path == "." || path.is_empty() || path == "?" {
            // Fields of a flattened struct lose their path: find the culprit alone.
            if let Some(e) = locate_sampling_error(body) {
                return e;
            }
            return ApiError::bad_request(format!("the body is not a valid request: {inner}"));
        }
        let shape = [
            ("enum Prompt", "a string, a list of strings, a list of token ids or a list of lists of token ids"),
            ("enum OneOrMany", "a string or a list of strings"),
            ("enum Content", "a string or a list of content parts"),
            ("enum Thumb", "\"up\" or \"down\" (or 1 / -1)"),
        ]
        .iter()
        .find(|(k, _)| text.contains(k))
        .map(|(_, v)| *v);
        match shape {
            Some(want) => ApiError::invalid(&path, format!("`{path}` must be {want}")),
            None => ApiError::invalid(&path, format!("`{path}`: {inner}")),
        }
    })
}

/// The sampling field of `body` that does not parse, with its error.
fn locate_sampling_error(body: &[u8]) -> Option<ApiError> {
    let serde_json::Value::Object(map) = serde_json::from_slice(body).ok()? else { return None };
    map.into_iter().find_map(|(k, v)| {
        let one = serde_json::Value::Object([(k.clone(), v)].into_iter().collect());
        let err = serde_json::from_value::<Sampling>(one).err()?;
        let text = err.to_string();
        let message =
            if text.contains("enum OneOrMany") { format!("`{k}` must be a string or a list of strings") } else { format!("`{k}`: {text}") };
        Some(ApiError::invalid(&k, message))
    })
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

/// A completions prompt: text, texts, token ids or lists of token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// Sampling fields shared by completions and chat.
#[derive(Debug, Default, Deserialize)]
pub struct Sampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub n: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<OneOrMany<String>>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    /// Keep generating past the end-of-text token (vLLM's name).
    pub ignore_eos: Option<bool>,
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Prompt,
    pub max_tokens: Option<i64>,
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub best_of: Option<i64>,
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// Message content: text, or a list of parts of which only text is served.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub tools: Option<Vec<serde_json::Value>>,
    pub response_format: Option<serde_json::Value>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: Option<String>,
    pub input: Prompt,
    pub encoding_format: Option<String>,
    pub dimensions: Option<i64>,
    pub user: Option<String>,
}

/// A checked generation request.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Token ids of each prompt, and the text it came from.
    pub prompts: Vec<(Vec<u32>, String)>,
    pub n: usize,
    pub params: GenParams,
    pub stream: bool,
    pub include_usage: bool,
    /// Return the prompt before the completion (with its tokens' log-probabilities).
    pub echo: bool,
}

impl Checked {
    pub fn prompt_tokens(&self) -> usize {
        self.prompts.iter().map(|(p, _)| p.len()).sum()
    }

    /// Tokens this request may cost: its prompts plus everything it may generate.
    pub fn budget(&self) -> u32 {
        let out = self.prompts.len() * self.n * self.params.max_tokens;
        u32::try_from(self.prompt_tokens() + out).unwrap_or(u32::MAX)
    }
}

fn check_model(front: &Frontend, model: Option<&str>, want: Kind) -> Result<(), ApiError> {
    if let Some(m) = model {
        if m != front.id {
            return Err(
                ApiError::not_found(format!("the model `{m}` does not exist; this server serves `{}`", front.id)).with_param("model")
            );
        }
    }
    match (front.kind, want) {
        (Kind::Encoder, Kind::Generator) => {
            Err(ApiError::bad_request(format!("`{}` is an encoder: it serves /v1/embeddings, not generation", front.id))
                .with_param("model"))
        }
        (Kind::Generator, Kind::Encoder) => {
            Err(ApiError::bad_request(format!("`{}` is a generator: embeddings need an encoder model (e.g. MiniLM)", front.id))
                .with_param("model"))
        }
        _ => Ok(()),
    }
}

impl ApiError {
    pub fn with_param(mut self, p: &str) -> Self {
        self.param = Some(p.to_string());
        self
    }
}

fn in_range(name: &str, v: i64, lo: i64, hi: i64) -> Result<usize, ApiError> {
    if v < lo || v > hi {
        return Err(ApiError::invalid(name, format!("{name} must be in [{lo}, {hi}], got {v}")));
    }
    Ok(v as usize)
}

fn unsupported(name: &str, what: &str) -> ApiError {
    ApiError::invalid(name, format!("{name} is not supported by this server ({what})"))
}

/// Checks the shared sampling fields; fills everything but `max_tokens` and `logprobs`.
fn check_sampling(s: &Sampling, front: &Frontend, limits: &Limits) -> Result<(GenParams, usize, bool, bool), ApiError> {
    let temperature = s.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid("temperature", format!("temperature must be in [0, 2], got {temperature}")));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", format!("top_p must be in (0, 1], got {top_p}")));
    }
    let top_k = match s.top_k {
        None => 0,
        Some(k) if k <= 0 => 0, // -1 / 0: no top-k (vLLM's convention)
        Some(k) => in_range("top_k", k, 1, 1_000_000)?,
    };
    let n = in_range("n", s.n.unwrap_or(1), 1, limits.max_n as i64)?;
    for (name, v) in [("presence_penalty", s.presence_penalty), ("frequency_penalty", s.frequency_penalty)] {
        match v {
            Some(x) if !(-2.0..=2.0).contains(&x) => return Err(ApiError::invalid(name, format!("{name} must be in [-2, 2], got {x}"))),
            Some(x) if x != 0.0 => return Err(unsupported(name, "only 0 is served")),
            _ => {}
        }
    }
    if s.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(unsupported("logit_bias", "send an empty map or none"));
    }
    let stop = s.stop.as_ref().map(|st| match st {
        OneOrMany::One(x) => vec![x.clone()],
        OneOrMany::Many(v) => v.clone(),
    });
    let stop = stop.unwrap_or_default();
    if stop.len() > limits.max_stop {
        return Err(ApiError::invalid("stop", format!("stop may hold at most {} strings, got {}", limits.max_stop, stop.len())));
    }
    for (i, st) in stop.iter().enumerate() {
        if st.is_empty() {
            return Err(ApiError::invalid("stop", format!("stop[{i}] is empty")));
        }
        if st.chars().count() > limits.max_stop_chars {
            return Err(ApiError::invalid("stop", format!("stop[{i}] is longer than {} characters", limits.max_stop_chars)));
        }
    }
    let mut stop_texts = stop;
    let ignore_eos = s.ignore_eos.unwrap_or(false);
    if !ignore_eos {
        stop_texts.extend(front.stop_texts.iter().cloned());
    }
    let seed = s.seed.map_or_else(rand::random::<u64>, |x| x as u64);
    let params = GenParams {
        temperature,
        top_p,
        top_k,
        seed,
        max_tokens: 0,
        stop: stop_texts,
        stop_ids: if ignore_eos { Vec::new() } else { front.stop_ids.clone() },
        logprobs: None,
    };
    let include_usage = s.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    Ok((params, n, s.stream.unwrap_or(false), include_usage))
}

/// Checks prompt lengths against the limits and the context; sets `max_tokens`
/// (the default fills what the context leaves, up to the server's limit).
fn check_lengths(
    prompts: &[(Vec<u32>, String)],
    max_tokens: Option<i64>,
    least: i64,
    default: usize,
    front: &Frontend,
    limits: &Limits,
) -> Result<usize, ApiError> {
    let longest = prompts.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    if longest > limits.max_prompt_tokens {
        return Err(ApiError::invalid(
            "prompt",
            format!("the prompt has {longest} tokens, over the limit of {}", limits.max_prompt_tokens),
        ));
    }
    if longest >= front.context {
        return Err(ApiError::invalid(
            "prompt",
            format!("the prompt has {longest} tokens; the model's context is {} tokens, leaving no room to generate", front.context),
        ));
    }
    let room = front.context - longest;
    let max_tokens = match max_tokens {
        Some(m) => in_range("max_tokens", m, least, limits.max_tokens as i64)?,
        None => default.min(room).min(limits.max_tokens),
    };
    if longest + max_tokens > front.context {
        return Err(ApiError::invalid(
            "max_tokens",
            format!(
                "this model's maximum context length is {} tokens; the prompt ({longest} tokens) plus max_tokens ({max_tokens}) exceed it",
                front.context
            ),
        ));
    }
    Ok(max_tokens)
}

fn encode(front: &Frontend, text: &str, field: &str) -> Result<Vec<u32>, ApiError> {
    front.tokenizer.encode(text).map_err(|e| ApiError::invalid(field, format!("{field} could not be tokenized: {e}")))
}

/// An empty prompt starts from the end-of-text token, as GPT-2 models expect.
fn non_empty(front: &Frontend, ids: Vec<u32>) -> Result<Vec<u32>, ApiError> {
    if !ids.is_empty() {
        return Ok(ids);
    }
    match front.tokenizer.token_to_id(forja_tokenizer::EOT) {
        Some(eot) => Ok(vec![eot]),
        None => Err(ApiError::invalid("prompt", "the prompt is empty")),
    }
}

pub fn check_completion(req: &CompletionRequest, front: &Frontend, limits: &Limits) -> Result<Checked, ApiError> {
    check_model(front, req.model.as_deref(), Kind::Generator)?;
    let echo = req.echo.unwrap_or(false);
    if echo && req.sampling.stream == Some(true) {
        return Err(unsupported("echo", "not with stream: true"));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(unsupported("suffix", "no insertion"));
    }
    let (mut params, n, stream, include_usage) = check_sampling(&req.sampling, front, limits)?;
    if let Some(b) = req.best_of {
        if b != n as i64 {
            return Err(unsupported("best_of", "best_of must equal n"));
        }
    }
    let vocab = front.tokenizer.vocab_size() as u32;
    let prompts: Vec<(Vec<u32>, String)> = match &req.prompt {
        Prompt::Text(t) => vec![(encode(front, t, "prompt")?, t.clone())],
        Prompt::Texts(ts) => ts.iter().map(|t| Ok((encode(front, t, "prompt")?, t.clone()))).collect::<Result<_, ApiError>>()?,
        Prompt::Ids(ids) => vec![(ids.clone(), String::new())],
        Prompt::IdLists(l) => l.iter().map(|ids| (ids.clone(), String::new())).collect(),
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "prompt is an empty list"));
    }
    if prompts.len() > limits.max_prompts {
        return Err(ApiError::invalid("prompt", format!("at most {} prompts per request, got {}", limits.max_prompts, prompts.len())));
    }
    let mut checked = Vec::with_capacity(prompts.len());
    for (ids, text) in prompts {
        if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
            return Err(ApiError::invalid("prompt", format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        let text = if text.is_empty() && !ids.is_empty() { front.tokenizer.decode(&ids).unwrap_or_default() } else { text };
        checked.push((non_empty(front, ids)?, text));
    }
    // With echo, max_tokens 0 scores the prompt alone (as lm-eval's
    // log-likelihood requests may).
    params.max_tokens = check_lengths(&checked, req.max_tokens, if echo { 0 } else { 1 }, 16, front, limits)?;
    if let Some(lp) = req.logprobs {
        params.logprobs = Some(in_range("logprobs", lp, 0, 5)?);
    }
    Ok(Checked { prompts: checked, n, params, stream, include_usage, echo })
}

/// The conversation as forja messages (a `developer` turn is a system turn).
fn messages(req: &ChatRequest) -> Result<Vec<Message>, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must hold at least one message"));
    }
    req.messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].role"),
                        format!("messages[{i}].role must be system, developer, user or assistant, got `{other}`"),
                    ))
                }
            };
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => text.push_str(t),
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    &format!("messages[{i}].content[{j}]"),
                                    format!("messages[{i}].content[{j}]: only text parts are served, got `{kind}`"),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            Ok(Message { role: role.to_string(), content })
        })
        .collect()
}

pub fn check_chat(req: &ChatRequest, front: &Frontend, limits: &Limits) -> Result<Checked, ApiError> {
    check_model(front, req.model.as_deref(), Kind::Generator)?;
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(unsupported("tools", "no tool calls"));
    }
    if let Some(f) = &req.response_format {
        if f.get("type").and_then(|t| t.as_str()) != Some("text") {
            return Err(unsupported("response_format", "only {\"type\": \"text\"}"));
        }
    }
    let (mut params, n, stream, include_usage) = check_sampling(&req.sampling, front, limits)?;
    let msgs = messages(req)?;
    let text = front
        .template
        .render(&msgs, true)
        .map_err(|e| ApiError::invalid("messages", format!("the chat template failed on these messages: {e:#}")))?;
    let ids = non_empty(front, encode(front, &text, "messages")?)?;
    let prompts = vec![(ids, text)];
    if let (Some(_), Some(m)) = (req.max_completion_tokens, req.max_tokens) {
        in_range("max_tokens", m, 1, limits.max_tokens as i64)?;
    }
    let max = req.max_completion_tokens.or(req.max_tokens);
    let name = if req.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
    params.max_tokens = check_lengths(&prompts, max, 1, limits.max_tokens, front, limits).map_err(|mut e| {
        if e.param.as_deref() == Some("max_tokens") {
            e.param = Some(name.to_string());
        }
        e
    })?;
    let top = req.top_logprobs.map(|t| in_range("top_logprobs", t, 0, limits.max_logprobs as i64)).transpose()?;
    match (req.logprobs.unwrap_or(false), top) {
        (true, top) => params.logprobs = Some(top.unwrap_or(0)),
        (false, Some(t)) if t > 0 => return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true")),
        _ => {}
    }
    Ok(Checked { prompts, n, params, stream, include_usage, echo: false })
}

/// The text of token ids given as an embeddings input; ids outside the
/// vocabulary are refused, not dropped.
fn decode_ids(front: &Frontend, ids: &[u32]) -> Result<String, ApiError> {
    let vocab = front.tokenizer.vocab_size() as u32;
    if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
        return Err(ApiError::invalid("input", format!("token id {bad} is outside the vocabulary of {vocab}")));
    }
    front.tokenizer.decode(ids).map_err(|e| ApiError::invalid("input", e.to_string()))
}

/// Token ids of each input, with the encoder's special tokens, cut to its context.
pub fn check_embeddings(req: &EmbeddingRequest, front: &Frontend, limits: &Limits) -> Result<Vec<Vec<u32>>, ApiError> {
    check_model(front, req.model.as_deref(), Kind::Encoder)?;
    if let Some(f) = req.encoding_format.as_deref() {
        if f != "float" && f != "base64" {
            return Err(ApiError::invalid("encoding_format", format!("encoding_format must be \"float\" or \"base64\", got `{f}`")));
        }
    }
    if req.dimensions.is_some() {
        return Err(unsupported("dimensions", "the model's own size only"));
    }
    let texts: Vec<String> = match &req.input {
        Prompt::Text(t) => vec![t.clone()],
        Prompt::Texts(t) => t.clone(),
        Prompt::Ids(ids) => vec![decode_ids(front, ids)?],
        Prompt::IdLists(l) => l.iter().map(|ids| decode_ids(front, ids)).collect::<Result<_, _>>()?,
    };
    if texts.is_empty() {
        return Err(ApiError::invalid("input", "input is an empty list"));
    }
    if texts.len() > limits.max_embedding_inputs {
        return Err(ApiError::invalid("input", format!("at most {} inputs per request, got {}", limits.max_embedding_inputs, texts.len())));
    }
    let max_len = front.context.min(limits.max_prompt_tokens).max(2);
    texts.iter().map(|t| encode_for_bert(&front.tokenizer, t, max_len).map_err(|e| ApiError::invalid("input", e.to_string()))).collect()
}
