//! Server-core tests: the sans-I/O server and sans-I/O simulated clients
//! joined by an in-memory network, with simulated time. Hours of device
//! life (lifetimes, queue-mode sleep, deadlines) run in milliseconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::coap::Params;
use crate::config::Config;
use crate::lwm2m::content;
use crate::lwm2m::operation::{OperationState, WriteValue};
use crate::lwm2m::path::Value;
use crate::sim::{Client, DeviceConfig};

struct Net {
    server: Server<u8>,
    clients: Vec<Client>,
    /// Clients whose radio is "unplugged": their traffic is lost both ways.
    dead: Vec<bool>,
    /// The peer address each client appears from (changes on NAT rebinding).
    alias: Vec<u8>,
    t0: Instant,
    now: Instant,
    events: Vec<ServerEvent<u8>>,
    next_op: OperationId,
}

/// MAX_RETRANSMIT 2: an unanswered request fails after 14–21 s.
fn fast_params() -> Params {
    Params {
        ack_timeout: Duration::from_secs(2),
        max_retransmit: 2,
        ..Params::default()
    }
}

/// The server's idea of the queue-mode awake window, matched by devices.
const AWAKE: Duration = Duration::from_secs(5);

impl Net {
    fn new(configs: Vec<DeviceConfig>) -> Net {
        let mut config = Config::default();
        config.lwm2m.queue_awake_window_s = AWAKE.as_secs();
        let models = Arc::new(Models::embedded());
        let server = Server::new(
            Exchanges::new(fast_params(), 1),
            ServerConfig::from_config(&config.lwm2m),
            models.clone(),
            2,
        );
        let t0 = Instant::now();
        let clients: Vec<Client> = configs
            .into_iter()
            .enumerate()
            .map(|(i, c)| Client::new(c, models.clone(), i as u64 + 10))
            .collect();
        let n = clients.len();
        let mut net = Net {
            server,
            clients,
            dead: vec![false; n],
            alias: (0..n as u8).collect(),
            t0,
            now: t0,
            events: Vec::new(),
            next_op: 1,
        };
        for c in &mut net.clients {
            c.start(t0);
        }
        net.pump();
        net
    }

    fn now(&self) -> Now {
        Now {
            mono: self.now,
            unix_ms: 1_800_000_000_000 + (self.now - self.t0).as_millis() as i64,
        }
    }

    /// Move datagrams until nothing is in flight at this instant.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            let now = self.now();
            for (i, c) in self.clients.iter_mut().enumerate() {
                while let Some(bytes) = c.poll_transmit(now.mono) {
                    moved = true;
                    if !self.dead[i] {
                        self.server.handle_datagram(now, self.alias[i], &bytes);
                    }
                }
            }
            while let Some(t) = self.server.poll_transmit() {
                moved = true;
                // A datagram to an address nobody has any more is lost.
                if let Some(i) = self.alias.iter().position(|a| *a == t.peer)
                    && !self.dead[i]
                {
                    self.clients[i].handle_datagram(now.mono, &t.bytes);
                }
            }
            while let Some(e) = self.server.poll_event() {
                self.events.push(e);
            }
            if !moved {
                return;
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        loop {
            let next = self
                .clients
                .iter()
                .filter_map(Client::poll_timeout)
                .chain(self.server.poll_timeout())
                .min()
                .filter(|t| *t <= target);
            let Some(t) = next else {
                break;
            };
            self.now = t.max(self.now);
            let now = self.now();
            self.server.handle_timeout(now);
            for c in &mut self.clients {
                c.handle_timeout(now.mono);
            }
            self.pump();
        }
        self.now = target;
        self.pump();
    }

    fn enqueue(&mut self, endpoint: &str, kind: OperationKind) -> OperationId {
        let id = self.next_op;
        self.next_op += 1;
        let now = self.now();
        let op = Operation {
            id,
            endpoint: endpoint.into(),
            kind,
            deadline: now.unix_ms + 3_600_000,
            attempts: 0,
            max_attempts: 3,
        };
        self.server.enqueue(now, op);
        self.pump();
        id
    }

    fn take_events(&mut self) -> Vec<ServerEvent<u8>> {
        std::mem::take(&mut self.events)
    }

    fn outcome(&self, id: OperationId) -> Option<&Outcome> {
        self.events.iter().rev().find_map(|e| match e {
            ServerEvent::OperationFinished { id: i, outcome, .. } if *i == id => Some(outcome),
            _ => None,
        })
    }

    fn sent_count(&self, id: OperationId) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, ServerEvent::OperationSent { id: i, .. } if *i == id))
            .count()
    }
}

fn device(name: &str) -> DeviceConfig {
    let mut c = DeviceConfig::new(name);
    c.lifetime = 60;
    c.update_interval = Duration::from_secs(50);
    c.notify_interval = Duration::from_secs(5);
    c.awake_window = AWAKE;
    c.params = fast_params();
    c
}

fn p(s: &str) -> ResourcePath {
    s.parse().unwrap()
}

#[test]
fn registration_life_cycle() {
    let mut net = Net::new(vec![device("dev-a")]);
    assert!(net.clients[0].is_registered());
    let reg = net.server.registration("dev-a").unwrap().clone();
    assert_eq!(reg.version, "1.1");
    assert_eq!(reg.preferred_format(), content::SENML_CBOR);
    assert!(reg.objects().contains(&p("/3303/0")));
    assert!(matches!(
        net.take_events().as_slice(),
        [ServerEvent::Registered { replaced: None, .. }]
    ));

    net.advance(Duration::from_secs(51));
    let updated = net
        .take_events()
        .iter()
        .filter(|e| matches!(e, ServerEvent::Updated { .. }))
        .count();
    assert_eq!(updated, 1);
    assert_eq!(
        net.server.registration("dev-a").unwrap().id,
        reg.id,
        "an Update keeps the registration"
    );

    net.clients[0].deregister(net.now);
    net.pump();
    assert!(net.server.registration("dev-a").is_none());
    assert!(matches!(
        net.take_events().as_slice(),
        [ServerEvent::Deregistered { .. }]
    ));
}

#[test]
fn silent_device_expires_after_lifetime_and_grace() {
    let mut net = Net::new(vec![device("dev-b")]);
    net.dead[0] = true;
    net.advance(Duration::from_secs(60 + 14));
    assert!(net.server.registration("dev-b").is_some());
    net.advance(Duration::from_secs(3));
    assert!(net.server.registration("dev-b").is_none());
    assert!(
        net.take_events()
            .iter()
            .any(|e| matches!(e, ServerEvent::Expired { endpoint, .. } if endpoint == "dev-b"))
    );
}

#[test]
fn reregistration_replaces_and_update_of_unknown_gets_404() {
    let mut net = Net::new(vec![device("dev-c")]);
    let first = net.server.registration("dev-c").unwrap().id;
    // Reboot: the client registers again.
    let id = net.enqueue(
        "dev-c",
        OperationKind::Execute {
            path: p("/3/0/4"),
            args: None,
        },
    );
    net.advance(Duration::from_secs(1));
    assert!(matches!(net.outcome(id), Some(Outcome::Succeeded(_))));
    let second = net.server.registration("dev-c").unwrap().id;
    assert_ne!(first, second);
    assert!(
        net.events
            .iter()
            .any(|e| matches!(e, ServerEvent::Registered { replaced: Some(r), .. } if *r == first))
    );

    // The server forgets the client (as after a crash inside the persist
    // window); its next Update gets 4.04 and it registers again.
    net.server.remove_registration(second);
    net.take_events();
    net.advance(Duration::from_secs(51));
    let ev = net.take_events();
    assert!(
        ev.iter()
            .any(|e| matches!(e, ServerEvent::Rejected { code, .. } if *code == Code::NOT_FOUND))
    );
    assert!(ev.iter().any(|e| matches!(e, ServerEvent::Registered { .. })));
    assert!(net.server.registration("dev-c").is_some());
}

#[test]
fn device_management_operations() {
    let mut net = Net::new(vec![device("dev-d")]);
    let read = net.enqueue("dev-d", OperationKind::Read { path: p("/3/0/9") });
    match net.outcome(read) {
        Some(Outcome::Succeeded(r)) => assert_eq!(r.records[0].value, Value::Integer(87)),
        o => panic!("{o:?}"),
    }
    assert!(net.events.iter().any(|e| matches!(
        e,
        ServerEvent::ValuesReported {
            source: Source::Read,
            ..
        }
    )));

    let write = net.enqueue(
        "dev-d",
        OperationKind::Write {
            path: p("/1/0/1"),
            values: vec![WriteValue {
                path: p("/1/0/1"),
                value: "120".into(),
            }],
            replace: None,
        },
    );
    assert!(matches!(net.outcome(write), Some(Outcome::Succeeded(_))));
    assert_eq!(net.clients[0].value(&p("/1/0/1")), Some(&Value::Integer(120)));

    // Writing a read-only resource: the device's 4.05 is a failure with its code.
    let bad = net.enqueue(
        "dev-d",
        OperationKind::Write {
            path: p("/3/0/0"),
            values: vec![WriteValue {
                path: p("/3/0/0"),
                value: "x".into(),
            }],
            replace: None,
        },
    );
    match net.outcome(bad) {
        Some(Outcome::Failed { code, .. }) => assert_eq!(code.as_deref(), Some("4.05")),
        o => panic!("{o:?}"),
    }
    let missing = net.enqueue("dev-d", OperationKind::Read { path: p("/9999/0") });
    assert!(matches!(net.outcome(missing), Some(Outcome::Failed { code: Some(c), .. }) if c == "4.04"));

    let disc = net.enqueue("dev-d", OperationKind::Discover { path: p("/3303") });
    match net.outcome(disc) {
        Some(Outcome::Succeeded(r)) => {
            assert!(r.links.as_deref().unwrap().contains("</3303/0/5700>"))
        }
        o => panic!("{o:?}"),
    }
    let create = net.enqueue(
        "dev-d",
        OperationKind::Create {
            path: p("/3303"),
            values: vec![WriteValue {
                path: p("/3303/1/5700"),
                value: "1.5".into(),
            }],
        },
    );
    assert!(matches!(net.outcome(create), Some(Outcome::Succeeded(r)) if r.location.as_deref() == Some("1")));
    assert_eq!(net.clients[0].value(&p("/3303/1/5700")), Some(&Value::Float(1.5)));
    let delete = net.enqueue("dev-d", OperationKind::Delete { path: p("/3303/1") });
    assert!(matches!(net.outcome(delete), Some(Outcome::Succeeded(_))));
    assert_eq!(net.clients[0].value(&p("/3303/1/5700")), None);

    let security = net.enqueue("dev-d", OperationKind::Read { path: p("/0/0") });
    assert!(matches!(net.outcome(security), Some(Outcome::Failed { code: Some(c), .. }) if c == "4.01"));
    assert!(
        !net.server
            .registration("dev-d")
            .unwrap()
            .objects()
            .iter()
            .any(|o| o.object() == Some(0))
    );

    let attrs = net.enqueue(
        "dev-d",
        OperationKind::WriteAttributes {
            path: p("/3303/0/5700"),
            attributes: vec!["pmin=1".into()],
        },
    );
    assert!(matches!(net.outcome(attrs), Some(Outcome::Succeeded(_))));
    let comp = net.enqueue(
        "dev-d",
        OperationKind::ReadComposite {
            paths: vec![p("/3/0/9"), p("/3304/0/5700")],
        },
    );
    match net.outcome(comp) {
        Some(Outcome::Succeeded(r)) => assert_eq!(r.records.len(), 2),
        o => panic!("{o:?}"),
    }
}

#[test]
fn observe_stores_notifications_and_cancel_ends_them() {
    let mut net = Net::new(vec![device("dev-e")]);
    let obs = net.enqueue(
        "dev-e",
        OperationKind::Observe {
            path: p("/3303/0/5700"),
        },
    );
    assert!(matches!(net.outcome(obs), Some(Outcome::Succeeded(_))));
    net.take_events();
    net.advance(Duration::from_secs(16));
    let notified = net
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, ServerEvent::ValuesReported { source: Source::Notification, records, .. } if records[0].path == p("/3303/0/5700")))
        .count();
    assert_eq!(notified, 3, "one notification per 5 s");

    let cancel = net.enqueue(
        "dev-e",
        OperationKind::CancelObserve {
            path: p("/3303/0/5700"),
        },
    );
    assert!(matches!(net.outcome(cancel), Some(Outcome::Succeeded(_))));
    net.take_events();
    net.advance(Duration::from_secs(16));
    assert!(!net.take_events().iter().any(|e| matches!(
        e,
        ServerEvent::ValuesReported {
            source: Source::Notification,
            ..
        }
    )));

    let again = net.enqueue(
        "dev-e",
        OperationKind::CancelObserve {
            path: p("/3303/0/5700"),
        },
    );
    assert!(
        matches!(net.outcome(again), Some(Outcome::Failed { .. })),
        "nothing to cancel"
    );
}

#[test]
fn send_is_stored() {
    let mut c = device("dev-f");
    c.send_interval = Some(Duration::from_secs(10));
    let mut net = Net::new(vec![c]);
    net.advance(Duration::from_secs(11));
    assert!(net.events.iter().any(|e| matches!(e, ServerEvent::ValuesReported { source: Source::Send, records, .. } if records[0].path == p("/3303/0/5700"))));
}

#[test]
fn queue_mode_waits_for_the_device_then_delivers_in_order() {
    let mut c = device("dev-q");
    c.queue_mode = true;
    let mut net = Net::new(vec![c]);
    assert!(net.server.registration("dev-q").unwrap().queue_mode);
    net.advance(Duration::from_secs(10)); // asleep now
    let a = net.enqueue("dev-q", OperationKind::Read { path: p("/3/0/9") });
    let b = net.enqueue(
        "dev-q",
        OperationKind::Write {
            path: p("/1/0/1"),
            values: vec![WriteValue {
                path: p("/1/0/1"),
                value: "90".into(),
            }],
            replace: None,
        },
    );
    assert_eq!(net.sent_count(a), 0, "nothing is sent to a sleeping device");
    assert_eq!(net.server.queued_count("dev-q"), 2);
    // The periodic Update at 50 s wakes it: both go out, in order, once each.
    net.advance(Duration::from_secs(41));
    assert!(matches!(net.outcome(a), Some(Outcome::Succeeded(_))));
    assert!(matches!(net.outcome(b), Some(Outcome::Succeeded(_))));
    assert_eq!((net.sent_count(a), net.sent_count(b)), (1, 1));
    let order: Vec<OperationId> = net
        .events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::OperationFinished { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec![a, b]);
}

#[test]
fn deadline_expires_queued_operation() {
    let mut c = device("dev-x");
    c.queue_mode = true;
    let mut net = Net::new(vec![c]);
    net.advance(Duration::from_secs(10));
    let now = net.now();
    net.server.enqueue(
        now,
        Operation {
            id: 77,
            endpoint: "dev-x".into(),
            kind: OperationKind::Read { path: p("/3/0/9") },
            deadline: now.unix_ms + 5000,
            attempts: 0,
            max_attempts: 3,
        },
    );
    net.advance(Duration::from_secs(7));
    assert_eq!(net.outcome(77).map(Outcome::state), Some(OperationState::Expired));
    assert_eq!(net.sent_count(77), 0);
    net.advance(Duration::from_secs(40));
    assert_eq!(net.sent_count(77), 0, "an expired operation never goes out");
}

#[test]
fn unanswered_operation_is_retried_on_next_wake_never_concurrently() {
    let mut c = device("dev-r");
    c.queue_mode = true;
    let mut net = Net::new(vec![c]);
    // The device stops hearing us right after registering (e.g. PSM came early).
    net.dead[0] = true;
    let id = net.enqueue("dev-r", OperationKind::Read { path: p("/3/0/9") });
    assert_eq!(net.sent_count(id), 1);
    net.advance(Duration::from_secs(25)); // past MAX_TRANSMIT_WAIT (≤ 21 s here)
    assert!(
        net.events
            .iter()
            .any(|e| matches!(e, ServerEvent::OperationRequeued { id: i, .. } if *i == id))
    );
    assert!(net.outcome(id).is_none());
    assert_eq!(net.sent_count(id), 1, "not re-sent while the device sleeps");
    net.dead[0] = false;
    net.advance(Duration::from_secs(30)); // the Update at 50 s wakes it
    assert!(matches!(net.outcome(id), Some(Outcome::Succeeded(_))));
    assert_eq!(net.sent_count(id), 2);
}

#[test]
fn bad_registrations_are_refused_with_the_right_code() {
    use crate::coap::{Message, Type};
    let mut net = Net::new(vec![device("dev-z")]);
    let now = net.now();
    let cases: Vec<(Request, Code)> = vec![
        ({ Request::new(Method::Post, "/rd") }, Code::BAD_REQUEST),
        (
            {
                let mut r = Request::new(Method::Post, "/rd");
                r.options.uri_query = vec!["ep=x".into(), "lt=0".into()];
                r
            },
            Code::BAD_REQUEST,
        ),
        (
            {
                let mut r = Request::new(Method::Post, "/rd");
                r.options.uri_query = vec!["ep=x".into()];
                r.options.content_format = Some(content::SENML_JSON);
                r.payload = b"[]".to_vec();
                r
            },
            Code::UNSUPPORTED_CONTENT_FORMAT,
        ),
        (
            {
                let mut r = Request::new(Method::Post, "/rd");
                r.options.uri_query = vec!["ep=x".into()];
                r.payload = b"<1/0".to_vec();
                r
            },
            Code::BAD_REQUEST,
        ),
        ({ Request::new(Method::Post, "/rd/ffffffffffff") }, Code::NOT_FOUND),
        ({ Request::new(Method::Delete, "/rd/nonsense") }, Code::NOT_FOUND),
        ({ Request::new(Method::Get, "/rd") }, Code::METHOD_NOT_ALLOWED),
        ({ Request::new(Method::Get, "/elsewhere") }, Code::NOT_FOUND),
        (
            {
                let mut r = Request::new(Method::Post, "/dp");
                r.options.content_format = Some(content::SENML_CBOR);
                r.payload = vec![0xFF];
                r
            },
            Code::NOT_FOUND,
        ), // peer 9 never registered
    ];
    for (i, (req, code)) in cases.into_iter().enumerate() {
        let bytes = Message::request(Type::Con, 1000 + i as u16, vec![i as u8], &req).encode();
        net.server.handle_datagram(now, 9, &bytes);
        let reply = Message::decode(&net.server.poll_transmit().unwrap().bytes).unwrap();
        assert_eq!(Code(reply.code), code, "case {i}: {req:?}");
    }
    // A registered peer's garbage Send is a 4.00, not a crash.
    let mut r = Request::new(Method::Post, "/dp");
    r.options.content_format = Some(content::SENML_CBOR);
    r.payload = vec![0x9F, 0xFF, 0x00];
    net.server
        .handle_datagram(now, 0, &Message::request(Type::Con, 2000, vec![1], &r).encode());
    let reply = Message::decode(&net.server.poll_transmit().unwrap().bytes).unwrap();
    assert_eq!(Code(reply.code), Code::BAD_REQUEST);
    assert!(net.server.registration("dev-z").is_some());
}

#[test]
fn observations_follow_a_nat_rebinding() {
    let mut net = Net::new(vec![device("dev-nat")]);
    let obs = net.enqueue(
        "dev-nat",
        OperationKind::Observe {
            path: p("/3304/0/5700"),
        },
    );
    assert!(matches!(net.outcome(obs), Some(Outcome::Succeeded(_))));
    assert!(
        net.events
            .iter()
            .any(|e| matches!(e, ServerEvent::ObservationStarted { .. }))
    );
    // The NAT gives the device a new address; its next Update carries it.
    net.alias[0] = 200;
    net.advance(Duration::from_secs(51));
    assert_eq!(net.server.registration("dev-nat").unwrap().peer, 200);
    net.take_events();
    net.advance(Duration::from_secs(11));
    let notified = net
        .take_events()
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                ServerEvent::ValuesReported {
                    source: Source::Notification,
                    ..
                }
            )
        })
        .count();
    assert_eq!(notified, 2, "notifications from the new address are accepted");
    // Reads go to the new address too.
    let read = net.enqueue("dev-nat", OperationKind::Read { path: p("/3/0/9") });
    assert!(matches!(net.outcome(read), Some(Outcome::Succeeded(_))));
}

#[test]
fn lwm2m_1_0_client_gets_tlv() {
    let mut c = device("dev-tlv");
    c.version = "1.0".into();
    c.format = content::TLV;
    let mut net = Net::new(vec![c]);
    let reg = net.server.registration("dev-tlv").unwrap().clone();
    assert_eq!((reg.version.as_str(), reg.announced_format), ("1.0", None));
    assert_eq!(reg.preferred_format(), content::TLV);
    let read = net.enqueue("dev-tlv", OperationKind::Read { path: p("/3/0") });
    match net.outcome(read) {
        Some(Outcome::Succeeded(r)) => {
            // TLV is typed through the object model.
            assert!(r.records.contains(&Record {
                path: p("/3/0/9"),
                value: Value::Integer(87),
                time: None
            }));
            assert!(
                r.records
                    .iter()
                    .any(|x| x.path == p("/3/0/13") && x.value == Value::Time(1_700_000_000))
            );
        }
        o => panic!("{o:?}"),
    }
    let write = net.enqueue(
        "dev-tlv",
        OperationKind::Write {
            path: p("/1/0"),
            values: vec![WriteValue {
                path: p("/1/0/1"),
                value: "77".into(),
            }],
            replace: None,
        },
    );
    assert!(matches!(net.outcome(write), Some(Outcome::Succeeded(_))));
    assert_eq!(net.clients[0].value(&p("/1/0/1")), Some(&Value::Integer(77)));
}

#[test]
fn sessions_speak_only_for_their_endpoint_and_keyed_endpoints_need_one() {
    use crate::coap::{Message, Type};
    // Client 0 comes over a session bound to its own endpoint; client 1
    // over one bound to another endpoint; both endpoints have keys.
    let mut net = Net::new(vec![]);
    net.server
        .set_keyed_endpoints(["sec-a".to_string(), "sec-b".to_string()].into_iter().collect());
    net.server.session_established(7, "sec-a".into());
    net.server.session_established(8, "sec-b".into());
    let now = net.now();
    let register = |ep: &str, mid: u16| {
        let mut r = Request::new(Method::Post, "/rd");
        r.options.uri_query = vec![format!("ep={ep}"), "lt=300".into()];
        r.payload = b"</1/0>".to_vec();
        Message::request(Type::Con, mid, mid.to_be_bytes().to_vec(), &r).encode()
    };
    let reply = |net: &mut Net, peer: u8, bytes: Vec<u8>| {
        net.server.handle_datagram(now, peer, &bytes);
        Message::decode(&net.server.poll_transmit().unwrap().bytes).unwrap()
    };
    // Impersonation over a session, and a keyed endpoint over plain CoAP.
    assert_eq!(Code(reply(&mut net, 8, register("sec-a", 1)).code), Code::FORBIDDEN);
    assert_eq!(Code(reply(&mut net, 3, register("sec-a", 2)).code), Code::FORBIDDEN);
    // Its own endpoint: created; endpoints without a key still work in plain.
    let created = reply(&mut net, 7, register("sec-a", 3));
    assert_eq!(Code(created.code), Code::CREATED);
    assert_eq!(Code(reply(&mut net, 3, register("plain", 4)).code), Code::CREATED);
    // Nobody else may update or de-register sec-a's registration.
    let location = format!("/{}", created.options.location_path.join("/"));
    for (peer, method, mid) in [(8u8, Method::Post, 5u16), (3, Method::Delete, 6)] {
        let bytes = Message::request(Type::Con, mid, vec![mid as u8], &Request::new(method, &location)).encode();
        assert_eq!(Code(reply(&mut net, peer, bytes).code), Code::FORBIDDEN, "peer {peer}");
    }
    assert!(net.server.registration("sec-a").is_some());
    // A new session of the same device (after a NAT rebinding) may update it.
    net.server.session_established(9, "sec-a".into());
    let bytes = Message::request(Type::Con, 7, vec![7], &Request::new(Method::Post, &location)).encode();
    assert_eq!(Code(reply(&mut net, 9, bytes).code), Code::CHANGED);
    assert_eq!(net.server.registration("sec-a").unwrap().peer, 9);
}

#[test]
fn every_refusal_is_answered_but_only_a_bounded_number_a_second_become_events() {
    use crate::coap::{Message, Type};
    let mut net = Net::new(vec![]);
    let n = REJECTIONS_PER_SECOND as u16 * 3;
    let get = |mid: u16| {
        Message::request(
            Type::Con,
            mid,
            mid.to_be_bytes().to_vec(),
            &Request::new(Method::Get, "/nothing"),
        )
        .encode()
    };
    let refuse_all = |net: &mut Net, first_mid: u16| {
        let now = net.now();
        for mid in first_mid..first_mid + n {
            net.server.handle_datagram(now, 5, &get(mid));
            let answer = Message::decode(&net.server.poll_transmit().expect("every request is answered").bytes);
            assert_eq!(Code(answer.unwrap().code), Code::NOT_FOUND);
        }
        std::iter::from_fn(|| net.server.poll_event())
            .filter(|e| matches!(e, ServerEvent::Rejected { code, .. } if *code == Code::NOT_FOUND))
            .count()
    };
    assert_eq!(refuse_all(&mut net, 100), REJECTIONS_PER_SECOND as usize);
    // Within the same second: nothing more reaches the event log.
    net.now += Duration::from_millis(900);
    assert_eq!(refuse_all(&mut net, 1000), 0);
    // A new second, a new allowance.
    net.now += Duration::from_millis(200);
    assert_eq!(refuse_all(&mut net, 2000), REJECTIONS_PER_SECOND as usize);
}

#[test]
fn composite_write_and_composite_observation_with_its_cancellation() {
    let mut net = Net::new(vec![device("dev-comp")]);
    let write = net.enqueue(
        "dev-comp",
        OperationKind::WriteComposite {
            values: vec![
                WriteValue {
                    path: p("/1/0/1"),
                    value: "90".into(),
                },
                WriteValue {
                    path: p("/3303/0/5750"),
                    value: "boiler".into(),
                },
            ],
        },
    );
    assert!(matches!(net.outcome(write), Some(Outcome::Succeeded(_))));
    assert_eq!(net.clients[0].value(&p("/1/0/1")), Some(&Value::Integer(90)));
    assert_eq!(
        net.clients[0].value(&p("/3303/0/5750")),
        Some(&Value::String("boiler".into()))
    );

    let paths = vec![p("/3303/0/5700"), p("/3304/0/5700")];
    let obs = net.enqueue("dev-comp", OperationKind::ObserveComposite { paths: paths.clone() });
    assert!(matches!(net.outcome(obs), Some(Outcome::Succeeded(_))));
    assert_eq!(net.clients[0].observations(), 1);
    net.take_events();
    net.advance(Duration::from_secs(11));
    let notified = |events: &[ServerEvent<u8>]| {
        events
            .iter()
            .filter(|e| matches!(e, ServerEvent::ValuesReported { source: Source::Notification, records, .. } if records.len() == 2))
            .count()
    };
    assert_eq!(notified(&net.take_events()), 2, "one composite notification per 5 s");
    // Named in another order, it is the same observation.
    let cancel = net.enqueue(
        "dev-comp",
        OperationKind::CancelObserveComposite {
            paths: vec![paths[1], paths[0]],
        },
    );
    assert!(matches!(net.outcome(cancel), Some(Outcome::Succeeded(_))));
    assert!(
        net.events
            .iter()
            .any(|e| matches!(e, ServerEvent::ObservationEnded { .. }))
    );
    assert_eq!(
        net.clients[0].observations(),
        0,
        "the device dropped it (RFC 7641 §3.6)"
    );
    net.take_events();
    net.advance(Duration::from_secs(11));
    assert_eq!(notified(&net.take_events()), 0, "the device stopped notifying");
    let again = net.enqueue("dev-comp", OperationKind::CancelObserveComposite { paths });
    assert!(matches!(net.outcome(again), Some(Outcome::Failed { code: None, .. })));
}

/// A Register from `peer` (peers below 128 share one source address) for
/// `endpoint`; the server's answer.
fn register_from(server: &mut Server<u8>, now: Now, peer: u8, mid: u16, endpoint: &str) -> crate::coap::Message {
    use crate::coap::message::{Message, Type};
    let mut req = Request::new(Method::Post, "/rd");
    req.options.uri_query = vec![format!("ep={endpoint}"), "lt=300".into()];
    req.options.content_format = Some(content::LINK_FORMAT);
    req.payload = b"</3/0>".to_vec();
    let bytes = Message::request(Type::Con, mid, mid.to_be_bytes().to_vec(), &req).encode();
    server.handle_datagram(now, peer, &bytes);
    Message::decode(&server.poll_transmit().expect("an answer").bytes).unwrap()
}

/// The accept policy admits unprovisioned endpoints within the per-source
/// limits: new names beyond the rate get 4.29 with Max-Age (RFC 8516 §3),
/// beyond the count 4.03; provisioned endpoints from the same address, and
/// other addresses, are not held back; a De-register frees a place.
#[test]
fn unprovisioned_endpoints_are_admitted_within_per_source_limits() {
    let mut config = Config::default();
    config.lwm2m.unprovisioned_per_source = 4;
    config.lwm2m.unprovisioned_per_source_per_min = 3;
    let mut server = Server::new(
        Exchanges::new(fast_params(), 1),
        ServerConfig::from_config(&config.lwm2m),
        Arc::new(Models::embedded()),
        2,
    );
    server.set_known_endpoints(["provisioned".to_string()].into());
    let t0 = Instant::now();
    let at = |s: u64| Now {
        mono: t0 + Duration::from_secs(s),
        unix_ms: 1_800_000_000_000 + s as i64 * 1000,
    };
    let code = |m: &crate::coap::Message| Code(m.code);
    for (i, ep) in ["inv-0", "inv-1", "inv-2"].iter().enumerate() {
        assert_eq!(
            code(&register_from(&mut server, at(0), i as u8, i as u16, ep)),
            Code::CREATED
        );
    }
    let refused = register_from(&mut server, at(0), 3, 3, "inv-3");
    assert_eq!(code(&refused), Code::TOO_MANY_REQUESTS);
    assert_eq!(refused.options.max_age, Some(20), "a token every 20 s at 3 a minute");
    // The same name again costs nothing; a provisioned one from the same
    // address is not counted; another address has limits of its own.
    assert_eq!(code(&register_from(&mut server, at(0), 0, 4, "inv-0")), Code::CREATED);
    assert_eq!(
        code(&register_from(&mut server, at(0), 5, 5, "provisioned")),
        Code::CREATED
    );
    assert_eq!(
        code(&register_from(&mut server, at(0), 200, 6, "elsewhere")),
        Code::CREATED
    );
    // Twenty seconds later one token is back: the fourth place is taken.
    assert_eq!(code(&register_from(&mut server, at(20), 3, 7, "inv-3")), Code::CREATED);
    let full = register_from(&mut server, at(80), 6, 8, "inv-4");
    assert_eq!(code(&full), Code::FORBIDDEN, "four places held");
    assert!(String::from_utf8_lossy(&full.payload).contains("lwm2m.unprovisioned_per_source"));
    // inv-1 de-registers: its place is free again.
    let id = server.registration("inv-1").unwrap().id.to_string();
    let mut bye = Request::new(Method::Delete, &format!("/rd/{id}"));
    bye.options.uri_query.clear();
    let bytes = crate::coap::message::Message::request(crate::coap::message::Type::Con, 9, vec![9], &bye).encode();
    server.handle_datagram(at(80), 1, &bytes);
    assert_eq!(
        Code(
            crate::coap::message::Message::decode(&server.poll_transmit().unwrap().bytes)
                .unwrap()
                .code
        ),
        Code::DELETED
    );
    assert_eq!(code(&register_from(&mut server, at(80), 6, 10, "inv-4")), Code::CREATED);
    let c = server.admission_counters();
    assert_eq!((c.admitted, c.refused_too_fast, c.refused_too_many), (6, 1, 1));
}

/// Issue 32 item 1: a firmware GET on the LwM2M port from a source that
/// neither registered nor holds a DTLS session is refused without a
/// download token, answered in blocks that keep the answer within three
/// times the request with one, and rate-limited per source; a registered
/// device's GET goes to the firmware server as it asked.
#[test]
fn firmware_gets_from_unverified_sources_cannot_amplify() {
    use crate::coap::{Message, Type};
    let mut net = Net::new(vec![]);
    let now = net.now();
    let get = |mid: u16, query: &[&str]| {
        let mut r = Request::new(Method::Get, "/binaries/app.bin");
        r.options.uri_query = query.iter().map(|q| q.to_string()).collect();
        Message::request(Type::Con, mid, mid.to_be_bytes().to_vec(), &r).encode()
    };
    // No token: a bare 4.01, smaller than the request.
    let probe = get(1, &[]);
    net.server.handle_datagram(now, 200, &probe);
    let answer = net.server.poll_transmit().expect("answered").bytes;
    assert_eq!(Code(Message::decode(&answer).unwrap().code), Code::UNAUTHORIZED);
    assert!(answer.len() <= probe.len(), "{} > {}", answer.len(), probe.len());
    assert!(net.server.poll_firmware_request().is_none());

    // With a token: handed on, asking for a block that fits 3x.
    let token = "t=1796700000.c2VjcmV0LXRva2VuLWJ5dGVzLWZvci10ZXN0aW5n";
    let with_token = get(2, &[token]);
    net.server.handle_datagram(now, 201, &with_token);
    let fr = net
        .server
        .poll_firmware_request()
        .expect("handed to the firmware server");
    let block = fr.request.options.block2.expect("a block size chosen");
    let most = with_token.len() * crate::coap::amplification::FACTOR;
    assert!(
        (1usize << (block.szx + 4)) + crate::coap::amplification::ANSWER_OVERHEAD + 2 <= most,
        "a {}-byte block answers a {}-byte request",
        1 << (block.szx + 4),
        with_token.len()
    );
    assert_eq!(block.num, 0);
    // A block number that has none at the smaller size: a bare 4.02.
    let mut far = Request::new(Method::Get, "/binaries/app.bin");
    far.options.uri_query = vec![token.to_string()];
    far.options.block2 = Some(crate::coap::block::BlockValue {
        num: crate::coap::block::BlockValue::MAX_NUM,
        more: false,
        szx: 6,
    });
    net.server
        .handle_datagram(now, 203, &Message::request(Type::Con, 3, vec![3], &far).encode());
    let answer = Message::decode(&net.server.poll_transmit().expect("answered").bytes).unwrap();
    assert_eq!(Code(answer.code), Code::BAD_OPTION);

    // Past the per-source rate (100 a second by default): not answered at
    // all, and the retransmission of one is taken anew once the rate
    // allows (not swallowed as a duplicate).
    let rate = Config::default().lwm2m.unverified_firmware_gets_per_s as u16;
    let mut handed = 0;
    for mid in 10..10 + rate * 2 {
        net.server.handle_datagram(now, 202, &get(mid, &[token]));
        while net.server.poll_firmware_request().is_some() {
            handed += 1;
        }
    }
    assert!(net.server.poll_transmit().is_none(), "nothing sent past the rate");
    assert_eq!(handed, rate);
    let c = net.server.unverified_counters();
    assert_eq!((c.refused, c.rate_limited), (1, u64::from(rate)));
    let later = Now {
        mono: now.mono + Duration::from_secs(1),
        ..now
    };
    net.server
        .handle_datagram(later, 202, &get(10 + rate * 2 - 1, &[token]));
    assert!(
        net.server.poll_firmware_request().is_some(),
        "a retransmission is served"
    );

    // A registered device asks for what it likes, from any port of its
    // address (Zephyr pulls firmware through a socket of its own).
    assert_eq!(
        Code(register_from(&mut net.server, now, 7, 500, "dev-fw").code),
        Code::CREATED
    );
    for peer in [7, 8] {
        net.server.handle_datagram(now, peer, &get(600 + u16::from(peer), &[]));
        let fr = net.server.poll_firmware_request().expect("a registered address's GET");
        assert!(fr.request.options.block2.is_none(), "its request untouched");
    }
}
