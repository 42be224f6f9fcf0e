//! The operation conformance table: for each operation the server offers,
//! the exact CoAP request it puts on the wire and the response codes it
//! takes as success, written down from the specifications (not from our
//! code) and checked against the server core, one test per row.
//!
//! Sources: LwM2M 1.0.1 TS table 25 ("Operation to CoAP method", which
//! Zephyr's engine cites), the LwM2M 1.1 Core TS §6.3 (operations and their
//! response codes) and the 1.1 Transport Bindings TS (the composite
//! operations on FETCH and iPATCH), RFC 7641 §2 and §3.6 (Observe 0 / 1 on
//! the observation's token), RFC 8132 (FETCH, iPATCH), and what Zephyr's
//! LwM2M engine, our devices' client, does with each method and path depth
//! (`subsys/net/lib/lwm2m/lwm2m_message_handling.c`, `handle_request`).
//!
//! `docs/operations.md` holds the same table, rendered from these rows;
//! `the_docs_table_is_current` fails when the two differ (run the tests
//! with `FLOWNEXUS_BLESS=1` to rewrite it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::content::{self, senml};
use super::model::Models;
use super::operation::{Operation, OperationKind, Outcome, WriteValue};
use super::path::{ResourcePath, Value};
use super::server::{Now, Server, ServerConfig, ServerEvent};
use crate::coap::{Code, Exchanges, Message, Method, Params, Request, Response, Type};
use crate::config::Config;

/// What the request's payload must decode to.
enum Payload {
    None,
    /// UTF-8 text, exactly.
    Text(&'static str),
    /// Records in the request's Content-Format, relative to its path.
    Records(&'static [(&'static str, Expected)]),
    /// SenML names only (Read-/Observe-Composite requests).
    Names(&'static [&'static str]),
}

/// A value as the device must read it.
#[derive(Debug, Clone, Copy)]
enum Expected {
    Integer(i64),
    Float(f64),
    String(&'static str),
}

impl Expected {
    fn value(self) -> Value {
        match self {
            Expected::Integer(i) => Value::Integer(i),
            Expected::Float(f) => Value::Float(f),
            Expected::String(s) => Value::String(s.into()),
        }
    }
}

/// Which client the request goes to: an LwM2M 1.1 client preferring
/// SenML-CBOR (Zephyr's default), or a 1.0 client that speaks TLV.
#[derive(Clone, Copy, PartialEq)]
enum Client {
    V11,
    V10,
}

struct Row {
    operation: &'static str,
    client: Client,
    kind: fn() -> OperationKind,
    /// `None`: refused before anything goes on the wire.
    method: Option<Method>,
    uri_path: &'static str,
    uri_query: &'static [&'static str],
    content_format: Option<u16>,
    accept: Option<u16>,
    observe: Option<u32>,
    payload: Payload,
    /// The one answer that is success; every other code is a failure.
    success: Option<Code>,
    /// Options the success answer carries (Create: Location-Path).
    location: &'static [&'static str],
    spec: &'static str,
}

fn p(s: &str) -> ResourcePath {
    s.parse().expect("test path")
}

fn wv(path: &str, value: &str) -> WriteValue {
    WriteValue {
        path: p(path),
        value: value.into(),
    }
}

macro_rules! rows {
    ($($name:ident: $row:expr;)*) => {
        const ROWS: &[Row] = &[$($row),*];
        $(
            #[test]
            fn $name() {
                check(&$row);
            }
        )*
    };
}

const CBOR: Option<u16> = Some(content::SENML_CBOR);
const NONE: Option<u16> = None;

rows! {
    read_resource: Row {
        operation: "Read a resource",
        client: Client::V11,
        kind: || OperationKind::Read { path: p("/3/0/9") },
        method: Some(Method::Get), uri_path: "/3/0/9", uri_query: &[],
        content_format: NONE, accept: CBOR, observe: None, payload: Payload::None,
        success: Some(Code::CONTENT), location: &[],
        spec: "Core §6.3.1; table 25: GET",
    };
    read_instance_v10: Row {
        operation: "Read an object instance (LwM2M 1.0 client)",
        client: Client::V10,
        kind: || OperationKind::Read { path: p("/3/0") },
        method: Some(Method::Get), uri_path: "/3/0", uri_query: &[],
        content_format: NONE, accept: Some(content::TLV), observe: None, payload: Payload::None,
        success: Some(Code::CONTENT), location: &[],
        spec: "Core 1.0 §5.4.1: TLV for 1.0 clients",
    };
    discover: Row {
        operation: "Discover",
        client: Client::V11,
        kind: || OperationKind::Discover { path: p("/3303") },
        method: Some(Method::Get), uri_path: "/3303", uri_query: &[],
        content_format: NONE, accept: Some(content::LINK_FORMAT), observe: None, payload: Payload::None,
        success: Some(Code::CONTENT), location: &[],
        spec: "Core §6.3.7; table 25: GET, Accept link-format",
    };
    write_resource: Row {
        operation: "Write a resource (always Replace)",
        client: Client::V11,
        kind: || OperationKind::Write { path: p("/1/0/1"), values: vec![wv("/1/0/1", "120")], replace: None },
        method: Some(Method::Put), uri_path: "/1/0/1", uri_query: &[],
        content_format: CBOR, accept: None, observe: None,
        payload: Payload::Records(&[("/1/0/1", Expected::Integer(120))]),
        success: Some(Code::CHANGED), location: &[],
        spec: "Core §6.3.3; table 25: PUT (a POST on a resource is Execute)",
    };
    write_resource_v10: Row {
        operation: "Write a resource (LwM2M 1.0 client)",
        client: Client::V10,
        kind: || OperationKind::Write { path: p("/1/0/1"), values: vec![wv("/1/0/1", "120")], replace: Some(true) },
        method: Some(Method::Put), uri_path: "/1/0/1", uri_query: &[],
        content_format: Some(content::TLV), accept: None, observe: None,
        payload: Payload::Records(&[("/1/0/1", Expected::Integer(120))]),
        success: Some(Code::CHANGED), location: &[],
        spec: "Core 1.0 §5.4.3: TLV",
    };
    write_resource_instance: Row {
        operation: "Write a resource instance (Replace)",
        client: Client::V11,
        kind: || OperationKind::Write { path: p("/3/0/11/0"), values: vec![wv("/3/0/11/0", "0")], replace: None },
        method: Some(Method::Put), uri_path: "/3/0/11/0", uri_query: &[],
        content_format: CBOR, accept: None, observe: None,
        payload: Payload::Records(&[("/3/0/11/0", Expected::Integer(0))]),
        success: Some(Code::CHANGED), location: &[],
        spec: "Core §6.3.3: PUT",
    };
    write_instance_partial_update: Row {
        operation: "Write an object instance (Partial Update, the default)",
        client: Client::V11,
        kind: || OperationKind::Write { path: p("/1/0"), values: vec![wv("/1/0/1", "300"), wv("/1/0/3", "10")], replace: None },
        method: Some(Method::Post), uri_path: "/1/0", uri_query: &[],
        content_format: CBOR, accept: None, observe: None,
        payload: Payload::Records(&[("/1/0/1", Expected::Integer(300)), ("/1/0/3", Expected::Integer(10))]),
        success: Some(Code::CHANGED), location: &[],
        spec: "Core §6.3.3; table 25: POST on /O/I",
    };
    write_instance_replace: Row {
        operation: "Write an object instance (Replace, `--replace`)",
        client: Client::V11,
        kind: || OperationKind::Write { path: p("/1/0"), values: vec![wv("/1/0/1", "300")], replace: Some(true) },
        method: Some(Method::Put), uri_path: "/1/0", uri_query: &[],
        content_format: CBOR, accept: None, observe: None,
        payload: Payload::Records(&[("/1/0/1", Expected::Integer(300))]),
        success: Some(Code::CHANGED), location: &[],
        spec: "Core §6.3.3; table 25: PUT on /O/I",
    };
    write_resource_partial_update_is_refused: Row {
        operation: "Partial Update of a resource: refused (422 `invalid`), never sent",
        client: Client::V11,
        kind: || OperationKind::Write { path: p("/1/0/1"), values: vec![wv("/1/0/1", "120")], replace: Some(false) },
        method: None, uri_path: "", uri_query: &[],
        content_format: NONE, accept: None, observe: None, payload: Payload::None,
        success: None, location: &[],
        spec: "table 25: POST on /O/I/R is Execute",
    };
    write_object_is_refused: Row {
        operation: "Write an object: refused (422 `invalid`), never sent",
        client: Client::V11,
        kind: || OperationKind::Write { path: p("/1"), values: vec![wv("/1/0/1", "120")], replace: None },
        method: None, uri_path: "", uri_query: &[],
        content_format: NONE, accept: None, observe: None, payload: Payload::None,
        success: None, location: &[],
        spec: "Core §6.3.3: targets /O/I, /O/I/R, /O/I/R/RI",
    };
    write_composite: Row {
        operation: "Write-Composite",
        client: Client::V11,
        kind: || OperationKind::WriteComposite { values: vec![wv("/1/0/1", "300"), wv("/3303/0/5750", "boiler")] },
        method: Some(Method::IPatch), uri_path: "/", uri_query: &[],
        content_format: CBOR, accept: None, observe: None,
        payload: Payload::Records(&[("/1/0/1", Expected::Integer(300)), ("/3303/0/5750", Expected::String("boiler"))]),
        success: Some(Code::CHANGED), location: &[],
        spec: "Core 1.1 §6.3.3; Transport 1.1: iPATCH on the root, SenML",
    };
    execute: Row {
        operation: "Execute",
        client: Client::V11,
        kind: || OperationKind::Execute { path: p("/3/0/4"), args: None },
        method: Some(Method::Post), uri_path: "/3/0/4", uri_query: &[],
        content_format: NONE, accept: None, observe: None, payload: Payload::None,
        success: Some(Code::CHANGED), location: &[],
        spec: "Core §6.3.5; table 25: POST on /O/I/R",
    };
    execute_with_arguments: Row {
        operation: "Execute with arguments",
        client: Client::V11,
        kind: || OperationKind::Execute { path: p("/3/0/4"), args: Some("0='5'".into()) },
        method: Some(Method::Post), uri_path: "/3/0/4", uri_query: &[],
        content_format: Some(content::TEXT_PLAIN), accept: None, observe: None, payload: Payload::Text("0='5'"),
        success: Some(Code::CHANGED), location: &[],
        spec: "Core §5.4.5 argument list, text/plain",
    };
    create: Row {
        operation: "Create",
        client: Client::V11,
        kind: || OperationKind::Create { path: p("/3303"), values: vec![wv("/3303/1/5700", "1.5")] },
        method: Some(Method::Post), uri_path: "/3303", uri_query: &[],
        content_format: CBOR, accept: None, observe: None,
        payload: Payload::Records(&[("/3303/1/5700", Expected::Float(1.5))]),
        success: Some(Code::CREATED), location: &["3303", "1"],
        spec: "Core §6.3.6; table 25: POST on /O; 2.01 with Location-Path",
    };
    delete: Row {
        operation: "Delete",
        client: Client::V11,
        kind: || OperationKind::Delete { path: p("/3303/1") },
        method: Some(Method::Delete), uri_path: "/3303/1", uri_query: &[],
        content_format: NONE, accept: None, observe: None, payload: Payload::None,
        success: Some(Code::DELETED), location: &[],
        spec: "Core §6.3.8; table 25: DELETE",
    };
    write_attributes: Row {
        operation: "Write-Attributes",
        client: Client::V11,
        kind: || OperationKind::WriteAttributes { path: p("/3303/0/5700"), attributes: vec!["pmin=10".into(), "pmax=60".into()] },
        method: Some(Method::Put), uri_path: "/3303/0/5700", uri_query: &["pmin=10", "pmax=60"],
        content_format: NONE, accept: None, observe: None, payload: Payload::None,
        success: Some(Code::CHANGED), location: &[],
        spec: "Core §6.3.4; table 25: PUT with Uri-Query, no Content-Format",
    };
    observe: Row {
        operation: "Observe",
        client: Client::V11,
        kind: || OperationKind::Observe { path: p("/3303/0/5700") },
        method: Some(Method::Get), uri_path: "/3303/0/5700", uri_query: &[],
        content_format: NONE, accept: CBOR, observe: Some(0), payload: Payload::None,
        success: Some(Code::CONTENT), location: &[],
        spec: "Core §6.4.1; RFC 7641 §2: Observe 0",
    };
    cancel_observe: Row {
        operation: "Cancel Observe (on the observation's token)",
        client: Client::V11,
        kind: || OperationKind::CancelObserve { path: p("/3303/0/5700") },
        method: Some(Method::Get), uri_path: "/3303/0/5700", uri_query: &[],
        content_format: NONE, accept: CBOR, observe: Some(1), payload: Payload::None,
        success: Some(Code::CONTENT), location: &[],
        spec: "Core §6.4.2; RFC 7641 §3.6: Observe 1",
    };
    read_composite: Row {
        operation: "Read-Composite",
        client: Client::V11,
        kind: || OperationKind::ReadComposite { paths: vec![p("/3/0/9"), p("/3303/0")] },
        method: Some(Method::Fetch), uri_path: "/", uri_query: &[],
        content_format: CBOR, accept: CBOR, observe: None, payload: Payload::Names(&["/3/0/9", "/3303/0"]),
        success: Some(Code::CONTENT), location: &[],
        spec: "Core 1.1 §6.3.2; RFC 8132: FETCH on the root",
    };
    observe_composite: Row {
        operation: "Observe-Composite",
        client: Client::V11,
        kind: || OperationKind::ObserveComposite { paths: vec![p("/3/0/9"), p("/3303/0")] },
        method: Some(Method::Fetch), uri_path: "/", uri_query: &[],
        content_format: CBOR, accept: CBOR, observe: Some(0), payload: Payload::Names(&["/3/0/9", "/3303/0"]),
        success: Some(Code::CONTENT), location: &[],
        spec: "Core 1.1 §6.4.3: FETCH, Observe 0",
    };
    cancel_observe_composite: Row {
        operation: "Cancel Observe-Composite (on the observation's token)",
        client: Client::V11,
        kind: || OperationKind::CancelObserveComposite { paths: vec![p("/3303/0"), p("/3/0/9")] },
        method: Some(Method::Fetch), uri_path: "/", uri_query: &[],
        content_format: CBOR, accept: CBOR, observe: Some(1), payload: Payload::Names(&["/3/0/9", "/3303/0"]),
        success: Some(Code::CONTENT), location: &[],
        spec: "Core 1.1 §6.4.4; RFC 7641 §3.6: Observe 1",
    };
}

/// A server with one registered device on peer 1.
struct Wire {
    server: Server<u8>,
    t0: Instant,
    models: Arc<Models>,
    next_id: i64,
    mid: u16,
}

impl Wire {
    fn new(client: Client) -> Wire {
        let models = Arc::new(Models::embedded());
        let config = Config::default();
        let server = Server::new(
            Exchanges::new(Params::default(), 1),
            ServerConfig::from_config(&config.lwm2m),
            models.clone(),
            2,
        );
        let mut w = Wire {
            server,
            t0: Instant::now(),
            models,
            next_id: 1,
            mid: 100,
        };
        let (version, links) = match client {
            Client::V11 => ("1.1", "</>;rt=\"oma.lwm2m\";ct=112,</1/0>,</3/0>,</3303/0>"),
            Client::V10 => ("1.0", "</1/0>,</3/0>,</3303/0>"),
        };
        let mut reg = Request::new(Method::Post, "/rd");
        reg.options.uri_query = vec![
            "ep=dev".into(),
            "lt=300".into(),
            format!("lwm2m={version}"),
            "b=U".into(),
        ];
        reg.options.content_format = Some(content::LINK_FORMAT);
        reg.payload = links.as_bytes().to_vec();
        let created = w.exchange(&reg);
        assert_eq!(created.code, Code::CREATED.0, "registration");
        while w.server.poll_event().is_some() {}
        w
    }

    fn now(&self) -> Now {
        Now {
            mono: self.t0 + Duration::from_millis(self.next_id as u64),
            unix_ms: 1_800_000_000_000,
        }
    }

    /// The device sends a CON request; the server's answer.
    fn exchange(&mut self, req: &Request) -> Message {
        self.mid += 1;
        let bytes = Message::request(Type::Con, self.mid, vec![7, self.mid as u8], req).encode();
        self.server.handle_datagram(self.now(), 1, &bytes);
        Message::decode(&self.server.poll_transmit().expect("an answer").bytes).expect("decodes")
    }

    fn enqueue(&mut self, kind: OperationKind) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        let now = self.now();
        self.server.enqueue(
            now,
            Operation {
                id,
                endpoint: "dev".into(),
                kind,
                deadline: now.unix_ms + 60_000,
                attempts: 0,
                max_attempts: 1,
            },
        );
        id
    }

    /// What the server puts on the wire for an operation, if anything.
    fn sent(&mut self, kind: OperationKind) -> (i64, Option<Message>) {
        let id = self.enqueue(kind);
        let sent = self.server.poll_transmit().map(|t| {
            assert_eq!(t.peer, 1);
            Message::decode(&t.bytes).expect("the server's request decodes")
        });
        assert!(self.server.poll_transmit().is_none(), "one datagram per operation");
        (id, sent)
    }

    /// The device answers `request` (piggybacked, RFC 7252 §5.2.1); the
    /// outcome of operation `id`.
    fn answer(&mut self, id: i64, request: &Message, response: &Response) -> Outcome {
        let bytes = Message::response(Type::Ack, request.message_id, request.token.clone(), response).encode();
        self.server.handle_datagram(self.now(), 1, &bytes);
        let mut outcome = None;
        while let Some(e) = self.server.poll_event() {
            if let ServerEvent::OperationFinished { id: i, outcome: o, .. } = e
                && i == id
            {
                outcome = Some(o);
            }
        }
        outcome.expect("the answer finishes the operation")
    }
}

/// The response a device sends with `code` for `row`'s request.
fn response(row: &Row, code: Code) -> Response {
    let mut r = Response::new(code);
    if code.is_success() {
        r.options.location_path = row.location.iter().map(|s| s.to_string()).collect();
        // An observation's first answer carries Observe (RFC 7641 §3.2);
        // the answer to a cancellation does not.
        if row.observe == Some(0) {
            r.options.observe = Some(1);
        }
    }
    r
}

/// Every code a device may answer with; all but the row's success fail.
const CODES: &[Code] = &[
    Code::CREATED,
    Code::DELETED,
    Code::CHANGED,
    Code::CONTENT,
    Code::BAD_REQUEST,
    Code::UNAUTHORIZED,
    Code::NOT_FOUND,
    Code::METHOD_NOT_ALLOWED,
    Code::NOT_ACCEPTABLE,
    Code::UNSUPPORTED_CONTENT_FORMAT,
    Code::INTERNAL_SERVER_ERROR,
];

/// For a cancellation, the observation it ends: established first, its
/// token returned.
fn observe_first(w: &mut Wire, kind: &OperationKind) -> Option<Vec<u8>> {
    let observe = match kind {
        OperationKind::CancelObserve { path } => OperationKind::Observe { path: *path },
        OperationKind::CancelObserveComposite { .. } => OperationKind::ObserveComposite {
            paths: vec![p("/3/0/9"), p("/3303/0")],
        },
        _ => return None,
    };
    let (id, sent) = w.sent(observe);
    let req = sent.expect("the observe request");
    let mut ok = Response::new(Code::CONTENT);
    ok.options.observe = Some(0);
    assert!(matches!(w.answer(id, &req, &ok), Outcome::Succeeded(_)));
    Some(req.token)
}

fn check(row: &Row) {
    let models = Models::embedded();
    let kind = (row.kind)();
    let Some(method) = row.method else {
        // Refused before it is queued, and again if a stored row is dispatched.
        assert!(
            kind.validate(&models).is_err(),
            "{}: validation refuses it",
            row.operation
        );
        let mut w = Wire::new(row.client);
        let (id, sent) = w.sent(kind);
        assert!(sent.is_none(), "{}: nothing goes on the wire", row.operation);
        let finished = std::iter::from_fn(|| w.server.poll_event()).any(|e| {
            matches!(e, ServerEvent::OperationFinished { id: i, outcome: Outcome::Failed { code: None, .. }, .. } if i == id)
        });
        assert!(finished, "{}: it fails without a device code", row.operation);
        return;
    };
    kind.validate(&models).expect("a valid operation");
    let success = row.success.expect("a sent row has a success code");
    for &code in CODES {
        let mut w = Wire::new(row.client);
        let token = observe_first(&mut w, &kind);
        let (id, sent) = w.sent(kind.clone());
        let m = sent.unwrap_or_else(|| panic!("{}: a request goes out", row.operation));
        assert_eq!(m.mtype, Type::Con, "{}: confirmable (Core §6.3)", row.operation);
        assert_eq!(m.method(), Some(method), "{}: method", row.operation);
        let path = if m.options.uri_path.is_empty() {
            "/".to_string()
        } else {
            format!("/{}", m.options.uri_path.join("/"))
        };
        assert_eq!(path, row.uri_path, "{}: Uri-Path", row.operation);
        assert_eq!(m.options.uri_query, row.uri_query, "{}: Uri-Query", row.operation);
        assert_eq!(
            m.options.content_format, row.content_format,
            "{}: Content-Format",
            row.operation
        );
        assert_eq!(m.options.accept, row.accept, "{}: Accept", row.operation);
        assert_eq!(m.options.observe, row.observe, "{}: Observe", row.operation);
        if let Some(token) = &token {
            assert_eq!(&m.token, token, "{}: on the observation's token", row.operation);
        }
        check_payload(row, &m, &w.models);
        let outcome = w.answer(id, &m, &response(row, code));
        if code == success {
            match outcome {
                Outcome::Succeeded(r) => {
                    assert_eq!(r.code, code.to_string());
                    if let Some(last) = row.location.last() {
                        assert_eq!(
                            r.location.as_deref(),
                            Some(*last),
                            "{}: the created instance",
                            row.operation
                        );
                    }
                }
                o => panic!("{}: {code} is success, got {o:?}", row.operation),
            }
        } else {
            match outcome {
                Outcome::Failed { code: Some(c), .. } => assert_eq!(c, code.to_string()),
                o => panic!("{}: {code} must fail, got {o:?}", row.operation),
            }
        }
    }
}

fn check_payload(row: &Row, m: &Message, models: &Models) {
    match &row.payload {
        Payload::None => assert!(m.payload.is_empty(), "{}: no payload", row.operation),
        Payload::Text(t) => assert_eq!(m.payload, t.as_bytes(), "{}: payload", row.operation),
        Payload::Names(names) => {
            let mut got = senml::names(row.content_format.expect("a format"), &m.payload).expect("SenML names");
            got.sort();
            let want: Vec<ResourcePath> = names.iter().map(|n| p(n)).collect();
            assert_eq!(got, want, "{}: the names", row.operation);
        }
        Payload::Records(records) => {
            let base = p(row.uri_path);
            let got = content::decode(row.content_format.expect("a format"), &base, &m.payload, models)
                .unwrap_or_else(|e| panic!("{}: the payload decodes: {e}", row.operation));
            let got: Vec<(ResourcePath, Value)> = got.into_iter().map(|r| (r.path, r.value)).collect();
            let want: Vec<(ResourcePath, Value)> = records.iter().map(|(n, v)| (p(n), v.value())).collect();
            assert_eq!(got, want, "{}: the records", row.operation);
        }
    }
}

fn format_name(f: Option<u16>) -> String {
    f.map_or("—".into(), |f| format!("{f} ({})", content::name(f)))
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Fetch => "FETCH",
        Method::Patch => "PATCH",
        Method::IPatch => "iPATCH",
    }
}

/// The rows as the Markdown table in docs/operations.md.
fn render() -> String {
    let mut out = String::from(
        "| operation | method | Uri-Path | Uri-Query | Content-Format | Accept | Observe | payload | success | spec |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in ROWS {
        let Some(method) = r.method else {
            out.push_str(&format!(
                "| {} | — | — | — | — | — | — | — | — | {} |\n",
                r.operation, r.spec
            ));
            continue;
        };
        let payload = match &r.payload {
            Payload::None => "—".to_string(),
            Payload::Text(t) => format!("`{t}`"),
            Payload::Records(rs) => rs
                .iter()
                .map(|(n, v)| format!("`{n}`={v:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            Payload::Names(ns) => format!(
                "names {}",
                ns.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            ),
        };
        let success = r.success.map_or("—".into(), |c| {
            if r.location.is_empty() {
                c.to_string()
            } else {
                format!("{c} + Location-Path `/{}`", r.location.join("/"))
            }
        });
        let query = if r.uri_query.is_empty() {
            "—".to_string()
        } else {
            format!("`{}`", r.uri_query.join("&"))
        };
        out.push_str(&format!(
            "| {} | {} | `{}` | {} | {} | {} | {} | {} | {} | {} |\n",
            r.operation,
            method_name(method),
            r.uri_path,
            query,
            format_name(r.content_format),
            format_name(r.accept),
            r.observe.map_or("—".into(), |o| o.to_string()),
            payload,
            success,
            r.spec
        ));
    }
    out
}

const BEGIN: &str = "<!-- operations table: generated from src/lwm2m/conformance_tests.rs -->\n";
const END: &str = "<!-- end of operations table -->";

#[test]
fn the_docs_table_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md");
    let doc = std::fs::read_to_string(&path).expect("docs/operations.md");
    let start = doc.find(BEGIN).expect("the table's start marker") + BEGIN.len();
    let end = doc.find(END).expect("the table's end marker");
    let want = format!("{}{}{}", &doc[..start], render(), &doc[end..]);
    crate::rendered_docs::assert_current("docs/operations.md", &want);
}

#[test]
fn every_operation_kind_has_a_row() {
    let names: Vec<&str> = ROWS.iter().map(|r| (r.kind)().name()).collect();
    for kind in [
        "read",
        "write",
        "write-composite",
        "execute",
        "create",
        "delete",
        "discover",
        "write-attributes",
        "observe",
        "cancel-observe",
        "read-composite",
        "observe-composite",
        "cancel-observe-composite",
    ] {
        assert!(names.contains(&kind), "no row for {kind}");
    }
}
