//! Property-based fuzzing of every path that parses outside input: YAML
//! configuration (`standalone::load`), schema and CEL validation, publish
//! bodies and headers (`publish::read_message`), channel paths, durations,
//! object keys, content-type detection and subscribers' HTTP responses to
//! the delivery client (over real loopback sockets). Nothing may panic, and what is
//! accepted must be consistent with what the rest of the product expects.
//!
//! Bounded for CI (256 cases per property unless `PROPTEST_CASES` says
//! otherwise); a longer run by hand:
//! `PROPTEST_CASES=100000 cargo test --release --test fuzz_parsing`.
//!
//! Over 500 lines as one job: one property family per parser; its strategies serve no other test.

use std::path::PathBuf;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use proptest::prelude::*;
use serde_json::{Value, json};
use wsbridge_api::Duration;
use wsbridge_core::ObjectKey;
use wsbridge_dataplane::{Payload, PayloadKind};
use wsbridge_http::publish;
use wsbridge_standalone::{load, schema};

fn config() -> ProptestConfig {
    // `PROPTEST_CASES` overrides the default of 256 cases.
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A configuration file of its own per case (removed after the case).
fn temp_file(text: &[u8]) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "wsbridge-fuzz-{}-{}.yaml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).unwrap();
    path
}

const VALID: &str = r#"apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {token: s3cr3t}
---
apiVersion: wsbridge.io/v1alpha1
kind: Endpoint
metadata: {name: feed, namespace: trading}
spec:
  url: wss://feed.example.com/v2
  port: 8443
  headers: {X-Client: wsbridge}
  subprotocols: [feed.v1]
  openMessages: ['{"op":"subscribe"}']
  keepalive: {interval: 20s, timeout: 10s}
  reconnect: {initialDelay: 500ms, maxDelay: 30s}
  maxMessageBytes: 1048576
---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {name: ticker, namespace: trading}
spec:
  allowAnonymousPublish: false
  delivery: {retry: 5, backoffPolicy: exponential, backoffDelay: 200ms, timeout: 5s}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {name: ticker-feed, namespace: trading}
spec: {channel: ticker, endpoint: feed}
---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {name: pricing, namespace: trading}
spec:
  channel: ticker
  subscriber: {uri: "http://pricing:8080/ingest"}
  delivery: {ordering: unordered, maxInFlight: 16}
"#;

/// YAML-ish text: tokens YAML gives meaning to, words from the API, and
/// noise, in any order.
fn yamlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("\n".to_string()),
        Just("  ".to_string()),
        Just("- ".to_string()),
        Just(": ".to_string()),
        Just("---\n".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just(", ".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("!!binary ".to_string()),
        Just("? ".to_string()),
        Just("|\n".to_string()),
        Just("'".to_string()),
        Just("\"".to_string()),
        Just("# ".to_string()),
        Just("apiVersion: wsbridge.io/v1alpha1\n".to_string()),
        Just("kind: Channel\n".to_string()),
        Just("kind: Endpoint\n".to_string()),
        Just("metadata: {name: x}\n".to_string()),
        Just("spec".to_string()),
        Just("url: wss://h/\n".to_string()),
        Just("port".to_string()),
        Just("1e400".to_string()),
        Just("-1".to_string()),
        Just(".inf".to_string()),
        Just("null".to_string()),
        Just("~".to_string()),
        "[a-z]{1,8}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(token, 0..64).prop_map(|t| t.concat())
}

/// The valid configuration with a few bytes changed.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<prop::sample::Index>(), any::<u8>(), 0..3u8);
    prop::collection::vec(edit, 1..8).prop_map(|edits| {
        let mut bytes = VALID.as_bytes().to_vec();
        for (at, byte, op) in edits {
            let i = at.index(bytes.len().max(1));
            match op {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i.min(bytes.len()), byte),
                _ if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => {}
            }
        }
        bytes
    })
}

fn check_load(bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = temp_file(bytes);
    let name = path.display().to_string();
    let result = load(std::slice::from_ref(&path));
    let _ = std::fs::remove_file(&path);
    if let Err(errors) = result {
        prop_assert!(!errors.0.is_empty());
        for e in &errors.0 {
            prop_assert_eq!(&e.file, &name);
            prop_assert!(!e.message.is_empty());
            prop_assert!(!e.to_string().contains("s3cr3t"), "a secret value in {}", e);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn load_never_panics_on_yamlish_text(text in yamlish()) {
        check_load(text.as_bytes())?;
    }

    #[test]
    fn load_never_panics_on_a_mutated_valid_configuration(bytes in mutated()) {
        check_load(&bytes)?;
    }

    #[test]
    fn load_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_load(&bytes)?;
    }

    #[test]
    fn flow_depth_scan_never_panics_and_ignores_text_without_brackets(text in ".{0,256}") {
        let depth = load::flow_depth_exceeded(&text, 4);
        if !text.contains(['[', '{']) {
            prop_assert_eq!(depth, None);
        }
    }
}

/// JSON values, up to a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        prop_oneof![
            "[a-z]{0,12}",
            "(ws|wss|http|https|ftp)://[a-z.]{0,12}(:[0-9]{1,6})?/[a-z]{0,4}",
            "[0-9]{1,4}(ms|s|m|h|us|d)?",
            ".{0,16}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Field names of the four kinds, and a few that are not.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "url",
            "port",
            "auth",
            "secretRef",
            "secretHeaders",
            "name",
            "key",
            "headers",
            "subprotocols",
            "openMessages",
            "tls",
            "caSecretRef",
            "caConfigMapRef",
            "keepalive",
            "interval",
            "timeout",
            "reconnect",
            "initialDelay",
            "maxDelay",
            "maxMessageBytes",
            "allowAnonymousPublish",
            "delivery",
            "retry",
            "backoffPolicy",
            "backoffDelay",
            "ordering",
            "maxInFlight",
            "deadLetterSink",
            "uri",
            "ref",
            "kind",
            "path",
            "channel",
            "endpoint",
            "tokenSecretRef",
            "subscriber",
        ])
        .prop_map(str::to_string),
        "[a-zA-Z]{1,6}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn schema_and_cel_validation_never_panic(
        kind in prop::sample::select(vec!["Endpoint", "Channel", "Bridge", "Subscription", "Widget"]),
        spec in json_value(),
    ) {
        let mut object = json!({
            "apiVersion": "wsbridge.io/v1alpha1", "kind": kind,
            "metadata": {"name": "x", "namespace": "default"}, "spec": spec,
        });
        schema::prune_nulls(&mut object);
        for e in schema::validate(kind, &object) {
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn durations_parse_or_say_why(text in ".{0,24}") {
        // What every role runs on a Channel's or Subscription's durations.
        match Duration(text.clone()).get() {
            Ok(_) => {}
            Err(e) => prop_assert!(
                e.contains("invalid duration") || e.contains("negative duration"),
                "{e}"
            ),
        }
    }

    #[test]
    fn durations_written_as_the_api_does_parse_to_their_value(n in 0u64..1_000_000, unit in 0..4usize) {
        let (suffix, ms) = [("ms", 1u64), ("s", 1000), ("m", 60_000), ("h", 3_600_000)][unit];
        let parsed = Duration(format!("{n}{suffix}")).get().unwrap();
        prop_assert_eq!(parsed.as_millis(), u128::from(n) * u128::from(ms));
    }

    #[test]
    fn object_keys_round_trip(text in "[a-z/ .-]{0,16}|.{0,16}") {
        if let Ok(key) = text.parse::<ObjectKey>() {
            prop_assert_eq!(key.to_string(), text.clone());
            prop_assert!(!key.namespace.is_empty() && !key.name.is_empty());
            prop_assert!(!key.name.contains('/'));
        }
    }

    #[test]
    fn content_type_is_json_exactly_when_the_text_parses(text in ".{0,32}|[\\[\\]{}\":,0-9a-z ]{0,32}") {
        let json = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
        let expected = if json { "application/json" } else { "text/plain; charset=utf-8" };
        prop_assert_eq!(Payload::text(text.clone()).content_type(), expected);
    }

    #[test]
    fn channel_names_the_publish_path_accepts_are_the_names_objects_may_have(
        name in "[a-z0-9.-]{1,70}|[a-z]{60,70}(\\.[a-z]{1,3})?|.{0,8}",
    ) {
        // Differential: the publish path's check against the CRD pattern
        // and length that object names are validated with.
        let validator = jsonschema::validator_for(
            &json!({"type": "string", "pattern": wsbridge_api::DNS1123_SUBDOMAIN}),
        ).unwrap();
        let valid = name.len() <= 253 && validator.is_valid(&Value::String(name.clone()));
        prop_assert_eq!(publish::is_dns1123_subdomain(&name), valid, "{:?}", name);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn read_message_accepts_what_fits_and_refuses_the_rest_with_400_or_413(
        body in prop::collection::vec(any::<u8>(), 0..96),
        content_type in prop::option::of(prop_oneof![
            Just("application/octet-stream".to_string()),
            Just("APPLICATION/OCTET-STREAM; x=y".to_string()),
            Just("text/plain".to_string()),
            "[ -~]{0,40}",
        ]),
        declared in prop::option::of(prop_oneof![Just(None), (0usize..200).prop_map(Some)]),
        max in 1usize..80,
    ) {
        let mut headers = HeaderMap::new();
        if let Some(ct) = &content_type
            && let Ok(v) = HeaderValue::from_str(ct)
        {
            headers.insert(header::CONTENT_TYPE, v);
        }
        match declared {
            Some(Some(n)) => { headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n)); }
            Some(None) => { headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("not-a-number")); }
            None => {}
        }
        let binary = publish::is_binary(&headers);
        let result = runtime().block_on(publish::read_message(&headers, Body::from(body.clone()), max));
        match result {
            Ok(payload) => {
                prop_assert!(!body.is_empty() && body.len() <= max);
                prop_assert_eq!(payload.bytes().as_ref(), body.as_slice());
                let kind = if binary { PayloadKind::Binary } else { PayloadKind::Text };
                prop_assert_eq!(payload.kind(), kind);
                prop_assert!(binary || std::str::from_utf8(&body).is_ok());
            }
            Err(response) => {
                let status = response.status();
                prop_assert!(
                    status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE,
                    "{}", status
                );
                let too_large = body.len() > max || matches!(declared, Some(Some(n)) if n > max);
                prop_assert_eq!(status == StatusCode::PAYLOAD_TOO_LARGE, too_large);
            }
        }
    }

    #[test]
    fn channel_paths_never_panic_and_accept_only_valid_names(
        namespace in "[a-z0-9-]{1,8}|.{0,70}",
        name in "[a-z0-9.-]{1,12}|.{0,70}",
    ) {
        let path = Ok(axum::extract::Path((namespace.clone(), name.clone())));
        match publish::channel_key(path) {
            Ok(key) => {
                prop_assert_eq!(&key.namespace, &namespace);
                prop_assert_eq!(&key.name, &name);
                prop_assert!(publish::is_dns1123_label(&namespace));
            }
            Err(response) => prop_assert_eq!(response.status(), StatusCode::BAD_REQUEST),
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// The hand-written name check agrees with the CRD's own pattern.
    #[test]
    fn dns1123_check_agrees_with_the_crd_pattern(name in "[a-z0-9.\\-A-Z_]{0,12}") {
        let pattern = jsonschema::validator_for(
            &json!({"type": "string", "pattern": wsbridge_api::DNS1123_SUBDOMAIN}),
        )
        .unwrap();
        prop_assert_eq!(
            wsbridge_core::names::is_dns1123_subdomain(&name),
            pattern.is_valid(&Value::String(name.clone())),
            "{:?}", name
        );
    }
}

/// Something that looks like a subscriber's response, more or less.
fn responseish() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        (0u64..40).prop_map(|n| format!("Content-Length: {n}")),
        Just("Transfer-Encoding: chunked".to_string()),
        Just("Transfer-Encoding: gzip".to_string()),
        Just("Connection: close".to_string()),
        (0u64..5).prop_map(|n| format!("Retry-After: {n}")),
        "[ -~]{0,20}",
    ];
    let body = prop_oneof![
        "[ -~]{0,40}",
        Just("5\r\nhello\r\n0\r\n\r\n".to_string()),
        "[0-9a-f]{1,3}(;x=y)?\r\n[a-z]{0,8}\r\n(0\r\n\r\n)?",
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        (
            prop_oneof![Just("HTTP/1.1"), Just("HTTP/1.0"), Just("HTTP/2"), Just("")],
            prop_oneof![(100u16..600).prop_map(|c| c.to_string()), "[0-9]{0,4}"],
            prop::collection::vec(line, 0..4),
            body,
        )
            .prop_map(|(version, code, lines, body)| {
                let mut text = format!("{version} {code} X\r\n");
                for l in lines {
                    text.push_str(&l);
                    text.push_str("\r\n");
                }
                text.push_str("\r\n");
                text.push_str(&body);
                text.into_bytes()
            }),
    ]
}

/// A subscriber on loopback that answers every request with `answer`, then
/// closes the connection.
async fn raw_subscriber(answer: Vec<u8>) -> http::Uri {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}/in", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                // The request's head, then its two-byte body.
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") || !seen.ends_with(b"{}") {
                    if socket.read_buf(&mut seen).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
                let _ = socket.write_all(&answer).await;
            });
        }
    });
    uri
}

proptest! {
    #![proptest_config(config())]

    /// Whatever a subscriber answers, a delivery attempt ends in a response
    /// with the status it sent, or a network error: never a panic or a hang.
    #[test]
    fn subscriber_responses_never_panic_the_delivery_client(answer in responseish()) {
        use wsbridge_dataplane::delivery::{AttemptOutcome, HttpSender};
        let outcomes = runtime().block_on(async {
            let uri = raw_subscriber(answer.clone()).await;
            let sender = HttpSender::new();
            let mut outcomes = Vec::new();
            // Twice: the second may go on the first's connection if it was kept.
            for _ in 0..2 {
                outcomes.push(sender.post(&uri, &HeaderMap::new(), b"{}", std::time::Duration::from_secs(5)).await);
            }
            outcomes
        });
        for outcome in outcomes {
            match outcome {
                AttemptOutcome::Response { status, .. } => {
                    let head = String::from_utf8_lossy(&answer);
                    prop_assert!(head.starts_with("HTTP/1."), "{:?}", head);
                    prop_assert!(head[9..].starts_with(status.as_str()), "{} from {:?}", status, head);
                }
                AttemptOutcome::Network(e) => prop_assert!(!e.is_empty()),
                other => prop_assert!(false, "{:?} for {:?}", other, String::from_utf8_lossy(&answer)),
            }
        }
    }
}
