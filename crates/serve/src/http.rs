//! The HTTP API (axum): OpenAI's routes, health, metrics, the chat page and
//! admin routes, with auth, per-key limits, validation and server-sent events.

use crate::api::{self, ChatRequest, Checked, CompletionRequest, EmbeddingRequest};
use crate::auth::{Auth, Caller, Denied};
use crate::drift::Drift;
use crate::engine::{EmbedRequest, EngineHandle, Event, Finish, GenRequest, ScoreRequest, TokenLogprob};
use crate::error::{ApiError, ErrorKind};
use crate::feedback::{Feedback, FeedbackRequest, Recorded, Served};
use crate::metrics::Metrics;
use crate::model::{self, Frontend};
use crate::ServeConfig;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use forja_model::Quantization;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

const CHAT_PAGE: &str = include_str!("../static/chat.html");
const OPENAPI: &str = include_str!("../openapi.json");

/// Everything the handlers share.
pub struct AppState {
    pub cfg: ServeConfig,
    front: RwLock<Arc<Frontend>>,
    pub engine: EngineHandle,
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
    drift: Mutex<(Drift, Option<Instant>)>,
    feedback: Mutex<Feedback>,
    reload: tokio::sync::Mutex<()>,
}

type Shared = Arc<AppState>;
type ApiResult = Result<Response, ApiError>;

impl AppState {
    pub fn new(
        cfg: ServeConfig,
        front: Arc<Frontend>,
        engine: EngineHandle,
        metrics: Arc<Metrics>,
        feedback: Feedback,
    ) -> anyhow::Result<Self> {
        let auth = Auth::new(&cfg.auth)?;
        let drift = Drift::new(cfg.drift.clone(), front.reference.clone());
        if !drift.enabled() {
            tracing::warn!(model = %front.id, "the model folder has no token_counts.json: drift monitoring is off");
        }
        metrics.model_info.with_label_values(&[&front.id, &front.hash]).set(1.0);
        Ok(Self {
            cfg,
            front: RwLock::new(front),
            engine,
            auth,
            metrics,
            drift: Mutex::new((drift, None)),
            feedback: Mutex::new(feedback),
            reload: tokio::sync::Mutex::new(()),
        })
    }

    /// The model new requests go to.
    pub fn front(&self) -> Arc<Frontend> {
        self.front.read().map_or_else(|p| p.into_inner().clone(), |f| f.clone())
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let caller = self.auth.check(header).map_err(denied)?;
        self.auth.request(&caller).map_err(|d| {
            self.metrics.rate_limited.with_label_values(&["requests"]).inc();
            denied(d)
        })?;
        Ok(caller)
    }

    fn spend(&self, caller: &Caller, checked: &Checked) -> Result<(), ApiError> {
        self.auth.spend(caller, checked.budget()).map_err(|d| {
            self.metrics.rate_limited.with_label_values(&["tokens"]).inc();
            denied(d)
        })
    }

    fn observe_drift(&self, prompts: &[(Vec<u32>, String)]) {
        let Ok(mut guard) = self.drift.lock() else { return };
        let (drift, warned) = &mut *guard;
        let mut reading = None;
        for (ids, _) in prompts {
            reading = drift.observe(ids).or(reading);
        }
        let Some(r) = reading else { return };
        self.metrics.drift_psi.set(r.psi);
        self.metrics.drift_js.set(r.js);
        self.metrics.drift_window.set(r.tokens as i64);
        if r.psi > drift.threshold() && warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            *warned = Some(Instant::now());
            tracing::warn!(
                psi = r.psi,
                js = r.js,
                window_tokens = r.tokens,
                threshold = drift.threshold(),
                "prompt drift: recent prompts differ from the training tokens"
            );
        }
    }
}

fn denied(d: Denied) -> ApiError {
    match d {
        Denied::Missing => ApiError::unauthorized("missing API key: send `Authorization: Bearer KEY`"),
        Denied::Invalid => ApiError::unauthorized("invalid API key"),
        Denied::NotAdmin => ApiError::forbidden("this route needs an admin key"),
        Denied::Limited { limit, retry_after } => {
            ApiError::rate_limited(format!("rate limit reached ({limit} for this key); retry after {retry_after} s"), retry_after)
        }
        Denied::TooLarge { tokens, per_minute } => ApiError::invalid(
            "max_tokens",
            format!("this request may use {tokens} tokens, over this key's limit of {per_minute} tokens per minute; lower max_tokens or n"),
        ),
    }
}

fn body(b: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    b.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!("the request body is over the limit of {limit} bytes"))
        } else {
            ApiError::bad_request(format!("reading the request body: {r}"))
        }
    })
}

/// The router over shared state.
pub fn router(state: Shared) -> Router {
    let limit = state.cfg.limits.max_body_bytes;
    Router::new()
        .route("/", get(|| async { Html(CHAT_PAGE) }))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/feedback", post(feedback))
        .route("/admin/reload", post(admin_reload))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/tokenizer_info", get(tokenizer_info))
        .route_layer(middleware::from_fn_with_state(state.clone(), track))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Marks a streamed response: its latency is taken when the stream ends.
#[derive(Clone, Copy)]
struct Streamed;

async fn track(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status();
    st.metrics.requests.with_label_values(&[&route, status.as_str()]).inc();
    if resp.extensions().get::<Streamed>().is_none() {
        st.metrics.latency.with_label_values(&[&route]).observe(start.elapsed().as_secs_f64());
    }
    if let Some(ErrorKind(kind)) = resp.extensions().get::<ErrorKind>() {
        st.metrics.errors.with_label_values(&[kind]).inc();
    }
    tracing::info!(route = %route, status = status.as_u16(), ms = start.elapsed().as_millis() as u64, "request");
    resp
}

async fn fallback(State(st): State<Shared>, req: Request) -> Response {
    st.metrics.requests.with_label_values(&["unmatched", "404"]).inc();
    ApiError::not_found(format!("no route {} {}", req.method(), req.uri().path())).into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    let mut e = ApiError::bad_request(format!("method {} is not allowed on {}", req.method(), req.uri().path()));
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e.into_response()
}

async fn ready(State(st): State<Shared>) -> Response {
    let f = st.front();
    Json(json!({"status": "ready", "model": f.id, "hash": f.hash})).into_response()
}

async fn metrics(State(st): State<Shared>) -> Response {
    st.metrics.queue_depth.set(st.engine.queued() as i64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render()).into_response()
}

fn model_card(f: &Frontend) -> Value {
    json!({"id": f.id, "object": "model", "created": f.created, "owned_by": "forja", "hash": f.hash, "context_length": f.context,
           "quantization": match f.quantization { Quantization::None => "none", Quantization::Int8 => "int8" },
           "kind": match f.kind { model::Kind::Generator => "generator", model::Kind::Encoder => "encoder" }})
}

async fn models(State(st): State<Shared>, headers: HeaderMap) -> ApiResult {
    st.authorize(&headers)?;
    Ok(Json(json!({"object": "list", "data": [model_card(&st.front())]})).into_response())
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:024x}", rand::random::<u128>() >> 32)
}

/// Which OpenAI response family a generation answers in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Completion,
    Chat,
}

/// The steps every generation route shares: key and request limit, body,
/// parsing, validation against the current model, token budget.
async fn generation_route<R: serde::de::DeserializeOwned>(
    st: Shared,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
    flavor: Flavor,
    check: fn(&R, &Frontend, &api::Limits) -> Result<Checked, ApiError>,
) -> ApiResult {
    let caller = st.authorize(&headers)?;
    let b = body(b, st.cfg.limits.max_body_bytes)?;
    let req: R = api::parse(&b)?;
    let front = st.front();
    let checked = check(&req, &front, &st.cfg.limits)?;
    st.spend(&caller, &checked)?;
    generate(st, front, checked, flavor, caller).await
}

async fn completions(State(st): State<Shared>, headers: HeaderMap, b: Result<Bytes, BytesRejection>) -> ApiResult {
    generation_route::<CompletionRequest>(st, headers, b, Flavor::Completion, api::check_completion).await
}

async fn chat(State(st): State<Shared>, headers: HeaderMap, b: Result<Bytes, BytesRejection>) -> ApiResult {
    generation_route::<ChatRequest>(st, headers, b, Flavor::Chat, api::check_chat).await
}

/// One choice as it is collected.
#[derive(Default, Clone)]
struct Choice {
    /// With echo: the prompt's tokens (the first without a log-probability).
    prefix: Vec<TokenLogprob>,
    prefix_text: String,
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish: Option<Finish>,
    tokens: usize,
    /// Prompt tokens read from the prefix cache.
    cached: usize,
}

struct Job {
    id: String,
    created: u64,
    flavor: Flavor,
    front: Arc<Frontend>,
    checked: Checked,
    started: Instant,
}

impl Job {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.flavor, chunk) {
            (Flavor::Completion, _) => "text_completion",
            (Flavor::Chat, false) => "chat.completion",
            (Flavor::Chat, true) => "chat.completion.chunk",
        }
    }

    fn envelope(&self, chunk: bool, choices: Vec<Value>) -> Value {
        json!({"id": self.id, "object": self.object(chunk), "created": self.created, "model": self.front.id,
               "system_fingerprint": self.front.fingerprint, "choices": choices})
    }

    /// Counts as OpenAI reports them: each prompt once (its first choice's
    /// cached tokens, what the cache held before this request), every choice's
    /// completion.
    fn usage(&self, choices: &[Choice]) -> Value {
        let prompt = self.checked.prompt_tokens();
        let completion: usize = choices.iter().map(|c| c.tokens).sum();
        let cached: usize = choices.iter().step_by(self.checked.n.max(1)).map(|c| c.cached).sum();
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
               "prompt_tokens_details": {"cached_tokens": cached}})
    }

    fn logprobs(&self, lps: &[TokenLogprob], offset: usize) -> Value {
        if self.checked.params.logprobs.is_none() {
            return Value::Null;
        }
        match self.flavor {
            Flavor::Completion => {
                let mut at = offset;
                let offsets: Vec<usize> = lps
                    .iter()
                    .map(|l| {
                        let o = at;
                        at += l.token.chars().count();
                        o
                    })
                    .collect();
                // An echoed prompt's first token has no log-probability (NaN): null.
                let scored = |l: &TokenLogprob| !l.logprob.is_nan();
                let top = |l: &TokenLogprob| Value::Object(l.top.iter().map(|(t, v)| (t.clone(), json!(v))).collect());
                json!({
                    "tokens": lps.iter().map(|l| l.token.clone()).collect::<Vec<_>>(),
                    "token_logprobs": lps.iter().map(|l| if scored(l) { json!(l.logprob) } else { Value::Null }).collect::<Vec<_>>(),
                    "top_logprobs": lps.iter().map(|l| if scored(l) { top(l) } else { Value::Null }).collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            }
            Flavor::Chat => {
                let entry = |t: &str, v: f32| json!({"token": t, "logprob": v, "bytes": t.as_bytes()});
                let content: Vec<Value> = lps
                    .iter()
                    .map(|l| {
                        let mut e = entry(&l.token, l.logprob);
                        e["top_logprobs"] = Value::Array(l.top.iter().map(|(t, v)| entry(t, *v)).collect());
                        e
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
        }
    }

    /// A streamed piece of choice `index`.
    fn chunk(&self, index: usize, text: &str, lps: &[TokenLogprob], offset: usize, finish: Option<Finish>) -> Value {
        let finish = finish.map(Finish::as_str);
        let choice = match self.flavor {
            Flavor::Completion => json!({"index": index, "text": text, "logprobs": self.logprobs(lps, offset), "finish_reason": finish}),
            Flavor::Chat => {
                let delta = if finish.is_some() && text.is_empty() { json!({}) } else { json!({"content": text}) };
                json!({"index": index, "delta": delta, "logprobs": self.logprobs(lps, offset), "finish_reason": finish})
            }
        };
        self.envelope(true, vec![choice])
    }

    fn complete(&self, choices: &[Choice]) -> Value {
        let items = choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let finish = c.finish.map(Finish::as_str);
                match self.flavor {
                    Flavor::Completion => {
                        let lps: Vec<TokenLogprob> = c.prefix.iter().chain(&c.logprobs).cloned().collect();
                        json!({"index": i, "text": format!("{}{}", c.prefix_text, c.text), "logprobs": self.logprobs(&lps, 0), "finish_reason": finish})
                    }
                    Flavor::Chat => json!({"index": i, "message": {"role": "assistant", "content": c.text, "refusal": null},
                                           "logprobs": self.logprobs(&c.logprobs, 0), "finish_reason": finish}),
                }
            })
            .collect();
        let mut v = self.envelope(false, items);
        v["usage"] = self.usage(choices);
        v
    }

    fn served(&self, choices: &[Choice]) -> Served {
        let prompt = self.checked.prompts.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join("\n");
        Served { prompt, choices: choices.iter().map(|c| c.text.clone()).collect(), model: self.front.label() }
    }
}

/// Applies an engine event to the choices; returns an error message on failure.
fn apply(choices: &mut [Choice], ev: &Event) -> Result<(), String> {
    match ev {
        Event::Delta { index, text, logprobs } => {
            if let Some(c) = choices.get_mut(*index) {
                c.text.push_str(text);
                c.logprobs.extend(logprobs.iter().cloned());
            }
        }
        Event::Done { index, finish, completion_tokens, cached_tokens } => {
            if let Some(c) = choices.get_mut(*index) {
                c.finish = Some(*finish);
                c.tokens = *completion_tokens;
                c.cached = *cached_tokens;
            }
        }
        Event::Failed { message, .. } => return Err(message.clone()),
    }
    Ok(())
}

async fn generate(st: Shared, front: Arc<Frontend>, checked: Checked, flavor: Flavor, caller: Caller) -> ApiResult {
    st.observe_drift(&checked.prompts);
    st.metrics.prompt_tokens.inc_by(checked.prompt_tokens() as u64);
    let prefix = if flavor == Flavor::Chat { "chatcmpl" } else { "cmpl" };
    let job = Job { id: new_id(prefix), created: now_secs(), flavor, front: front.clone(), checked, started: Instant::now() };
    if st.cfg.log_prompts {
        tracing::info!(id = %job.id, caller = %caller.label, prompt = ?job.checked.prompts.iter().map(|(_, t)| t).collect::<Vec<_>>(), "prompt");
    }
    tracing::debug!(id = %job.id, caller = %caller.label, prompt_tokens = job.checked.prompt_tokens(), max_tokens = job.checked.params.max_tokens, n = job.checked.n, "generate");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let now = Instant::now();
    let deadline = now + st.cfg.request_timeout;
    let mut reqs = Vec::new();
    for (p, (ids, _)) in job.checked.prompts.iter().enumerate() {
        for c in 0..job.checked.n {
            let index = p * job.checked.n + c;
            let mut params = job.checked.params.clone();
            params.seed = params.seed.wrapping_add(index as u64);
            reqs.push(GenRequest {
                front: front.clone(),
                prompt: ids.clone(),
                index,
                params,
                events: tx.clone(),
                stream: job.checked.stream,
                arrived: now,
                deadline,
            });
        }
    }
    drop(tx);
    let total = reqs.len();
    let mut choices = vec![Choice::default(); total];
    if job.checked.echo {
        echo_prompts(&st, &job, &mut choices).await?;
    }
    if job.checked.params.max_tokens == 0 {
        for c in &mut choices {
            c.finish = Some(Finish::Length);
        }
        return Ok(Json(job.complete(&choices)).into_response());
    }
    st.engine.submit(reqs).map_err(|_| ApiError::rate_limited("the server is busy: its queue is full; retry shortly", 1))?;
    if job.checked.stream {
        return Ok(stream(st, job, rx, total));
    }
    while let Some(ev) = rx.recv().await {
        apply(&mut choices, &ev).map_err(|m| ApiError::internal(format!("generation failed: {m}")))?;
    }
    if let Ok(mut fb) = st.feedback.lock() {
        fb.remember(&job.id, job.served(&choices));
    }
    let mut resp = Json(job.complete(&choices)).into_response();
    if let Ok(v) = HeaderValue::from_str(&front.label()) {
        resp.headers_mut().insert("x-forja-model", v);
    }
    Ok(resp)
}

/// Puts each prompt (and, with `logprobs`, its tokens' log-probabilities)
/// before its choices' completions.
async fn echo_prompts(st: &Shared, job: &Job, choices: &mut [Choice]) -> Result<(), ApiError> {
    let n = job.checked.n;
    let mut scores = vec![Vec::new(); job.checked.prompts.len()];
    if let Some(top) = job.checked.params.logprobs {
        let (reply, wait) = oneshot::channel();
        let prompts = job.checked.prompts.iter().map(|(ids, _)| ids.clone()).collect();
        st.engine
            .score(ScoreRequest { front: job.front.clone(), prompts, top, reply })
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        let scored = wait
            .await
            .map_err(|_| ApiError::unavailable("the engine stopped"))?
            .map_err(|e| ApiError::internal(format!("scoring the prompt failed: {e:#}")))?;
        let tok = &job.front.tokenizer;
        for ((prompt, out), (ids, _)) in scored.into_iter().zip(&mut scores).zip(&job.checked.prompts) {
            *out = prompt
                .into_iter()
                .zip(ids)
                .map(|(s, &id)| {
                    s.unwrap_or_else(|| TokenLogprob { token: tok.decode(&[id]).unwrap_or_default(), logprob: f32::NAN, top: Vec::new() })
                })
                .collect();
        }
    }
    for (i, c) in choices.iter_mut().enumerate() {
        c.prefix_text = job.checked.prompts[i / n].1.clone();
        c.prefix = scores[i / n].clone();
    }
    Ok(())
}

fn sse_json(v: &Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(v.to_string()))
}

/// Streams the engine's events as OpenAI chunks; a client that goes away drops
/// the stream, which closes the event channel and frees its slots.
fn stream(st: Shared, job: Job, mut rx: mpsc::UnboundedReceiver<Event>, total: usize) -> Response {
    let (out, body) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let model_header = job.front.label();
    tokio::spawn(async move {
        let mut choices = vec![Choice::default(); total];
        if job.flavor == Flavor::Chat {
            for i in 0..total {
                let first = job.envelope(
                    true,
                    vec![json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})],
                );
                if out.send(sse_json(&first)).await.is_err() {
                    return;
                }
            }
        }
        while let Some(ev) = rx.recv().await {
            let offset = match &ev {
                Event::Delta { index, .. } | Event::Done { index, .. } | Event::Failed { index, .. } => {
                    choices.get(*index).map_or(0, |c| c.text.chars().count())
                }
            };
            if let Err(m) = apply(&mut choices, &ev) {
                let err = ApiError::internal(format!("generation failed: {m}"));
                let _ = out.send(sse_json(&err.body())).await;
                return;
            }
            let chunk = match &ev {
                Event::Delta { index, text, logprobs } => job.chunk(*index, text, logprobs, offset, None),
                Event::Done { index, finish, .. } => job.chunk(*index, "", &[], offset, Some(*finish)),
                Event::Failed { .. } => continue,
            };
            if out.send(sse_json(&chunk)).await.is_err() {
                return; // the client left: dropping `rx` cancels the rest
            }
        }
        if job.checked.include_usage {
            let mut last = job.envelope(true, Vec::new());
            last["usage"] = job.usage(&choices);
            let _ = out.send(sse_json(&last)).await;
        }
        let _ = out.send(Ok(SseEvent::default().data("[DONE]"))).await;
        let route = if job.flavor == Flavor::Chat { "/v1/chat/completions" } else { "/v1/completions" };
        st.metrics.latency.with_label_values(&[route]).observe(job.started.elapsed().as_secs_f64());
        if let Ok(mut fb) = st.feedback.lock() {
            fb.remember(&job.id, job.served(&choices));
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(body);
    let mut resp = Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response();
    resp.extensions_mut().insert(Streamed);
    if let Ok(v) = HeaderValue::from_str(&model_header) {
        resp.headers_mut().insert("x-forja-model", v);
    }
    resp
}

async fn embeddings(State(st): State<Shared>, headers: HeaderMap, b: Result<Bytes, BytesRejection>) -> ApiResult {
    let caller = st.authorize(&headers)?;
    let b = body(b, st.cfg.limits.max_body_bytes)?;
    let req: EmbeddingRequest = api::parse(&b)?;
    let front = st.front();
    let inputs = api::check_embeddings(&req, &front, &st.cfg.limits)?;
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    st.auth.spend(&caller, u32::try_from(tokens).unwrap_or(u32::MAX)).map_err(denied)?;
    st.metrics.prompt_tokens.inc_by(tokens as u64);
    let (reply, wait) = oneshot::channel();
    st.engine.embed(EmbedRequest { front: front.clone(), inputs, reply }).map_err(|e| ApiError::unavailable(e.to_string()))?;
    let vecs = wait
        .await
        .map_err(|_| ApiError::unavailable("the engine stopped"))?
        .map_err(|e| ApiError::internal(format!("embedding failed: {e:#}")))?;
    let base64 = req.encoding_format.as_deref() == Some("base64");
    let encode = |v: Vec<f32>| {
        if base64 {
            // OpenAI's base64 form: the little-endian float32 bytes.
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            json!(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            json!(v)
        }
    };
    let data: Vec<Value> =
        vecs.into_iter().enumerate().map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": encode(v)})).collect();
    Ok(Json(json!({"object": "list", "data": data, "model": front.id, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
        .into_response())
}

async fn feedback(State(st): State<Shared>, headers: HeaderMap, b: Result<Bytes, BytesRejection>) -> ApiResult {
    let caller = st.authorize(&headers)?;
    let b = body(b, st.cfg.limits.max_body_bytes)?;
    let req: FeedbackRequest = api::parse(&b)?;
    let recorded = {
        let mut fb = st.feedback.lock().map_err(|_| ApiError::internal("the feedback store is poisoned"))?;
        fb.record(&req, &caller.label)?
    };
    let kind = match recorded {
        Recorded::Rating => "rating",
        Recorded::Preference => "preference",
    };
    st.metrics.feedback.with_label_values(&[kind]).inc();
    Ok(Json(json!({"object": "feedback", "id": req.id, "recorded": kind})).into_response())
}

#[derive(serde::Deserialize)]
struct TokenizeRequest {
    prompt: String,
    add_special_tokens: Option<bool>,
}

#[derive(serde::Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
}

/// vLLM's `/tokenize`: the served model's token ids of a text (lm-eval's
/// `tokenizer_backend=remote` counts context lengths with it).
async fn tokenize(State(st): State<Shared>, headers: HeaderMap, b: Result<Bytes, BytesRejection>) -> ApiResult {
    st.authorize(&headers)?;
    let req: TokenizeRequest = api::parse(&body(b, st.cfg.limits.max_body_bytes)?)?;
    let front = st.front();
    let tok = &front.tokenizer;
    let ids = if req.add_special_tokens.unwrap_or(false) { tok.encode_with_special(&req.prompt) } else { tok.encode(&req.prompt) };
    let ids = ids.map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
    Ok(Json(json!({"tokens": ids, "count": ids.len(), "max_model_len": front.context})).into_response())
}

/// vLLM's `/detokenize`: the text of token ids.
async fn detokenize(State(st): State<Shared>, headers: HeaderMap, b: Result<Bytes, BytesRejection>) -> ApiResult {
    st.authorize(&headers)?;
    let req: DetokenizeRequest = api::parse(&body(b, st.cfg.limits.max_body_bytes)?)?;
    let front = st.front();
    let vocab = front.tokenizer.vocab_size() as u32;
    if let Some(bad) = req.tokens.iter().find(|&&t| t >= vocab) {
        return Err(ApiError::invalid("tokens", format!("token id {bad} is outside the vocabulary of {vocab}")));
    }
    let text = front.tokenizer.decode(&req.tokens).map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
    Ok(Json(json!({"prompt": text})).into_response())
}

/// vLLM's `/tokenizer_info`: the special tokens and the context.
async fn tokenizer_info(State(st): State<Shared>, headers: HeaderMap) -> ApiResult {
    st.authorize(&headers)?;
    let f = st.front();
    let has = |t: &str| f.tokenizer.token_to_id(t).map(|_| t.to_string());
    Ok(Json(json!({"eos_token": has(forja_tokenizer::EOT), "bos_token": null, "pad_token": null,
                   "model_max_length": f.context, "tokenizer_class": "forja", "vocab_size": f.tokenizer.vocab_size()}))
    .into_response())
}

#[derive(serde::Deserialize, Default)]
struct ReloadRequest {
    model_dir: Option<PathBuf>,
}

async fn admin_reload(State(st): State<Shared>, headers: HeaderMap, b: Result<Bytes, BytesRejection>) -> ApiResult {
    let caller = st.authorize(&headers)?;
    if !caller.admin {
        return Err(denied(Denied::NotAdmin));
    }
    let b = body(b, st.cfg.limits.max_body_bytes)?;
    let req: ReloadRequest = if b.iter().all(u8::is_ascii_whitespace) { ReloadRequest::default() } else { api::parse(&b)? };
    let front = reload(&st, req.model_dir).await?;
    Ok(Json(json!({"object": "reload", "model": model_card(&front)})).into_response())
}

/// Loads a model folder (the current one when `dir` is `None`) and makes it
/// the one new requests go to; sequences already running finish on the old.
pub async fn reload(st: &Shared, dir: Option<PathBuf>) -> Result<Arc<Frontend>, ApiError> {
    let _one_at_a_time = st.reload.lock().await;
    let old = st.front();
    let dir = dir.unwrap_or_else(|| old.dir.clone());
    let (id, device, quantize, pack) = (st.cfg.model_id.clone(), st.cfg.device, st.cfg.quantize, st.cfg.pack);
    let load_dir = dir.clone();
    let loaded =
        tokio::task::spawn_blocking(move || model::load(&load_dir, &model::LoadOptions { id: id.as_deref(), device, quantize, pack }))
            .await;
    let (front, weights) = match loaded {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            st.metrics.reloads.with_label_values(&["failed"]).inc();
            tracing::error!("reload of {} failed: {e:#}", dir.display());
            return Err(
                ApiError::bad_request(format!("reload failed, still serving {} ({}): {e:#}", old.id, old.hash)).with_param("model_dir")
            );
        }
        Err(e) => return Err(ApiError::internal(format!("the loader panicked: {e}"))),
    };
    let front = Arc::new(front);
    st.engine.swap(front.clone(), weights).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    if let Ok(mut f) = st.front.write() {
        *f = front.clone();
    }
    if let Ok(mut d) = st.drift.lock() {
        d.0.reset(front.reference.clone());
    }
    st.metrics.model_info.reset();
    st.metrics.model_info.with_label_values(&[&front.id, &front.hash]).set(1.0);
    st.metrics.reloads.with_label_values(&["ok"]).inc();
    tracing::info!(model = %front.id, hash = %front.hash, previous = %old.hash, "model reloaded");
    Ok(front)
}
