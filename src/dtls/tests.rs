//! Session table tests: rtc-dtls clients against [`Sessions`] in memory,
//! datagrams passed by hand, time passed in.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::client::{Client, client_config};
use super::*;
use crate::psk::Psk;

const SERVER: &str = "192.0.2.10:5684";

fn limits() -> Limits {
    Limits {
        max_sessions: 1000,
        max_handshakes: 8,
        handshake_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(600),
        hellos_per_source_per_s: 0,
        cookie_rotation: Duration::from_secs(60),
        cipher_suites: CIPHER_SUITES.to_vec(),
    }
}

fn keys() -> Arc<PskKeys> {
    PskKeys::new([
        (
            "urn:imei:1".to_string(),
            Psk::from_hex("dev1", "000102030405060708090a0b0c0d0e0f").unwrap(),
        ),
        (
            "urn:imei:2".to_string(),
            Psk::from_hex("dev2", "ffeeddccbbaa99887766554433221100").unwrap(),
        ),
    ])
}

fn client(now: Instant, identity: &str, key_hex: &str, suite: CipherSuiteId) -> Client {
    let key = crate::lwm2m::path::hex_bytes::decode(key_hex).unwrap();
    Client::connect(
        now,
        SERVER.parse().unwrap(),
        client_config(identity, &key, &[suite]).unwrap(),
    )
    .unwrap()
}

/// Move datagrams both ways until neither side has anything to send.
/// Returns how many datagrams the server sent.
fn pump(now: Instant, server: &mut Sessions, from: SocketAddr, c: &mut Client) -> usize {
    let mut sent = 0;
    loop {
        let mut moved = false;
        while let Some(d) = c.poll_transmit() {
            server.handle_datagram(now, from, &d);
            moved = true;
        }
        while let Some(t) = server.poll_transmit() {
            assert_eq!(t.to, from);
            c.handle_datagram(now, &t.datagram);
            sent += 1;
            moved = true;
        }
        if !moved {
            return sent;
        }
    }
}

fn events(server: &mut Sessions) -> Vec<SessionEvent> {
    std::iter::from_fn(|| server.poll_event()).collect()
}

/// The device "dev1" with its right key, offering CCM_8.
fn dev1(t: Instant) -> Client {
    client(
        t,
        "dev1",
        "000102030405060708090a0b0c0d0e0f",
        CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8,
    )
}

/// The device "dev2" completes a handshake from `from`.
fn assert_dev2_gets_in(t: Instant, server: &mut Sessions, from: &str) {
    let mut c = client(
        t,
        "dev2",
        "ffeeddccbbaa99887766554433221100",
        CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8,
    );
    pump(t, server, from.parse().unwrap(), &mut c);
    assert!(c.is_established(), "dev2 from {from}");
}

/// `server` with dev1's session from `from` established.
fn establish_dev1(t: Instant, server: &mut Sessions, from: &str) -> (SocketAddr, Client, SessionId) {
    let from: SocketAddr = from.parse().unwrap();
    let mut c = dev1(t);
    pump(t, server, from, &mut c);
    match &events(server)[..] {
        [SessionEvent::Established { session, .. }] => (from, c, *session),
        e => panic!("{e:?}"),
    }
}

#[test]
fn psk_handshake_with_one_cookie_exchange_then_data_both_ways() {
    let t = Instant::now();
    let mut server = Sessions::new(t, 0, keys(), limits()).unwrap();
    for suite in CIPHER_SUITES {
        let from: SocketAddr = "198.51.100.1:40000".parse().unwrap();
        let mut c = client(t, "dev1", "000102030405060708090a0b0c0d0e0f", suite);
        // ClientHello → our HelloVerifyRequest, with no session kept.
        let hello = c.poll_transmit().unwrap();
        server.handle_datagram(t, from, &hello);
        assert_eq!(server.len(), 0, "{suite}: no state before the cookie returns");
        let hvr = server.poll_transmit().unwrap();
        c.handle_datagram(t, &hvr.datagram);
        // The rest: ServerHello…Done, then CCS+Finished: two datagrams.
        assert_eq!(pump(t, &mut server, from, &mut c), 2, "{suite}");
        assert!(c.is_established(), "{suite}");
        let ev = events(&mut server);
        let SessionEvent::Established { session, addr, binding } = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!((*addr, &*binding.endpoint), (from, "urn:imei:1"));
        assert_eq!(
            server.counters.hello_verify_requests,
            server.counters.handshakes_started
        );

        assert!(c.send(t, b"coap request"));
        pump(t, &mut server, from, &mut c);
        assert_eq!(
            events(&mut server),
            vec![SessionEvent::Data {
                session: *session,
                addr: from,
                payload: b"coap request".to_vec()
            }]
        );
        assert!(server.send(t, *session, b"coap response"));
        pump(t, &mut server, from, &mut c);
        assert_eq!(c.poll_received().unwrap(), b"coap response");
        server.close(t, *session);
        assert_eq!(events(&mut server), vec![SessionEvent::Closed { session: *session }]);
        // close_notify, an encrypted alert record (content type 21).
        assert_eq!(server.poll_transmit().map(|t| t.datagram[0]), Some(21));
    }
}

#[test]
fn wrong_key_and_unknown_identity_fail_alike_and_leave_nothing() {
    let t = Instant::now();
    let mut server = Sessions::new(t, 0, keys(), limits()).unwrap();
    for (n, (id, key)) in [
        ("dev1", "00000000000000000000000000000000"),
        ("nobody", "000102030405060708090a0b0c0d0e0f"),
    ]
    .into_iter()
    .enumerate()
    {
        let from = SocketAddr::from(([198, 51, 100, 2], 40000 + n as u16));
        let mut c = client(t, id, key, CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8);
        pump(t, &mut server, from, &mut c);
        assert!(!c.is_established(), "{id}");
        // The same on the wire; for the server's operators, a provisioned
        // device's wrong key names it (issue 31), a stranger does not.
        let evs = events(&mut server);
        match id {
            "dev1" => assert!(
                matches!(&evs[..], [SessionEvent::KeyRefused { endpoint, identity, addr }]
                    if &**endpoint == "urn:imei:1" && &**identity == b"dev1" && *addr == from),
                "{evs:?}"
            ),
            _ => assert!(evs.is_empty(), "{id}: {evs:?}"),
        }
        assert_eq!(server.len(), 0, "{id}: the failed session is gone");
    }
    assert_eq!(server.counters.handshakes_failed, 2);
    // And a good client still gets in.
    assert_dev2_gets_in(t, &mut server, "198.51.100.2:41000");
}

#[test]
fn forged_records_do_not_close_an_established_session() {
    let t = Instant::now();
    let mut server = Sessions::new(t, 0, keys(), limits()).unwrap();
    let (from, mut c, _) = establish_dev1(t, &mut server, "198.51.100.3:40000");
    // An application-data record, epoch 1, that does not authenticate.
    let mut forged = vec![23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 9, 0, 24];
    forged.extend_from_slice(&[0x55; 24]);
    server.handle_datagram(t, from, &forged);
    server.handle_datagram(t, from, b"\x00garbage");
    assert!(server.poll_transmit().is_none(), "no alert for forged records");
    assert_eq!(server.len(), 1);
    assert!(c.send(t, b"still here"));
    pump(t, &mut server, from, &mut c);
    assert!(matches!(&events(&mut server)[..], [SessionEvent::Data { payload, .. }] if payload == b"still here"));
}

#[test]
fn half_open_handshakes_are_capped_and_time_out() {
    let t = Instant::now();
    let mut server = Sessions::new(t, 0, keys(), limits()).unwrap();
    // Stalled clients: they return the cookie and then go silent.
    let stall = |server: &mut Sessions, now: Instant, from: SocketAddr| {
        let mut c = client(now, "dev1", "00", CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8);
        server.handle_datagram(now, from, &c.poll_transmit().unwrap());
        c.handle_datagram(now, &server.poll_transmit().unwrap().datagram);
        server.handle_datagram(now, from, &c.poll_transmit().unwrap());
        while server.poll_transmit().is_some() {}
        assert!(server.handshakes() <= limits().max_handshakes);
    };
    // An attacker's address holds at most an eighth of the table (here 1).
    for port in 0..20 {
        stall(&mut server, t, SocketAddr::from(([203, 0, 113, 1], 20_000 + port)));
    }
    assert_eq!((server.handshakes(), server.counters.dropped), (1, 19));
    // A real device gets in beside it.
    assert_dev2_gets_in(t, &mut server, "198.51.100.4:40000");

    // A storm of real devices, one handshake per address: at the cap a
    // newcomer waits (dropped; it retransmits) rather than evict the young.
    let mut storm = Sessions::new(t, 0, keys(), limits()).unwrap();
    for i in 0..9u8 {
        stall(&mut storm, t, SocketAddr::from(([198, 51, 100, 100 + i], 5683)));
    }
    assert_eq!(
        (
            storm.handshakes(),
            storm.counters.handshakes_evicted,
            storm.counters.dropped
        ),
        (8, 0, 1)
    );
    // Once the oldest has stalled, it makes room.
    stall(
        &mut storm,
        t + Duration::from_secs(6),
        "198.51.100.200:5683".parse().unwrap(),
    );
    assert_eq!((storm.handshakes(), storm.counters.handshakes_evicted), (8, 1));

    // The stalled ones expire at the deadline; the established one stays.
    let later = t + Duration::from_secs(31);
    server.handle_timeout(later);
    assert_eq!((server.handshakes(), server.len()), (0, 1));
    // … until it has been idle too long.
    server.handle_timeout(later + Duration::from_secs(600));
    assert_eq!(server.len(), 0);
}

#[test]
fn spoofed_hellos_keep_no_state_and_are_rate_limited_per_source() {
    let t = Instant::now();
    let mut l = limits();
    l.hellos_per_source_per_s = 10;
    let mut server = Sessions::new(t, 0, keys(), l).unwrap();
    let hello = record::tests::client_hello_record(0, 0, &[]);
    for port in 0..1000u16 {
        server.handle_datagram(t, SocketAddr::from(([203, 0, 113, 9], port)), &hello);
    }
    assert_eq!(server.len(), 0);
    // Burst of twice the rate from the one source, then nothing.
    assert_eq!(server.counters.hello_verify_requests, 20);
    assert_eq!(server.counters.rate_limited, 980);
    // Another source is not affected, and the first recovers with time.
    server.handle_datagram(t, "203.0.113.10:1".parse().unwrap(), &hello);
    server.handle_datagram(t + Duration::from_secs(1), "203.0.113.9:1".parse().unwrap(), &hello);
    assert_eq!(server.counters.hello_verify_requests, 22);
}

#[test]
fn a_client_that_lost_its_session_handshakes_again_and_a_rotated_key_closes() {
    let t = Instant::now();
    let keys = keys();
    let mut server = Sessions::new(t, 0, keys.clone(), limits()).unwrap();
    let (from, _, first) = establish_dev1(t, &mut server, "198.51.100.5:40000");
    // Rebooted device, same address: a new handshake replaces the session.
    let mut c2 = dev1(t);
    pump(t, &mut server, from, &mut c2);
    assert!(c2.is_established());
    let ev = events(&mut server);
    assert_eq!(ev[0], SessionEvent::Closed { session: first });
    let SessionEvent::Established { session: second, .. } = ev[1] else {
        panic!("{ev:?}")
    };
    assert_ne!(first, second);
    assert_eq!(server.len(), 1);

    keys.replace([("urn:imei:1".to_string(), Psk::from_hex("dev1", "99").unwrap())]);
    server.keys_changed(t);
    assert_eq!(events(&mut server), vec![SessionEvent::Closed { session: second }]);
    let close_notify = server.poll_transmit().unwrap();
    assert_eq!(close_notify.to, from);
}

#[test]
fn established_sessions_refuse_replays_and_serve_after_long_silence() {
    let t = Instant::now();
    let mut server = Sessions::new(t, 0, keys(), limits()).unwrap();
    let (from, mut c, session) = establish_dev1(t, &mut server, "198.51.100.6:40000");
    assert!(c.send(t, b"register"));
    let recorded = c.poll_transmit().unwrap();
    server.handle_datagram(t, from, &recorded);
    assert_eq!(events(&mut server).len(), 1);

    // A replay of the recorded datagram is dropped, not delivered, now and
    // after the session has been quiet for a long time.
    let dropped = server.counters.dropped;
    server.handle_datagram(t, from, &recorded);
    let later = t + Duration::from_secs(300);
    server.handle_timeout(later);
    server.handle_datagram(later, from, &recorded);
    assert!(events(&mut server).is_empty(), "replayed");
    assert_eq!(server.counters.dropped, dropped + 2);

    // The device's next uplink, and the server writing first (a queued
    // operation), both work on the same session.
    assert!(c.send(later, b"update"));
    pump(later, &mut server, from, &mut c);
    assert_eq!(
        events(&mut server),
        vec![SessionEvent::Data {
            session,
            addr: from,
            payload: b"update".to_vec()
        }]
    );
    assert!(server.send(later, session, b"read /3/0"));
    pump(later, &mut server, from, &mut c);
    assert_eq!(c.poll_received().unwrap(), b"read /3/0");

    // Idle past coaps.session_idle_timeout_s: forgotten.
    server.handle_timeout(later + Duration::from_secs(601));
    assert_eq!(events(&mut server), vec![SessionEvent::Closed { session }]);
    assert!(server.is_empty());
}

#[test]
fn a_lost_last_flight_is_sent_again_when_the_client_repeats_its_own() {
    let t = Instant::now();
    let mut server = Sessions::new(t, 0, keys(), limits()).unwrap();
    let from: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let mut c = dev1(t);
    // Cookie exchange, then ServerHello…Done.
    for _ in 0..2 {
        server.handle_datagram(t, from, &c.poll_transmit().unwrap());
        c.handle_datagram(t, &server.poll_transmit().unwrap().datagram);
    }
    // The client's final flight completes the server's handshake; the
    // server's ChangeCipherSpec and Finished are lost.
    let final_flight = c.poll_transmit().unwrap();
    server.handle_datagram(t, from, &final_flight);
    assert!(matches!(&events(&mut server)[..], [SessionEvent::Established { .. }]));
    assert!(server.poll_transmit().is_some());
    assert!(!c.is_established());

    // A byte-for-byte replay of that flight is a replay, not a repeat
    // (RFC 6347 §4.1.2.6): its records were seen, nothing is sent back.
    server.handle_datagram(t, from, &final_flight);
    assert!(
        server.poll_transmit().is_none(),
        "a replayed Finished must not draw our flight again"
    );
    assert!(events(&mut server).is_empty());

    // The client's timer repeats its flight (new record numbers); the
    // server answers with its last flight again, and the client is in.
    let t1 = t + Duration::from_secs(1);
    assert_eq!(c.poll_timeout(), Some(t1));
    c.handle_timeout(t1);
    assert_eq!(pump(t1, &mut server, from, &mut c), 1);
    assert!(c.is_established());
    assert!(c.send(t1, b"register"));
    pump(t1, &mut server, from, &mut c);
    assert!(matches!(&events(&mut server)[..], [SessionEvent::Data { payload, .. }] if payload == b"register"));

    // Once the client has sent data, a repeat of its flight is no longer
    // answered.
    c.handle_timeout(t1 + Duration::from_secs(2));
    assert!(c.poll_transmit().is_none(), "established: no more retransmissions");
}
