//! The OpenAPI document (`GET /openapi.json`) against the code and the
//! contract: it is OpenAPI 3.1.0, names exactly the router's REST routes,
//! carries the contract's JSON examples and every example validates against
//! its schema, fits each node's mode and bounds, and the server's real
//! answers (also those schemathesis cannot provoke: `408`, `413`, `503`)
//! are documented statuses with bodies and headers that conform.

// Only RedisServer is used here.
#[allow(dead_code)]
#[path = "support/redis.rs"]
mod redis_server;
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use support::{TOKEN, TestServer, payment};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const API_KEY: &str = "openapi-api-key";
const SECRET: &str = "openapi-token-secret-0123456789abcdef";

/// The contract's JSON examples of the REST side (docs/protocol.md,
/// sections 1, 3 and 5), verbatim.
const CONTRACT_PAYMENT: &str = r#"{ "trackingId": "sub-1", "amount": 1000000, "timestamp": 1699876543,
  "status": "executed", "signature": "5Jt...base58" }"#;
const CONTRACT_ENVELOPE: &str = r#"{ "type": "payment_notification",
  "id": "1699876543210-0", "seq": 42,
  "data": { "trackingId": "sub-1", "amount": 1000000, "timestamp": 1699876543,
            "status": "executed", "signature": "5Jt...base58" },
  "timestamp": 1699876543210 }"#;
const CONTRACT_MINT_REQUEST: &str = r#"{ "trackingIds": ["sub-1", "sub-2"], "ttlSeconds": 60 }"#;
const CONTRACT_MINT_ANSWER: &str = r#"{ "token": "<jwt>", "expiresAt": 1699876603210 }"#;

fn parse(json: &str) -> Value {
    serde_json::from_str(json).expect("a contract example is JSON")
}

/// The document as the default open-mode node serves it.
async fn served(server: &TestServer) -> Value {
    let (status, doc) = server.get("/openapi.json").await;
    assert_eq!(status, 200);
    doc
}

/// A validator of `schema` (which may `$ref` the document's components).
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("schema {schema}: {e}"))
}

fn assert_valid(doc: &Value, schema: &Value, instance: &Value, what: &str) {
    let v = validator(doc, schema);
    let errors: Vec<String> = v.iter_errors(instance).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{what}: {instance} does not match {schema}: {errors:?}"
    );
}

/// Every `$ref` in `value`.
fn refs_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| refs_in(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs_in(v, out)),
        _ => {}
    }
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_names_exactly_the_rest_routes() {
    let server = TestServer::start(&[]).await;
    let doc = served(&server).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(tidings::http::openapi::base()["openapi"], "3.1.0");
    let mut refs = Vec::new();
    refs_in(&doc, &mut refs);
    assert!(refs.len() > 30, "{} refs", refs.len());
    for r in refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{r} is not local"));
        assert!(doc.pointer(pointer).is_some(), "{r} points nowhere");
    }

    let routed: BTreeSet<(String, String)> = tidings::http::rest()
        .routes
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(operations(&doc), routed, "document vs router");
    let expected: BTreeSet<(String, String)> = [
        ("POST", "/v1/payments"),
        ("GET", "/v1/events"),
        ("POST", "/v1/ws/tokens"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(routed, expected, "the REST routes");

    // Each documented operation is served (neither the 404 fallback nor a
    // 405), and every other method on its path is 405 with `Allow` naming
    // exactly the documented methods, in the error shape.
    let http = support::http();
    for (method, path) in &routed {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let res = http.request(m, server.url(path)).send().await.unwrap();
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_ne!(status, 405, "{method} {path}");
        assert_ne!(
            body["error"]["message"], "No such endpoint",
            "{method} {path} reaches its handler"
        );
        for other in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            if other == method {
                continue;
            }
            let m = reqwest::Method::from_bytes(other.as_bytes()).unwrap();
            let res = http.request(m, server.url(path)).send().await.unwrap();
            assert_eq!(res.status(), 405, "{other} {path}");
            let allow = res.headers()["allow"].to_str().unwrap().to_owned();
            let mut allowed: Vec<&str> = allow.split(',').map(str::trim).collect();
            allowed.retain(|m| *m != "HEAD");
            assert_eq!(allowed, [method.as_str()], "Allow of {path}");
            let body: Value = res.json().await.unwrap();
            assert_eq!(
                body["error"]["code"], "METHOD_NOT_ALLOWED",
                "{other} {path}"
            );
            assert_valid(
                &doc,
                &json!({ "$ref": "#/components/schemas/MethodNotAllowedError" }),
                &body,
                "405",
            );
        }
    }
    server.stop().await.unwrap();
}

/// Every example in the document (request bodies, responses, parameters,
/// schemas) with the schema it illustrates.
fn examples(doc: &Value) -> Vec<(String, Value, Value)> {
    let mut out = Vec::new();
    let mut media = |at: String, content: &Value| {
        for (media_type, m) in content.as_object().into_iter().flatten() {
            let schema = m["schema"].clone();
            if let Some(e) = m.get("example") {
                out.push((format!("{at} {media_type}"), schema.clone(), e.clone()));
            }
            for (name, e) in m["examples"].as_object().into_iter().flatten() {
                out.push((
                    format!("{at} {media_type} {name}"),
                    schema.clone(),
                    e["value"].clone(),
                ));
            }
        }
    };
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let at = format!("{method} {path}");
            media(format!("{at} request"), &op["requestBody"]["content"]);
            for (status, r) in op["responses"].as_object().unwrap() {
                media(format!("{at} {status}"), &r["content"]);
            }
        }
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                if let Some(e) = p.get("example") {
                    out.push((
                        format!("{method} {path} parameter {}", p["name"]),
                        p["schema"].clone(),
                        e.clone(),
                    ));
                }
            }
        }
    }
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        for e in schema["examples"].as_array().into_iter().flatten() {
            out.push((format!("schema {name}"), schema.clone(), e.clone()));
        }
    }
    out
}

#[tokio::test]
async fn the_contract_examples_are_in_the_document_and_every_example_validates() {
    // The examples here are the contract's own text (docs/protocol.md, the
    // repository's copy of the contract).
    let contract = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/protocol.md");
    if let Ok(text) = std::fs::read_to_string(&contract) {
        for example in [CONTRACT_PAYMENT, CONTRACT_ENVELOPE, CONTRACT_MINT_REQUEST] {
            assert!(
                text.contains(example),
                "{example} is not in {}",
                contract.display()
            );
        }
        assert!(text.contains(r#"201 { "token": "<jwt>", "expiresAt": 1699876603210 }"#));
    }

    let server = TestServer::start(&["--auth", "token", "--token-secret", SECRET]).await;
    let doc = served(&server).await;
    let ingest = &doc["paths"]["/v1/payments"]["post"];
    let events = &doc["paths"]["/v1/events"]["get"];
    let mint = &doc["paths"]["/v1/ws/tokens"]["post"];
    let json_of = |r: &Value| r["content"]["application/json"].clone();

    assert_eq!(
        json_of(&ingest["requestBody"])["examples"]["payment"]["value"],
        parse(CONTRACT_PAYMENT),
        "the ingest body of section 3"
    );
    let refused = &json_of(&ingest["responses"]["400"])["example"]["error"];
    assert_eq!(refused["code"], "INVALID_PAYLOAD");
    assert_eq!(
        (
            &refused["details"][0]["index"],
            &refused["details"][0]["field"]
        ),
        (&json!(2), &json!("amount")),
        "the 400 body of section 3"
    );
    assert_eq!(
        json_of(&events["responses"]["200"])["examples"]["page"]["value"]["data"][0],
        parse(CONTRACT_ENVELOPE),
        "the payment envelope of section 1, as backfill returns it"
    );
    assert_eq!(
        json_of(&mint["requestBody"])["example"],
        parse(CONTRACT_MINT_REQUEST),
        "the mint request of section 5"
    );
    assert_eq!(
        json_of(&mint["responses"]["201"])["example"],
        parse(CONTRACT_MINT_ANSWER),
        "the mint answer of section 5"
    );

    let all = examples(&doc);
    assert!(all.len() >= 20, "examples found: {}", all.len());
    for (at, schema, example) in &all {
        assert_valid(&doc, schema, example, at);
    }
    // And the schemas bite: the contract's examples, spoiled, do not validate.
    let envelope = json!({ "$ref": "#/components/schemas/PaymentEnvelope" });
    let payment_in = json!({ "$ref": "#/components/schemas/IngestBody" });
    let mut spoiled = parse(CONTRACT_ENVELOPE);
    spoiled["data"]["status"] = json!("done");
    assert!(!validator(&doc, &envelope).is_valid(&spoiled));
    let mut spoiled = parse(CONTRACT_PAYMENT);
    spoiled["amount"] = json!(9_007_199_254_740_992u64);
    assert!(!validator(&doc, &payment_in).is_valid(&spoiled));
    let mut no_key = parse(CONTRACT_PAYMENT);
    no_key.as_object_mut().unwrap().remove("signature");
    assert!(!validator(&doc, &payment_in).is_valid(&no_key));
    no_key["idempotencyKey"] = json!("k-1");
    assert!(validator(&doc, &payment_in).is_valid(&no_key));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn each_node_serves_the_document_of_its_mode_and_bounds() {
    let open = TestServer::start(&["--max-batch", "7", "--max-subscriptions", "9"]).await;
    let doc = served(&open).await;
    assert_eq!(doc["components"]["schemas"]["IngestBatch"]["maxItems"], 7);
    let events = &doc["paths"]["/v1/events"]["get"];
    assert!(events.get("security").is_none(), "open backfill: {events}");
    let statuses = |op: &Value| -> Vec<String> {
        op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(statuses(events), ["200", "400", "500", "503"]);
    assert_eq!(
        statuses(&doc["paths"]["/v1/ws/tokens"]["post"]),
        ["401", "404", "429"]
    );
    open.stop().await.unwrap();

    let token = TestServer::start(&[
        "--auth",
        "token",
        "--token-secret",
        SECRET,
        "--max-subscriptions",
        "9",
    ])
    .await;
    let doc = served(&token).await;
    assert_eq!(
        doc["components"]["schemas"]["TokenRequest"]["properties"]["trackingIds"]["maxItems"],
        9
    );
    assert_eq!(
        doc["components"]["schemas"]["IngestBatch"]["maxItems"],
        1000
    );
    let events = &doc["paths"]["/v1/events"]["get"];
    assert_eq!(
        events["security"],
        json!([{ "socketToken": [] }, { "socketTokenQuery": [] }])
    );
    assert_eq!(
        statuses(events),
        ["200", "400", "401", "403", "429", "500", "503"]
    );
    assert_eq!(
        statuses(&doc["paths"]["/v1/ws/tokens"]["post"]),
        ["201", "400", "401", "404", "408", "413", "429"]
    );
    // A slowed-down address is told when to come back.
    for (op, method) in [
        ("/v1/payments", "post"),
        ("/v1/ws/tokens", "post"),
        ("/v1/events", "get"),
    ] {
        assert_eq!(
            doc["paths"][op][method]["responses"]["429"]["headers"]["Retry-After"]["required"],
            true,
            "{op}"
        );
    }
    for op in ["/v1/payments", "/readyz", "/v1/events"] {
        let method = if op == "/v1/payments" { "post" } else { "get" };
        assert_eq!(
            doc["paths"][op][method]["responses"]["503"]["headers"]["Retry-After"]["required"],
            true,
            "{op}"
        );
    }
    token.stop().await.unwrap();
}

/// Checks a real answer against the document: a documented status of the
/// operation, its media type, a body that matches the schema, the headers
/// it requires.
fn conforms(doc: &Value, method: &str, path: &str, status: u16, headers: &HeaderMap, body: &[u8]) {
    let at = format!("{method} {path} -> {status}");
    let op = &doc["paths"][path][method.to_lowercase()];
    assert!(op.is_object(), "{at}: no such operation");
    let documented = &op["responses"][status.to_string()];
    assert!(
        documented.is_object(),
        "{at}: undocumented status ({})",
        String::from_utf8_lossy(body)
    );
    for (name, header) in documented["headers"].as_object().into_iter().flatten() {
        if header["required"] == true {
            let value = headers
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{at}: no {name} header"));
            let value: Value = value
                .to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map(Value::from)
                .unwrap_or_else(|| Value::from(value.to_str().unwrap_or_default()));
            assert_valid(doc, &header["schema"], &value, &format!("{at} {name}"));
        }
    }
    let content = documented["content"]
        .as_object()
        .expect("a documented body");
    let sent = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = sent.split(';').next().unwrap_or_default().trim();
    let media = content
        .get(essence)
        .unwrap_or_else(|| panic!("{at}: undocumented content type {sent:?}"));
    if essence == "application/json" {
        let value: Value = serde_json::from_slice(body).expect("a JSON body");
        assert_valid(doc, &media["schema"], &value, &at);
    }
}

/// Sends a request and checks the answer against the document; returns it.
async fn call(
    doc: &Value,
    server: &TestServer,
    method: &str,
    path_and_query: &str,
    auth: Option<&str>,
    body: Option<String>,
) -> (u16, Value) {
    let path = path_and_query.split('?').next().unwrap();
    let mut req = support::http().request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        server.url(path_and_query),
    );
    if let Some(auth) = auth {
        req = req.bearer_auth(auth);
    }
    if let Some(body) = body {
        req = req.header("content-type", "application/json").body(body);
    }
    let res = req.send().await.expect("a request");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.expect("a body");
    conforms(doc, method, path, status, &headers, &bytes);
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Sends a head promising `declared` bytes of body, then only part of it:
/// the answer, once the body timeout has passed.
async fn stalled(server: &TestServer, path: &str, auth: &str) -> (u16, HeaderMap, Vec<u8>) {
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"tra"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(support::WAIT, tcp.read_to_end(&mut raw))
        .await
        .expect("an answer after the body timeout")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status: u16 = head[9..12].parse().unwrap();
    let mut headers = HeaderMap::new();
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(
                reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
                v.trim().parse().unwrap(),
            );
        }
    }
    (status, headers, body.as_bytes().to_vec())
}

#[tokio::test]
async fn open_mode_answers_conform() {
    let server = TestServer::start(&[
        "--max-body",
        "2048",
        "--max-batch",
        "2",
        "--body-read-timeout",
        "1",
        "--api-key",
        API_KEY,
    ])
    .await;
    let doc = served(&server).await;
    let ok = payment("oa-1", "sig-1").to_string();
    let mut seen = BTreeSet::new();
    let mut expect = |got: (u16, Value), want: u16, what: &str| {
        assert_eq!(got.0, want, "{what}: {}", got.1);
        seen.insert(want);
        got.1
    };
    let p = "/v1/payments";
    let accepted = expect(
        call(&doc, &server, "POST", p, Some(TOKEN), Some(ok.clone())).await,
        202,
        "ingest",
    );
    assert_eq!(accepted["data"][0]["duplicate"], false);
    let again = expect(
        call(&doc, &server, "POST", p, Some(TOKEN), Some(ok.clone())).await,
        202,
        "a duplicate",
    );
    assert_eq!(again["data"][0]["duplicate"], true);
    expect(
        call(&doc, &server, "POST", p, Some(TOKEN), Some("{".into())).await,
        400,
        "not JSON",
    );
    let bad = json!([payment("oa-1", "s2"), {"trackingId": "", "amount": -1}]).to_string();
    let refused = expect(
        call(&doc, &server, "POST", p, Some(TOKEN), Some(bad)).await,
        400,
        "bad items",
    );
    assert!(refused["error"]["details"].as_array().unwrap().len() >= 4);
    expect(
        call(&doc, &server, "POST", p, None, Some(ok.clone())).await,
        401,
        "no token",
    );
    expect(
        call(&doc, &server, "POST", p, Some("wrong"), Some(ok.clone())).await,
        401,
        "wrong token",
    );
    expect(
        call(
            &doc,
            &server,
            "POST",
            p,
            Some(TOKEN),
            Some("x".repeat(4096)),
        )
        .await,
        413,
        "big body",
    );
    let three = json!([
        payment("oa-2", "a"),
        payment("oa-2", "b"),
        payment("oa-2", "c")
    ])
    .to_string();
    expect(
        call(&doc, &server, "POST", p, Some(TOKEN), Some(three)).await,
        413,
        "big batch",
    );
    let (status, headers, body) = stalled(&server, p, TOKEN).await;
    conforms(&doc, "POST", p, status, &headers, &body);
    assert_eq!(status, 408);

    let e = "/v1/events";
    let page = expect(
        call(
            &doc,
            &server,
            "GET",
            &format!("{e}?trackingId=oa-1"),
            None,
            None,
        )
        .await,
        200,
        "backfill",
    );
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1));
    let since = page["data"][0]["id"].as_str().unwrap().to_owned();
    expect(
        call(
            &doc,
            &server,
            "GET",
            &format!("{e}?trackingId=oa-1&since={since}&limit=5"),
            None,
            None,
        )
        .await,
        200,
        "after",
    );
    expect(
        call(
            &doc,
            &server,
            "GET",
            &format!("{e}?trackingId=oa-1&since=5-1"),
            None,
            None,
        )
        .await,
        200,
        "truncated",
    );
    for query in [
        "",
        "?trackingId=",
        "?trackingId=oa-1&since=x",
        "?trackingId=oa-1&limit=0",
        "?trackingId=%FF",
        "?trackingId=a&trackingId=b",
    ] {
        expect(
            call(&doc, &server, "GET", &format!("{e}{query}"), None, None).await,
            400,
            query,
        );
    }

    let t = "/v1/ws/tokens";
    let mint = json!({ "trackingIds": ["a"] }).to_string();
    expect(
        call(&doc, &server, "POST", t, None, Some(mint.clone())).await,
        401,
        "no key",
    );
    expect(
        call(&doc, &server, "POST", t, Some(API_KEY), Some(mint)).await,
        404,
        "open mode",
    );

    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        expect(
            call(&doc, &server, "GET", path, None, None).await,
            200,
            path,
        );
    }
    assert_eq!(
        seen,
        BTreeSet::from([200, 202, 400, 401, 404, 413]),
        "statuses exercised"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn token_mode_answers_conform() {
    let server = TestServer::start(&[
        "--auth",
        "token",
        "--token-secret",
        SECRET,
        "--api-key",
        API_KEY,
        "--max-body",
        "2048",
        "--body-read-timeout",
        "1",
    ])
    .await;
    let doc = served(&server).await;
    let t = "/v1/ws/tokens";
    let minted = call(
        &doc,
        &server,
        "POST",
        t,
        Some(API_KEY),
        Some(json!({ "trackingIds": ["ta-1", "m:*"], "ttlSeconds": 60 }).to_string()),
    )
    .await;
    assert_eq!(minted.0, 201);
    let token = minted.1["token"].as_str().unwrap().to_owned();
    for (body, status) in [
        (json!({ "trackingIds": ["*"] }).to_string(), 400),
        (
            json!({ "trackingIds": [], "ttlSeconds": 0, "x": 1 }).to_string(),
            400,
        ),
        ("[".to_owned(), 400),
        ("x".repeat(4096), 413),
    ] {
        assert_eq!(
            call(&doc, &server, "POST", t, Some(API_KEY), Some(body.clone()))
                .await
                .0,
            status,
            "{body:.40}"
        );
    }
    assert_eq!(
        call(&doc, &server, "POST", t, Some("wrong"), Some("{}".into()))
            .await
            .0,
        401
    );
    let (status, headers, body) = stalled(&server, t, API_KEY).await;
    conforms(&doc, "POST", t, status, &headers, &body);
    assert_eq!(status, 408);

    let e = "/v1/events";
    assert_eq!(
        call(
            &doc,
            &server,
            "GET",
            &format!("{e}?trackingId=ta-1"),
            None,
            None
        )
        .await
        .0,
        401
    );
    assert_eq!(
        call(
            &doc,
            &server,
            "GET",
            &format!("{e}?trackingId=ta-1"),
            Some("not-a-jwt"),
            None
        )
        .await
        .0,
        401
    );
    assert_eq!(
        call(
            &doc,
            &server,
            "GET",
            &format!("{e}?trackingId=ta-1"),
            Some(&token),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            &doc,
            &server,
            "GET",
            &format!("{e}?trackingId=m:x&token={token}"),
            None,
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            &doc,
            &server,
            "GET",
            &format!("{e}?trackingId=other"),
            Some(&token),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        call(
            &doc,
            &server,
            "GET",
            &format!("{e}?trackingId="),
            Some(&token),
            None
        )
        .await
        .0,
        400
    );
    // Wrong keys again and again: this address is slowed down, and every
    // call (the right key too) is answered 429 with Retry-After, as
    // documented (`call` checks each answer against the document).
    let mut answers = Vec::new();
    for _ in 0..25 {
        answers.push(
            call(&doc, &server, "POST", t, Some("wrong"), Some("{}".into()))
                .await
                .0,
        );
    }
    assert_eq!(answers.first(), Some(&401));
    assert_eq!(answers.last(), Some(&429), "{answers:?}");
    let body = Some(json!({ "trackingIds": ["ta-1"] }).to_string());
    assert_eq!(
        call(&doc, &server, "POST", t, Some(API_KEY), body).await.0,
        429
    );
    let page = format!("{e}?trackingId=ta-1");
    assert_eq!(
        call(&doc, &server, "GET", &page, Some(&token), None)
            .await
            .0,
        429
    );
    let p = "/v1/payments";
    let payment = json!({ "trackingId": "ta-1", "amount": 1, "timestamp": 1, "status": "executed", "signature": "s" });
    let ingest = call(
        &doc,
        &server,
        "POST",
        p,
        Some(TOKEN),
        Some(payment.to_string()),
    )
    .await;
    assert_eq!(ingest.0, 429);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn unavailable_storage_answers_conform() {
    let mut redis = RedisServer::start();
    let server = TestServer::start(&["--redis-url", &redis.url()]).await;
    let doc = served(&server).await;
    assert_eq!(
        call(&doc, &server, "GET", "/readyz", None, None).await.0,
        200
    );
    redis.kill();
    // The node notices within its keepalive (1 s) or at the next command.
    let deadline = Instant::now() + support::WAIT;
    while call(&doc, &server, "GET", "/readyz", None, None).await.0 != 503 {
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ok = payment("un-1", "s").to_string();
    assert_eq!(
        call(&doc, &server, "POST", "/v1/payments", Some(TOKEN), Some(ok))
            .await
            .0,
        503
    );
    assert_eq!(
        call(
            &doc,
            &server,
            "GET",
            "/v1/events?trackingId=un-1",
            None,
            None
        )
        .await
        .0,
        503
    );
    server.stop().await.unwrap();
}

/// An answer from Redis the server cannot read (a key of the wrong type):
/// `500 INTERNAL_ERROR` as documented, without `Retry-After`, for ingest
/// and backfill alike.
#[tokio::test]
async fn unreadable_storage_answers_conform() {
    let redis = RedisServer::start();
    let server = TestServer::start(&["--redis-url", &redis.url()]).await;
    let doc = served(&server).await;
    assert_eq!(
        redis.cli(&["set", "tidings:{wt-1}:meta", "not a hash"]),
        "OK"
    );
    let ok = payment("wt-1", "s").to_string();
    let (status, _) = call(&doc, &server, "POST", "/v1/payments", Some(TOKEN), Some(ok)).await;
    assert_eq!(status, 500);
    let (status, _) = call(
        &doc,
        &server,
        "GET",
        "/v1/events?trackingId=wt-1",
        None,
        None,
    )
    .await;
    assert_eq!(status, 500);
    // Another trackingId is served as ever.
    let other = payment("wt-2", "s").to_string();
    let (status, _) = call(
        &doc,
        &server,
        "POST",
        "/v1/payments",
        Some(TOKEN),
        Some(other),
    )
    .await;
    assert_eq!(status, 202);
    server.stop().await.unwrap();
}

/// What schemathesis found, each fixed in the server, stays fixed.
#[tokio::test]
async fn schemathesis_findings_stay_fixed() {
    let server = TestServer::start(&[
        "--auth",
        "token",
        "--token-secret",
        SECRET,
        "--api-key",
        API_KEY,
    ])
    .await;
    let doc = served(&server).await;

    // 1. A backfill presenting two tokens (bearer and `token` parameter)
    //    was served on the bearer one, whatever the other said: now 401.
    let mint = json!({ "trackingIds": ["fx-1"] }).to_string();
    let (status, minted) = call(
        &doc,
        &server,
        "POST",
        "/v1/ws/tokens",
        Some(API_KEY),
        Some(mint),
    )
    .await;
    assert_eq!(status, 201);
    let token = minted["token"].as_str().unwrap().to_owned();
    let e = "/v1/events?trackingId=fx-1";
    for query in [token.as_str(), "garbage"] {
        let (status, body) = call(
            &doc,
            &server,
            "GET",
            &format!("{e}&token={query}"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (401, &json!("UNAUTHORIZED")),
            "{body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not both")
        );
    }
    assert_eq!(
        call(&doc, &server, "GET", e, Some(&token), None).await.0,
        200
    );
    assert_eq!(
        call(
            &doc,
            &server,
            "GET",
            &format!("{e}&token={token}"),
            None,
            None
        )
        .await
        .0,
        200
    );

    // 1b. An Authorization header that is not `Bearer <token>` was passed
    //     over for a valid `token` parameter: now it is refused, alone or not.
    for authorization in ["Basic abc", "Bearer", "garbage"] {
        for path in [format!("{e}&token={token}"), e.to_owned()] {
            let res = support::http()
                .get(server.url(&path))
                .header("authorization", authorization)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let headers = res.headers().clone();
            let bytes = res.bytes().await.unwrap();
            conforms(&doc, "GET", "/v1/events", status, &headers, &bytes);
            assert_eq!(status, 401, "{authorization} {path}");
        }
    }

    // 2. Integers written as whole floats (`1000000.0`, `1.699876543e9`),
    //    valid JSON Schema integers, were refused: now they are those
    //    integers, exactly; a fraction is still refused, also one a float
    //    would round away.
    let whole = r#"{"trackingId":"fx-1","amount":1000000.0,"timestamp":1.699876543e9,"status":"executed","signature":"fx-sig"}"#;
    let (status, _) = call(
        &doc,
        &server,
        "POST",
        "/v1/payments",
        Some(TOKEN),
        Some(whole.into()),
    )
    .await;
    assert_eq!(status, 202);
    let (_, page) = call(&doc, &server, "GET", e, Some(&token), None).await;
    assert_eq!(page["data"][0]["data"]["amount"], json!(1_000_000));
    assert_eq!(page["data"][0]["data"]["timestamp"], json!(1_699_876_543));
    let fraction = r#"{"trackingId":"fx-1","amount":4503599627370496.5,"timestamp":1,"status":"executed","signature":"fx-2"}"#;
    let (status, body) = call(
        &doc,
        &server,
        "POST",
        "/v1/payments",
        Some(TOKEN),
        Some(fraction.into()),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["details"][0]["field"]),
        (400, &json!("amount"))
    );
    let ttl = json!({ "trackingIds": ["fx-1"], "ttlSeconds": 60.0 }).to_string();
    let (status, minted) = call(
        &doc,
        &server,
        "POST",
        "/v1/ws/tokens",
        Some(API_KEY),
        Some(ttl),
    )
    .await;
    assert_eq!(status, 201, "{minted}");
    let half = json!({ "trackingIds": ["fx-1"], "ttlSeconds": 60.5 }).to_string();
    assert_eq!(
        call(
            &doc,
            &server,
            "POST",
            "/v1/ws/tokens",
            Some(API_KEY),
            Some(half)
        )
        .await
        .0,
        400
    );
    server.stop().await.unwrap();
}

/// Streams and filters (contract section 8): a stream's backfill and a
/// filtered one answer what the document says, and the document's
/// envelopes tell a stream's from a trackingId's.
#[tokio::test]
async fn stream_and_filtered_backfill_answers_conform() {
    let server = TestServer::start(&["--stream-separator", ":"]).await;
    let doc = served(&server).await;
    let mut batch = Vec::new();
    for (i, status) in ["executed", "failed", "pending", "failed"]
        .iter()
        .enumerate()
    {
        let mut p = payment(&format!("m-1:sub-{}", i % 2), &format!("sig-{i}"));
        p["status"] = json!(status);
        batch.push(p);
    }
    let (status, _) = call(
        &doc,
        &server,
        "POST",
        "/v1/payments",
        Some(TOKEN),
        Some(json!(batch).to_string()),
    )
    .await;
    assert_eq!(status, 202);
    for query in [
        "trackingId=m-1:*",
        "trackingId=m-1%3A%2A&limit=2",
        "trackingId=m-1:sub-1",
    ] {
        let (status, page) = call(
            &doc,
            &server,
            "GET",
            &format!("/v1/events?{query}"),
            None,
            None,
        )
        .await;
        assert_eq!(status, 200, "{query}: {page}");
        assert!(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e.get("prevSeq").is_none())
        );
    }
    let (status, page) = call(
        &doc,
        &server,
        "GET",
        "/v1/events?trackingId=m-1:*&status=failed&limit=1",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["data"][0]["stream"], "m-1:*");
    assert_eq!(page["data"][0]["prevSeq"], 0);
    assert_eq!(page["hasMore"], true, "one more failed payment follows");
    let since = page["data"][0]["id"].as_str().unwrap().to_owned();
    let (_, next) = call(
        &doc,
        &server,
        "GET",
        &format!("/v1/events?trackingId=m-1:*&status=failed&since={since}"),
        None,
        None,
    )
    .await;
    assert_eq!(next["data"].as_array().unwrap().len(), 1);
    assert_eq!(next["data"][0]["prevSeq"], page["data"][0]["seq"]);
    assert_eq!(next["hasMore"], false);
    // A trackingId's id on a stream, a bad status, a bad stream name: refused.
    let tid_id = "1-1";
    for (query, code) in [
        (format!("trackingId=m-1:*&since={tid_id}"), "INVALID_SINCE"),
        (
            format!("trackingId=m-1:sub-0&since={since}"),
            "INVALID_SINCE",
        ),
        ("trackingId=m-1:*&status=".to_owned(), "INVALID_PAYLOAD"),
        ("trackingId=m-1:*&status=done".to_owned(), "INVALID_PAYLOAD"),
        ("trackingId=m-1:x:*".to_owned(), "INVALID_TRACKING_ID"),
    ] {
        let (status, body) = call(
            &doc,
            &server,
            "GET",
            &format!("/v1/events?{query}"),
            None,
            None,
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some(code)),
            "{query}"
        );
    }
}
