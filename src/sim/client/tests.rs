//! The simulator answers raw requests as Zephyr's engine does: what a
//! server sends wrongly fails here as it would on a device.

use std::sync::Arc;
use std::time::Instant;

use super::{Client, DeviceConfig};
use crate::coap::{Code, Message, Method, Request, Response, Type};
use crate::lwm2m::content::{self, senml};
use crate::lwm2m::model::Models;
use crate::lwm2m::path::{Record, ResourcePath, Value};

fn p(s: &str) -> ResourcePath {
    s.parse().unwrap()
}

struct Device {
    client: Client,
    now: Instant,
    mid: u16,
}

impl Device {
    fn new() -> Device {
        let models = Arc::new(Models::embedded());
        Device {
            client: Client::new(DeviceConfig::new("strict"), models, 1),
            now: Instant::now(),
            mid: 0,
        }
    }

    /// Send `req` as the server would (CON, piggybacked answer expected).
    fn ask(&mut self, req: &Request) -> Response {
        self.mid += 1;
        let token = vec![1, 2, self.mid as u8];
        let bytes = Message::request(Type::Con, self.mid, token.clone(), req).encode();
        self.client.handle_datagram(self.now, &bytes);
        let answer = self.client.poll_transmit(self.now).expect("an answer");
        let m = Message::decode(&answer).expect("decodes");
        assert_eq!((m.mtype, m.message_id, &m.token), (Type::Ack, self.mid, &token));
        m.into_response()
    }

    fn code(&mut self, req: &Request) -> Code {
        self.ask(req).code
    }
}

fn request(method: Method, path: &str) -> Request {
    Request::new(method, path)
}

fn with_payload(method: Method, path: &str, cf: u16, records: &[Record]) -> Request {
    let mut r = Request::new(method, path);
    r.options.content_format = Some(cf);
    r.payload = content::encode(cf, &p(path), records, &Models::embedded()).unwrap();
    r
}

fn record(path: &str, value: Value) -> Record {
    Record {
        path: p(path),
        value,
        time: None,
    }
}

#[test]
fn a_post_on_a_resource_is_an_execute_not_a_write() {
    let mut d = Device::new();
    // The bug of the last round: a Write sent as POST /1/0/1 with a payload.
    // Zephyr (and so this client) reads it as Execute of /1/0/1, which is
    // not executable: refused, and the value is unchanged.
    let post = with_payload(
        Method::Post,
        "/1/0/1",
        content::SENML_CBOR,
        &[record("/1/0/1", Value::Integer(120))],
    );
    assert_eq!(d.code(&post), Code::METHOD_NOT_ALLOWED);
    assert_eq!(d.client.value(&p("/1/0/1")), Some(&Value::Integer(300)));
    // The same write as a PUT is a Write-Replace.
    let put = with_payload(
        Method::Put,
        "/1/0/1",
        content::SENML_CBOR,
        &[record("/1/0/1", Value::Integer(120))],
    );
    assert_eq!(d.code(&put), Code::CHANGED);
    assert_eq!(d.client.value(&p("/1/0/1")), Some(&Value::Integer(120)));
    // A POST on an executable resource executes it; on an instance it is a
    // Partial Update; on an object a Create.
    assert_eq!(d.code(&request(Method::Post, "/3/0/4")), Code::CHANGED);
    let partial = with_payload(
        Method::Post,
        "/1/0",
        content::SENML_CBOR,
        &[record("/1/0/3", Value::Integer(5))],
    );
    assert_eq!(d.code(&partial), Code::CHANGED);
    assert_eq!(d.client.value(&p("/1/0/3")), Some(&Value::Integer(5)));
    assert_eq!(d.client.value(&p("/1/0/1")), Some(&Value::Integer(120)), "untouched");
}

#[test]
fn writes_the_target_does_not_allow_are_refused() {
    let mut d = Device::new();
    let put = |path: &str, v: Value| with_payload(Method::Put, path, content::SENML_CBOR, &[record(path, v)]);
    // Read-only resource: 4.05 (Zephyr's EPERM).
    assert_eq!(
        d.code(&put("/3/0/0", Value::String("x".into()))),
        Code::METHOD_NOT_ALLOWED
    );
    // A resource the object does not define, an instance the device lacks: 4.04.
    assert_eq!(d.code(&put("/3/0/999", Value::Integer(1))), Code::NOT_FOUND);
    assert_eq!(d.code(&put("/1/7/1", Value::Integer(1))), Code::NOT_FOUND);
    // A value of the wrong type: 4.00.
    assert_eq!(d.code(&put("/1/0/1", Value::String("soon".into()))), Code::BAD_REQUEST);
    // A PUT with a Content-Format on an object path: 4.05.
    let mut object = put("/1/0/1", Value::Integer(60));
    object.options.uri_path = vec!["1".into()];
    assert_eq!(d.code(&object), Code::METHOD_NOT_ALLOWED);
    // Execute of something not executable, a Delete of a resource: 4.05.
    assert_eq!(d.code(&request(Method::Post, "/3/0/9")), Code::METHOD_NOT_ALLOWED);
    assert_eq!(
        d.code(&request(Method::Delete, "/3303/0/5700")),
        Code::METHOD_NOT_ALLOWED
    );
    // Read of an executable resource: 4.05; of an unknown object: 4.04.
    assert_eq!(d.code(&request(Method::Get, "/3/0/4")), Code::METHOD_NOT_ALLOWED);
    assert_eq!(d.code(&request(Method::Get, "/9999/0")), Code::NOT_FOUND);
    assert_eq!(d.code(&request(Method::Get, "/3/x")), Code::NOT_FOUND);
    // The root outside the composite operations, and the Security object.
    assert_eq!(d.code(&request(Method::Get, "/")), Code::METHOD_NOT_ALLOWED);
    assert_eq!(d.code(&request(Method::Get, "/0/0")), Code::UNAUTHORIZED);
    assert_eq!(
        d.client.value(&p("/3/0/0")),
        Some(&Value::String("Nordic Semiconductor ASA".into()))
    );
}

#[test]
fn formats_it_cannot_read_or_write_are_refused() {
    let mut d = Device::new();
    let mut put = Request::new(Method::Put, "/1/0/1");
    put.options.content_format = Some(50); // application/json
    put.payload = b"120".to_vec();
    assert_eq!(d.code(&put), Code::UNSUPPORTED_CONTENT_FORMAT);
    let mut read = request(Method::Get, "/3/0/9");
    read.options.accept = Some(50);
    assert_eq!(d.code(&read), Code::NOT_ACCEPTABLE);
    // text/plain answers a single resource, not an instance.
    read.options.accept = Some(content::TEXT_PLAIN);
    assert_eq!(d.ask(&read).payload, b"87");
    read.options.uri_path = vec!["3".into(), "0".into()];
    assert_eq!(d.code(&read), Code::NOT_ACCEPTABLE);
    // Write-Composite only in SenML.
    let mut ipatch = Request::new(Method::IPatch, "/");
    ipatch.options.content_format = Some(content::TLV);
    ipatch.payload = vec![0xC1, 0x01, 0x05];
    assert_eq!(d.code(&ipatch), Code::UNSUPPORTED_CONTENT_FORMAT);
}

#[test]
fn a_put_without_content_format_is_write_attributes() {
    let mut d = Device::new();
    let mut attrs = request(Method::Put, "/3303/0/5700");
    attrs.options.uri_query = vec!["pmin=10".into(), "pmax=60".into(), "gt".into()];
    assert_eq!(d.code(&attrs), Code::CHANGED);
    attrs.options.uri_query = vec!["pmin=soon".into()];
    assert_eq!(d.code(&attrs), Code::BAD_REQUEST);
    attrs.options.uri_query = vec!["colour=red".into()];
    assert_eq!(d.code(&attrs), Code::BAD_REQUEST);
    // A value without Content-Format is not a Write: the value stays.
    let mut bare = request(Method::Put, "/1/0/1");
    bare.payload = b"120".to_vec();
    assert_eq!(d.code(&bare), Code::BAD_REQUEST);
    assert_eq!(d.client.value(&p("/1/0/1")), Some(&Value::Integer(300)));
}

#[test]
fn composite_write_is_all_or_nothing_and_composite_observe_cancels() {
    let mut d = Device::new();
    let ipatch = |records: &[Record]| with_payload(Method::IPatch, "/", content::SENML_CBOR, records);
    let ok = ipatch(&[
        record("/1/0/1", Value::Integer(90)),
        record("/3303/0/5750", Value::String("boiler".into())),
    ]);
    assert_eq!(d.code(&ok), Code::CHANGED);
    assert_eq!(d.client.value(&p("/1/0/1")), Some(&Value::Integer(90)));
    let half_bad = ipatch(&[
        record("/1/0/1", Value::Integer(91)),
        record("/3/0/0", Value::String("x".into())),
    ]);
    assert_eq!(d.code(&half_bad), Code::METHOD_NOT_ALLOWED);
    assert_eq!(
        d.client.value(&p("/1/0/1")),
        Some(&Value::Integer(90)),
        "nothing written"
    );

    let mut fetch = Request::new(Method::Fetch, "/");
    fetch.options.content_format = Some(content::SENML_CBOR);
    fetch.options.accept = Some(content::SENML_CBOR);
    fetch.options.observe = Some(0);
    fetch.payload = senml::encode_cbor_names(&[p("/3303/0/5700")]);
    // The same token for the observation and its cancellation (RFC 7641 §3.6).
    let token = vec![9, 9];
    let send = |d: &mut Device, r: &Request| {
        d.mid += 1;
        d.client
            .handle_datagram(d.now, &Message::request(Type::Con, d.mid, token.clone(), r).encode());
        Message::decode(&d.client.poll_transmit(d.now).unwrap())
            .unwrap()
            .into_response()
    };
    let first = send(&mut d, &fetch);
    assert_eq!((first.code, first.options.observe), (Code::CONTENT, Some(0)));
    assert_eq!(d.client.observations(), 1);
    fetch.options.observe = Some(1);
    let cancelled = send(&mut d, &fetch);
    assert_eq!((cancelled.code, cancelled.options.observe), (Code::CONTENT, None));
    assert_eq!(d.client.observations(), 0);
}
