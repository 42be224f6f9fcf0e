//! Exchange-layer tests: time is passed in, so every retransmission and
//! expiry path runs in microseconds and deterministically.

use std::time::{Duration, Instant};

use super::*;
use crate::coap::message::Type;

type Ex = Exchanges<u8>;
const DEV: u8 = 7;

fn params() -> Params {
    Params {
        ack_timeout: Duration::from_secs(2),
        ack_random_factor: 1.5,
        max_retransmit: 4,
        nstart: 1,
        block_szx: 2, // 64-byte blocks keep the fixtures small
        max_body_size: 1024,
        response_timeout: Duration::from_secs(30),
        max_peers: 100,
    }
}

fn sent(ex: &mut Ex) -> Vec<Message> {
    std::iter::from_fn(|| ex.poll_transmit())
        .map(|t| Message::decode(&t.bytes).unwrap())
        .collect()
}

fn events(ex: &mut Ex) -> Vec<Event<u8>> {
    std::iter::from_fn(|| ex.poll_event()).collect()
}

fn assert_failed(ex: &mut Ex, id: RequestId, failure: Failure) {
    assert_eq!(events(ex), vec![Event::Failed { id, peer: DEV, failure }]);
}

fn con_request(mid: u16, token: &[u8], r: &Request) -> Vec<u8> {
    Message::request(Type::Con, mid, token.to_vec(), r).encode()
}

fn ack(mid: u16, token: &[u8], r: &Response) -> Vec<u8> {
    Message::response(Type::Ack, mid, token.to_vec(), r).encode()
}

#[test]
fn retransmits_with_backoff_then_times_out() {
    let t0 = Instant::now();
    let mut ex = Ex::new(params(), 1);
    let id = ex.request(t0, DEV, Request::new(Method::Get, "/3/0/9"));
    let first = sent(&mut ex);
    assert_eq!(first.len(), 1);
    let timeout = ex.poll_timeout().unwrap() - t0;
    assert!(
        timeout >= Duration::from_secs(2) && timeout <= Duration::from_secs(3),
        "{timeout:?}"
    );

    let mut now = t0;
    let mut gaps = Vec::new();
    for _ in 0..4 {
        // Skip housekeeping timers: advance to the next instant that transmits.
        let mut again = Vec::new();
        let last = now;
        while again.is_empty() {
            now = ex.poll_timeout().unwrap();
            ex.handle_timeout(now);
            again = sent(&mut ex);
        }
        gaps.push(now - last);
        assert_eq!(again.len(), 1);
        assert_eq!(
            again[0].message_id, first[0].message_id,
            "a retransmission keeps its message id"
        );
    }
    // Each wait doubles (RFC 7252 §4.2).
    for w in gaps.windows(2) {
        let ratio = w[1].as_secs_f64() / w[0].as_secs_f64();
        assert!((ratio - 2.0).abs() < 0.01, "{gaps:?}");
    }
    // MAX_RETRANSMIT reached: the last wait ends in failure, not a 5th copy.
    ex.handle_timeout(now + Duration::from_secs(100));
    assert!(sent(&mut ex).is_empty());
    assert_failed(&mut ex, id, Failure::Timeout);
    assert_eq!(ex.outgoing_count(), 0);
}

#[test]
fn piggybacked_and_separate_responses() {
    let t0 = Instant::now();
    let mut ex = Ex::new(params(), 2);
    let id = ex.request(t0, DEV, Request::new(Method::Get, "/3/0/9"));
    let m = sent(&mut ex).remove(0);
    ex.handle_datagram(
        t0,
        DEV,
        &ack(
            m.message_id,
            &m.token,
            &Response::with_payload(Code::CONTENT, 0, b"87".to_vec()),
        ),
    );
    match events(&mut ex).as_slice() {
        [Event::Response { id: rid, response, .. }] => {
            assert_eq!(*rid, id);
            assert_eq!(response.payload, b"87");
        }
        e => panic!("{e:?}"),
    }

    // Separate: empty ACK first, then a CON response which we must ACK.
    let id = ex.request(t0, DEV, Request::new(Method::Get, "/3/0/0"));
    let m = sent(&mut ex).remove(0);
    ex.handle_datagram(t0, DEV, &Message::empty(Type::Ack, m.message_id).encode());
    assert!(events(&mut ex).is_empty());
    ex.handle_timeout(t0 + Duration::from_secs(20));
    assert!(sent(&mut ex).is_empty(), "no retransmission after the empty ACK");
    let resp = Message::response(
        Type::Con,
        0x4242,
        m.token.clone(),
        &Response::with_payload(Code::CONTENT, 0, b"ACME".to_vec()),
    );
    ex.handle_datagram(t0, DEV, &resp.encode());
    let acks = sent(&mut ex);
    assert_eq!(acks.len(), 1);
    assert_eq!((acks[0].mtype, acks[0].message_id), (Type::Ack, 0x4242));
    assert!(matches!(events(&mut ex).as_slice(), [Event::Response { id: rid, .. }] if *rid == id));
    // The duplicate CON response is ACKed again but not delivered twice.
    ex.handle_datagram(t0, DEV, &resp.encode());
    assert_eq!(sent(&mut ex).len(), 1);
    assert!(events(&mut ex).is_empty());
}

#[test]
fn separate_response_times_out() {
    let t0 = Instant::now();
    let mut ex = Ex::new(params(), 3);
    let id = ex.request(t0, DEV, Request::new(Method::Get, "/3/0/0"));
    let m = sent(&mut ex).remove(0);
    ex.handle_datagram(t0, DEV, &Message::empty(Type::Ack, m.message_id).encode());
    ex.handle_timeout(t0 + Duration::from_secs(31));
    assert_failed(&mut ex, id, Failure::Timeout);
}

#[test]
fn reset_fails_the_request() {
    let t0 = Instant::now();
    let mut ex = Ex::new(params(), 4);
    let id = ex.request(t0, DEV, Request::new(Method::Get, "/3/0/0"));
    let m = sent(&mut ex).remove(0);
    ex.handle_datagram(t0, DEV, &Message::empty(Type::Rst, m.message_id).encode());
    assert_failed(&mut ex, id, Failure::Reset);
}

#[test]
fn nstart_holds_back_the_second_request() {
    let t0 = Instant::now();
    let mut ex = Ex::new(params(), 5);
    ex.request(t0, DEV, Request::new(Method::Get, "/1"));
    ex.request(t0, DEV, Request::new(Method::Get, "/2"));
    ex.request(t0, 8, Request::new(Method::Get, "/other-peer"));
    let out = sent(&mut ex);
    assert_eq!(out.len(), 2, "one per peer while NSTART = 1");
    let first = &out[0];
    ex.handle_datagram(
        t0,
        DEV,
        &ack(first.message_id, &first.token, &Response::new(Code::CONTENT)),
    );
    let next = sent(&mut ex);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].options.uri_path, vec!["2"]);
}

#[test]
fn duplicate_request_gets_the_same_response_once_processed() {
    let t0 = Instant::now();
    let mut ex = Ex::new(params(), 6);
    let req = con_request(0x100, &[1, 2], &Request::new(Method::Post, "/rd"));
    ex.handle_datagram(t0, DEV, &req);
    let Some(Event::Request { id, .. }) = ex.poll_event() else {
        panic!()
    };
    ex.respond(t0, id, Response::new(Code::CREATED));
    let first = sent(&mut ex);
    ex.handle_datagram(t0 + Duration::from_secs(3), DEV, &req);
    assert!(events(&mut ex).is_empty(), "a duplicate is not processed again");
    assert_eq!(sent(&mut ex), first, "but answered with the same response");
}

#[test]
fn block1_reassembly_and_errors() {
    let t0 = Instant::now();
    let mut ex = Ex::new(params(), 7);
    let body: Vec<u8> = (0..150u8).collect();
    let mut mid = 1;
    let mut blocks = Vec::new();
    for num in 0..3u32 {
        let (b, chunk) = BlockValue::slice(&body, num, 2).unwrap();
        let mut r = Request::new(Method::Post, "/rd");
        r.options.block1 = Some(b);
        r.payload = chunk.to_vec();
        blocks.push(r);
    }
    for r in &blocks[..2] {
        ex.handle_datagram(t0, DEV, &con_request(mid, &[mid as u8], r));
        mid += 1;
        let reply = sent(&mut ex).remove(0);
        assert_eq!(Code(reply.code), Code::CONTINUE);
        assert!(reply.options.block1.unwrap().more);
    }
    ex.handle_datagram(t0, DEV, &con_request(mid, &[9], &blocks[2]));
    match ex.poll_event() {
        Some(Event::Request { id, request, .. }) => {
            assert_eq!(request.payload, body);
            ex.respond(t0, id, Response::new(Code::CREATED));
            let reply = sent(&mut ex).remove(0);
            assert_eq!(
                reply.options.block1.map(|b| (b.num, b.more)),
                Some((2, false)),
                "final response echoes Block1"
            );
        }
        e => panic!("{e:?}"),
    }
    // A block out of order: 4.08 Request Entity Incomplete (RFC 7959 §2.3).
    ex.handle_datagram(t0, DEV, &con_request(50, &[1], &blocks[1]));
    assert_eq!(Code(sent(&mut ex)[0].code), Code::REQUEST_ENTITY_INCOMPLETE);
    // A body beyond max_body_size: 4.13 with Size1.
    let mut big = blocks[0].clone();
    big.options.size1 = Some(10_000);
    ex.handle_datagram(t0, DEV, &con_request(51, &[1], &big));
    let reply = sent(&mut ex).remove(0);
    assert_eq!(Code(reply.code), Code::REQUEST_ENTITY_TOO_LARGE);
    assert_eq!(reply.options.size1, Some(1024));
    assert!(events(&mut ex).is_empty());
}

#[test]
fn block2_response_is_reassembled() {
    let t0 = Instant::now();
    let mut ex = Ex::new(params(), 8);
    let body: Vec<u8> = (0..200u8).collect();
    let id = ex.request(t0, DEV, Request::new(Method::Get, "/3/0"));
    let mut m = sent(&mut ex).remove(0);
    for num in 0..4u32 {
        let (b, chunk) = BlockValue::slice(&body, num, 2).unwrap();
        let mut r = Response::with_payload(Code::CONTENT, 112, chunk.to_vec());
        r.options.block2 = Some(b);
        ex.handle_datagram(t0, DEV, &ack(m.message_id, &m.token, &r));
        if b.more {
            m = sent(&mut ex).remove(0);
            assert_eq!(m.options.block2.unwrap().num, num + 1);
        }
    }
    match events(&mut ex).as_slice() {
        [Event::Response { id: rid, response, .. }] => {
            assert_eq!(*rid, id);
            assert_eq!(response.payload, body);
            assert_eq!(response.options.block2, None);
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn block1_request_is_sent_in_blocks() {
    let t0 = Instant::now();
    let mut ex = Ex::new(params(), 9);
    let mut req = Request::new(Method::Put, "/5/0/0");
    req.payload = vec![0xAB; 130];
    let id = ex.request(t0, DEV, req);
    let mut got = Vec::new();
    loop {
        let m = sent(&mut ex).remove(0);
        let b = m.options.block1.unwrap();
        got.extend_from_slice(&m.payload);
        let mut r = Response::new(if b.more { Code::CONTINUE } else { Code::CHANGED });
        r.options.block1 = Some(b);
        ex.handle_datagram(t0, DEV, &ack(m.message_id, &m.token, &r));
        if !b.more {
            break;
        }
    }
    assert_eq!(got, vec![0xAB; 130]);
    assert!(
        matches!(events(&mut ex).as_slice(), [Event::Response { id: rid, response, .. }] if *rid == id && response.code == Code::CHANGED)
    );
}

#[test]
fn observe_notifications_reordering_and_cancel() {
    let t0 = Instant::now();
    let mut ex = Ex::new(params(), 10);
    let mut req = Request::new(Method::Get, "/3303/0/5700");
    req.options.observe = Some(0);
    let id = ex.request(t0, DEV, req);
    let m = sent(&mut ex).remove(0);
    let notif = |seq: u32, v: &str| {
        let mut r = Response::with_payload(Code::CONTENT, 0, v.as_bytes().to_vec());
        r.options.observe = Some(seq);
        r
    };
    ex.handle_datagram(t0, DEV, &ack(m.message_id, &m.token, &notif(5, "20")));
    assert!(matches!(events(&mut ex).as_slice(), [Event::Response { .. }]));
    let non = |mid: u16, r: &Response| Message::response(Type::Non, mid, m.token.clone(), r).encode();
    ex.handle_datagram(t0, DEV, &non(900, &notif(7, "22")));
    ex.handle_datagram(t0, DEV, &non(901, &notif(6, "21"))); // stale: older than 7
    let got: Vec<_> = events(&mut ex)
        .into_iter()
        .map(|e| match e {
            Event::Notification { id: rid, response, .. } if rid == id => String::from_utf8(response.payload).unwrap(),
            e => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(got, ["22"]);
    // 128 s later an "older" number is fresh again (RFC 7641 §3.4).
    ex.handle_datagram(t0 + Duration::from_secs(129), DEV, &non(902, &notif(6, "23")));
    assert_eq!(events(&mut ex).len(), 1);

    // Active cancel: GET with Observe 1 on the same token.
    assert!(ex.cancel_observation(t0, id));
    let c = sent(&mut ex).remove(0);
    assert_eq!((c.options.observe, c.token.clone()), (Some(1), m.token.clone()));
    ex.handle_datagram(
        t0,
        DEV,
        &ack(
            c.message_id,
            &c.token,
            &Response::with_payload(Code::CONTENT, 0, b"24".to_vec()),
        ),
    );
    assert!(matches!(events(&mut ex).as_slice(), [Event::Response { .. }]));
    // Now unknown: a late notification gets RST (passive cancel).
    ex.handle_datagram(
        t0,
        DEV,
        &Message::response(Type::Con, 903, m.token.clone(), &notif(9, "25")).encode(),
    );
    assert_eq!(sent(&mut ex)[0].mtype, Type::Rst);
    assert!(events(&mut ex).is_empty());
}

#[test]
fn malformed_input_never_sticks() {
    let t0 = Instant::now();
    let mut ex = Ex::new(params(), 11);
    // Truncated option on a CON: RST (RFC 7252 §4.2); garbage: dropped.
    ex.handle_datagram(t0, DEV, &[0x40, 0x01, 0x12, 0x34, 0xBD]);
    let out = sent(&mut ex);
    assert_eq!((out[0].mtype, out[0].message_id), (Type::Rst, 0x1234));
    ex.handle_datagram(t0, DEV, &[0xFF, 0xFF]);
    ex.handle_datagram(t0, DEV, &[]);
    assert!(sent(&mut ex).is_empty());
    // CoAP ping gets RST.
    ex.handle_datagram(t0, DEV, &Message::empty(Type::Con, 77).encode());
    assert_eq!(sent(&mut ex)[0].mtype, Type::Rst);
    // An absurd block number is refused, not allocated.
    let mut r = Request::new(Method::Post, "/rd");
    r.options.block1 = Some(BlockValue {
        num: BlockValue::MAX_NUM,
        more: true,
        szx: 6,
    });
    r.payload = vec![1; 16];
    ex.handle_datagram(t0, DEV, &con_request(78, &[1], &r));
    assert_eq!(Code(sent(&mut ex)[0].code), Code::REQUEST_ENTITY_INCOMPLETE);
    assert!(events(&mut ex).is_empty());
}

#[test]
fn slow_application_gets_an_empty_ack_then_a_separate_response() {
    let t0 = Instant::now();
    let mut ex = Ex::new(params(), 12);
    ex.handle_datagram(t0, DEV, &con_request(5, &[3], &Request::new(Method::Post, "/rd")));
    let Some(Event::Request { id, .. }) = ex.poll_event() else {
        panic!()
    };
    ex.handle_timeout(t0 + Duration::from_secs(1));
    let a = sent(&mut ex);
    assert_eq!((a[0].mtype, a[0].code), (Type::Ack, 0));
    ex.respond(t0 + Duration::from_secs(2), id, Response::new(Code::CREATED));
    let r = sent(&mut ex).remove(0);
    assert_eq!((r.mtype, r.token.clone()), (Type::Con, vec![3]));
    // Retransmitted until ACKed.
    ex.handle_timeout(t0 + Duration::from_secs(6));
    assert_eq!(sent(&mut ex)[0].message_id, r.message_id);
    ex.handle_datagram(
        t0 + Duration::from_secs(6),
        DEV,
        &Message::empty(Type::Ack, r.message_id).encode(),
    );
    ex.handle_timeout(t0 + Duration::from_secs(100));
    assert!(sent(&mut ex).is_empty());
}

#[test]
fn peer_state_is_capped_under_a_flood() {
    let t0 = Instant::now();
    let mut ex = Exchanges::<u32>::new(params(), 13);
    let req = con_request(1, &[1], &Request::new(Method::Post, "/rd"));
    for peer in 0..1000u32 {
        ex.handle_datagram(t0, peer, &req);
        while let Some(Event::Request { id, .. }) = ex.poll_event() {
            ex.respond(t0, id, Response::new(Code::NOT_FOUND));
        }
    }
    assert_eq!(ex.peer_count(), 100, "state for at most max_peers peers");
    assert_eq!(
        std::iter::from_fn(|| ex.poll_transmit()).count(),
        1000,
        "every request was still answered"
    );
}
