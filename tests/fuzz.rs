//! Property-based fuzzing of the two parsers that take outside input: the message decoder (every record
//! on the outbound topic) and the scenario parser (every file QA writes). Neither may panic on any input;
//! every rejection must carry a reason, every scenario error a line inside the file.
//!
//! CI runs the default number of cases; a longer run: `PROPTEST_CASES=200000 cargo test --release --test fuzz`.

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use proptest::prelude::*;
use understudy::config::InputSettings;
use understudy::kafka::decode::{Decoder, RawRecord};
use understudy::scenario::{Scenario, ScenarioError};

fn decoder() -> &'static Decoder {
    static D: std::sync::OnceLock<Decoder> = std::sync::OnceLock::new();
    D.get_or_init(|| Decoder::new(InputSettings::default()))
}

fn decode(
    body: &[u8],
    headers: &[(String, Vec<u8>)],
) -> Result<understudy::model::Outbound, understudy::kafka::decode::Rejection> {
    let headers = headers.iter().map(|(k, v)| (k.as_str(), Some(v.as_slice()))).collect();
    decoder().decode(
        &RawRecord {
            topic: Arc::from("t"),
            topic_id: Arc::from("c/t"),
            partition: 0,
            offset: 0,
            payload: Some(body),
            headers,
        },
        Utc::now(),
    )
}

/// JSON values built from the fields the decoder looks at, with hostile contents.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number)),
        ".{0,40}".prop_map(serde_json::Value::from),
        prop_oneof![Just("email"), Just("SMS"), Just("whatsapp"), Just("fax")].prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        let key = prop_oneof![
            Just("payload_id".to_owned()),
            Just("batch_id".to_owned()),
            Just("channel".to_owned()),
            Just("recipient".to_owned()),
            Just("tenant_id".to_owned()),
            ".{0,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(key, inner, 0..7)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn decoder_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512),
                                     header in prop::collection::vec(any::<u8>(), 0..64)) {
        let headers = vec![("tenant-id".to_owned(), header.clone()), ("traceparent".to_owned(), header)];
        if let Err(r) = decode(&body, &headers) {
            prop_assert!(!r.reason.is_empty());
        }
    }

    #[test]
    fn decoder_accepts_exactly_the_well_formed_messages(v in json_value()) {
        let body = serde_json::to_vec(&v).unwrap();
        match decode(&body, &[]) {
            Ok(m) => {
                // Accepted only with every required field present as text or a number.
                let o = v.as_object().expect("an object");
                for f in ["payload_id", "batch_id", "recipient"] {
                    prop_assert!(o.get(f).is_some_and(|x| x.is_string() || x.is_number()), "{f} in {v}");
                }
                prop_assert!(!m.payload_id.is_empty());
                prop_assert_eq!(m.body, body);
            }
            Err(r) => prop_assert!(!r.reason.is_empty()),
        }
    }

    #[test]
    fn scenario_parser_never_panics_and_points_inside_the_file(text in scenario_text()) {
        match Scenario::parse(&text, Path::new("fuzz.yaml")) {
            Ok(_) => {}
            Err(ScenarioError::Invalid { line, field, message, .. }) => {
                prop_assert!(line >= 1 && line <= text.lines().count() + 1, "line {} of {}", line, text.lines().count());
                prop_assert!(!field.is_empty() && !message.is_empty());
            }
            Err(e) => prop_assert!(false, "unexpected error kind: {}", e),
        }
    }
}

/// A shipped scenario with a few random edits: lines dropped, duplicated or cut, characters replaced.
fn scenario_text() -> impl Strategy<Value = String> {
    let base: Vec<String> = ["scenarios/default.yaml", "scenarios/failure-heavy.yaml", "scenarios/happy-path.yaml"]
        .iter()
        .map(|f| std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(f)).unwrap())
        .collect();
    let edits =
        prop::collection::vec((0usize..4, any::<prop::sample::Index>(), any::<prop::sample::Index>(), ".{0,6}"), 1..6);
    (prop::sample::select(base), edits).prop_map(|(text, edits)| {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        for (op, at, col, insert) in edits {
            if lines.is_empty() {
                break;
            }
            let i = at.index(lines.len());
            match op {
                0 => {
                    lines.remove(i);
                }
                1 => {
                    let l = lines[i].clone();
                    lines.insert(i, l);
                }
                2 => {
                    let cut = lines[i]
                        .char_indices()
                        .map(|(k, _)| k)
                        .nth(col.index(lines[i].chars().count().max(1)))
                        .unwrap_or(0);
                    lines[i].truncate(cut);
                }
                _ => {
                    let cut = lines[i]
                        .char_indices()
                        .map(|(k, _)| k)
                        .nth(col.index(lines[i].chars().count().max(1)))
                        .unwrap_or(0);
                    lines[i].insert_str(cut, &insert);
                }
            }
        }
        lines.join("\n")
    })
}
