//! Stage parameters from JSON with errors that say *where*: a small serde
//! deserializer over `serde_json::Value` whose error type records the key path
//! of the failure and, for a key the parameters do not have, the key and the
//! keys that exist. So `forja check` points at the right line and suggests the
//! right key without reading serde's message text.

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;

/// Why parameters did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamProblem {
    /// A key the parameters do not have; `known` are the keys that exist there.
    UnknownKey { key: String, known: Vec<&'static str> },
    /// Any other problem (a wrong type, a bad value, a missing field).
    Invalid(String),
}

/// A parameter error: the key path where it happened and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// Keys from the top of the parameters down to the failing one (array
    /// indices as numbers); for an unknown key, it ends with that key.
    pub path: Vec<String>,
    pub problem: ParamProblem,
}

impl ParamError {
    /// The dotted key path, `train.optim.lr`.
    pub fn dotted(&self) -> String {
        self.path.join(".")
    }

    /// For an unknown key, the key it most likely should be: the trainer
    /// settings moved under `train` (`max_steps` → `train.max_steps`, rlhf's
    /// `loop.max_steps` → `train.max_steps`).
    pub fn suggestion(&self) -> Option<String> {
        let ParamProblem::UnknownKey { key, known } = &self.problem else { return None };
        let parent = &self.path[..self.path.len().saturating_sub(1)];
        if known.contains(&"train") && TRAINER_KEYS.contains(&key.as_str()) {
            let mut p = parent.to_vec();
            p.push("train".into());
            p.push(key.clone());
            return Some(p.join("."));
        }
        if key == "loop" && known.contains(&"train") {
            let mut p = parent.to_vec();
            p.push("train".into());
            return Some(p.join("."));
        }
        None
    }
}

/// The keys of the trainer settings (`forja_train::TrainerConfig`), which
/// every trainer nests under `train`; before, they sat at the top of a stage's
/// parameters (and under `loop` in the RLHF stages).
pub const TRAINER_KEYS: &[&str] = &[
    "max_steps",
    "epochs",
    "batch_size",
    "grad_accum",
    "optim",
    "eval_interval",
    "eval_iters",
    "checkpoint_interval",
    "early_stopping_patience",
    "log_interval",
    "diagnosis",
    "keep_best",
    "precision",
    "seed",
    "device",
    "threads",
];

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            ParamProblem::UnknownKey { known, .. } => {
                write!(f, "unknown key `{}`", self.dotted())?;
                if let Some(s) = self.suggestion() {
                    write!(f, " (it is now `{s}`)")?;
                }
                if !known.is_empty() {
                    write!(f, "; keys here: {}", known.join(", "))?;
                }
                Ok(())
            }
            ParamProblem::Invalid(msg) if self.path.is_empty() => write!(f, "{msg}"),
            ParamProblem::Invalid(msg) => write!(f, "`{}`: {msg}", self.dotted()),
        }
    }
}

impl std::error::Error for ParamError {}

impl de::Error for ParamError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self { path: Vec::new(), problem: ParamProblem::Invalid(msg.to_string()) }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self { path: vec![field.to_string()], problem: ParamProblem::UnknownKey { key: field.to_string(), known: expected.to_vec() } }
    }
}

impl ParamError {
    /// Puts `key` in front of the path (the error came from below it).
    fn under(mut self, key: &str) -> Self {
        self.path.insert(0, key.to_string());
        self
    }
}

/// Reads `given` over `defaults`: keys given replace the defaults' values,
/// nested tables merge (`sampling = { max_new_tokens = 8 }` keeps the other
/// sampling defaults, which plain `#[serde(default)]` would take from the
/// nested type's own `Default`); unknown keys are still errors naming them.
pub fn over<T: serde::Serialize + de::DeserializeOwned>(defaults: &T, given: Value) -> Result<T, ParamError> {
    fn merge(base: &mut Value, given: Value) {
        match (base, given) {
            (Value::Object(b), Value::Object(g)) => {
                for (k, v) in g {
                    match b.get_mut(&k) {
                        Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                        _ => {
                            b.insert(k, v);
                        }
                    }
                }
            }
            (b, g) => *b = g,
        }
    }
    let mut base = serde_json::to_value(defaults).map_err(<ParamError as de::Error>::custom)?;
    merge(&mut base, given);
    from_json(&base)
}

/// Deserialises `T` from JSON parameters, reporting the failing key path.
pub fn from_json<T: de::DeserializeOwned>(value: &Value) -> Result<T, ParamError> {
    T::deserialize(ValueDe(value))
}

/// A deserializer over a borrowed JSON value with [`ParamError`] errors.
#[derive(Clone, Copy)]
struct ValueDe<'a>(&'a Value);

impl<'de, 'a> de::Deserializer<'de> for ValueDe<'a> {
    type Error = ParamError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ParamError> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_str(s),
            Value::Array(items) => visitor.visit_seq(Seq { items: items.iter(), index: 0 }),
            Value::Object(map) => visitor.visit_map(Map { entries: map.iter(), key: None }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ParamError> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ParamError> {
        match self.0 {
            Value::String(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            Value::Object(map) if map.len() == 1 => {
                let Some((variant, value)) = map.iter().next() else { unreachable!("one entry") };
                visitor.visit_enum(Enum { variant, value }).map_err(|e| e.under(variant))
            }
            other => Err(de::Error::invalid_type(unexpected(other), &"a variant name or a table with one key")),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, ParamError> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

fn unexpected(v: &Value) -> de::Unexpected<'_> {
    match v {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Number(n) => n.as_f64().map_or(de::Unexpected::Other("number"), de::Unexpected::Float),
        Value::String(s) => de::Unexpected::Str(s),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Object(_) => de::Unexpected::Map,
    }
}

struct Seq<'a> {
    items: std::slice::Iter<'a, Value>,
    index: usize,
}

impl<'de, 'a> SeqAccess<'de> for Seq<'a> {
    type Error = ParamError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, ParamError> {
        let Some(item) = self.items.next() else { return Ok(None) };
        let i = self.index;
        self.index += 1;
        seed.deserialize(ValueDe(item)).map(Some).map_err(|e| e.under(&i.to_string()))
    }
}

struct Map<'a> {
    entries: serde_json::map::Iter<'a>,
    key: Option<(&'a String, &'a Value)>,
}

impl<'de, 'a> MapAccess<'de> for Map<'a> {
    type Error = ParamError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, ParamError> {
        let Some((k, v)) = self.entries.next() else { return Ok(None) };
        self.key = Some((k, v));
        // An unknown key already names itself as its path.
        seed.deserialize(k.as_str().into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, ParamError> {
        let Some((k, v)) = self.key.take() else { return Err(de::Error::custom("a value without its key")) };
        seed.deserialize(ValueDe(v)).map_err(|e| e.under(k))
    }
}

struct Enum<'a> {
    variant: &'a String,
    value: &'a Value,
}

impl<'de, 'a> de::EnumAccess<'de> for Enum<'a> {
    type Error = ParamError;
    type Variant = ValueDe<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, ValueDe<'a>), ParamError> {
        let v = seed.deserialize(self.variant.as_str().into_deserializer())?;
        Ok((v, ValueDe(self.value)))
    }
}

impl<'de, 'a> de::VariantAccess<'de> for ValueDe<'a> {
    type Error = ParamError;

    fn unit_variant(self) -> Result<(), ParamError> {
        match self.0 {
            Value::Null => Ok(()),
            other => Err(de::Error::invalid_type(unexpected(other), &"no value")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, ParamError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, ParamError> {
        de::Deserializer::deserialize_any(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(self, _fields: &'static [&'static str], visitor: V) -> Result<V::Value, ParamError> {
        de::Deserializer::deserialize_any(self, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        lr: f64,
        #[serde(default)]
        kind: Option<Kind>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Plain,
        Scaled(f64),
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        train: Vec<Inner>,
    }

    #[test]
    fn values_round_trip() {
        let v = serde_json::json!({"name": "a", "train": [{"lr": 1e-3, "kind": "plain"}, {"lr": 2, "kind": {"scaled": 0.5}}]});
        let o: Outer = from_json(&v).expect("parses");
        assert_eq!(o.train[1], Inner { lr: 2.0, kind: Some(Kind::Scaled(0.5)) });
    }

    #[test]
    fn an_unknown_key_is_named_with_its_path_and_the_known_keys() {
        let v = serde_json::json!({"name": "a", "train": [{"lr": 1.0}, {"lr": 1.0, "lrr": 2}]});
        let e = from_json::<Outer>(&v).expect_err("unknown key");
        assert_eq!(e.path, ["train", "1", "lrr"]);
        assert_eq!(e.problem, ParamProblem::UnknownKey { key: "lrr".into(), known: vec!["lr", "kind"] });
    }

    #[test]
    fn a_bad_value_is_named_with_its_path() {
        let v = serde_json::json!({"name": "a", "train": [{"lr": "fast"}]});
        let e = from_json::<Outer>(&v).expect_err("bad type");
        assert_eq!(e.dotted(), "train.0.lr");
        assert!(matches!(e.problem, ParamProblem::Invalid(_)));
    }

    #[test]
    fn a_trainer_key_at_the_top_suggests_its_place_under_train() {
        let e = ParamError {
            path: vec!["max_steps".into()],
            problem: ParamProblem::UnknownKey { key: "max_steps".into(), known: vec!["model", "train"] },
        };
        assert_eq!(e.suggestion().as_deref(), Some("train.max_steps"));
        assert!(e.to_string().contains("it is now `train.max_steps`"), "{e}");
        let e = ParamError {
            path: vec!["loop".into()],
            problem: ParamProblem::UnknownKey { key: "loop".into(), known: vec!["beta", "train"] },
        };
        assert_eq!(e.suggestion().as_deref(), Some("train"));
    }
}
