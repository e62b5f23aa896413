//! Connections that stay open: WebSocket sessions through a guest's
//! `websocket` export (with a real WebSocket client), and response bodies
//! streamed as the guest writes them.

use crate::support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::{
    TestServer, demo_root, fault_guest, noise, plain_guest, read_head, test_limits,
};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};
use wasmhttpd::Limits;

type Client = WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

/// The default guest on the demo root.
fn default_server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| TestServer::static_files(&demo_root()))
}

/// The fault guest, with a short guest timeout for the loop and sleep cases.
fn fault_server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        TestServer::faults(Limits {
            guest_timeout: Duration::from_secs(2),
            ..test_limits()
        })
    })
}

fn connect(addr: SocketAddr, path: &str) -> Client {
    let (socket, response) =
        tungstenite::connect(format!("ws://{addr}{path}")).expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    if let tungstenite::stream::MaybeTlsStream::Plain(stream) = socket.get_ref() {
        stream
            .set_read_timeout(Some(support::CLIENT_TIMEOUT))
            .unwrap();
    }
    socket
}

/// The next data message, skipping control frames.
fn next_data(socket: &mut Client) -> Message {
    loop {
        match socket.read().expect("read a message") {
            Message::Ping(_) | Message::Pong(_) => continue,
            message => return message,
        }
    }
}

/// Reads until the server's close frame; returns its code and reason.
fn close_frame(socket: &mut Client) -> (CloseCode, String) {
    loop {
        match socket.read() {
            Ok(Message::Close(Some(frame))) => return (frame.code, frame.reason.to_string()),
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(_) => continue,
            Err(err) => panic!("connection ended without a close frame: {err}"),
        }
    }
}

#[test]
fn a_thousand_text_messages_come_back_in_order() {
    let mut socket = connect(default_server().addr, "/ws/echo");
    for i in 0..1000 {
        socket.send(Message::text(format!("message {i}"))).unwrap();
    }
    for i in 0..1000 {
        assert_eq!(
            next_data(&mut socket),
            Message::text(format!("message {i}"))
        );
    }
    socket.close(None).unwrap();
}

#[test]
fn binary_messages_up_to_a_mib_come_back_byte_for_byte() {
    let mut socket = connect(default_server().addr, "/ws/echo");
    for (i, len) in [0, 1, 125, 126, 65_535, 65_536, 300_001, 1 << 20]
        .into_iter()
        .enumerate()
    {
        let data = noise(len, i as u64 + 7);
        socket.send(Message::binary(data.clone())).unwrap();
        match next_data(&mut socket) {
            Message::Binary(echo) => assert!(echo == data, "{len} bytes differ"),
            other => panic!("{len}: expected binary, got {other:?}"),
        }
    }
}

#[test]
fn unicode_text_is_kept_exactly() {
    let mut socket = connect(default_server().addr, "/ws/echo");
    for text in [
        "héllo wörld",
        "日本語のテキスト",
        "🦀 crabs and 👩‍👩‍👧 families",
        "e\u{301} combining, \u{200b} zero width, \u{feff} BOM",
        "",
    ] {
        socket.send(Message::text(text)).unwrap();
        assert_eq!(next_data(&mut socket), Message::text(text));
    }
}

#[test]
fn pings_get_pongs_with_the_same_payload() {
    let mut socket = connect(default_server().addr, "/ws/echo");
    socket
        .send(Message::Ping(b"are you there"[..].into()))
        .unwrap();
    match socket.read().unwrap() {
        Message::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    // The session carries on.
    socket.send(Message::text("after the ping")).unwrap();
    assert_eq!(next_data(&mut socket), Message::text("after the ping"));
}

#[test]
fn the_server_answers_a_close_with_the_same_code() {
    for (code, reason) in [
        (CloseCode::Normal, "done"),
        (CloseCode::Away, "page closed"),
        (CloseCode::Library(4000), "application code"),
    ] {
        let mut socket = connect(default_server().addr, "/ws/echo");
        socket
            .close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }))
            .unwrap();
        assert_eq!(close_frame(&mut socket).0, code);
        // Then the server ends the connection.
        match socket.read() {
            Err(tungstenite::Error::ConnectionClosed) => {}
            other => panic!("expected the end, got {other:?}"),
        }
    }
}

#[test]
fn a_message_over_the_limit_closes_with_1009() {
    let mut socket = connect(default_server().addr, "/ws/echo");
    let limit = wasmhttpd::config::DEFAULT_WS_MAX_MESSAGE;
    // Exactly the limit is fine.
    socket.send(Message::binary(vec![b'x'; limit])).unwrap();
    match next_data(&mut socket) {
        Message::Binary(echo) => assert_eq!(echo.len(), limit),
        other => panic!("expected binary, got {other:?}"),
    }
    socket.send(Message::binary(vec![b'x'; limit + 1])).unwrap();
    assert_eq!(close_frame(&mut socket).0, CloseCode::Size);
}

#[test]
fn a_message_split_in_frames_counts_whole_against_the_limit() {
    let server = TestServer::start(wasmhttpd::Config {
        limits: Limits {
            ws_max_message: 1000,
            ..test_limits()
        },
        ..wasmhttpd::Config::new(demo_root())
    });
    let mut stream = handshake(server.addr, "/ws/echo");
    // Two continuation frames of 600 bytes: each under the limit, together over it.
    stream
        .write_all(&client_frame(0x2, false, &[1; 600]))
        .unwrap();
    stream
        .write_all(&client_frame(0x0, true, &[2; 600]))
        .unwrap();
    let (opcode, payload) = server_frame(&mut stream);
    assert_eq!(opcode, 0x8, "a close frame");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1009);
}

#[test]
fn a_refused_path_is_404() {
    let response = raw_upgrade(default_server().addr, "/ws/nothing-here", "13");
    assert_eq!(response.status, 404);
    assert_eq!(response.header("connection"), Some("close"));
}

#[test]
fn a_wrong_version_is_426_naming_13() {
    for version in ["8", "12", "14"] {
        let response = raw_upgrade(default_server().addr, "/ws/echo", version);
        assert_eq!(response.status, 426, "{version}");
        assert_eq!(response.header("sec-websocket-version"), Some("13"));
    }
}

#[test]
fn a_malformed_handshake_is_400() {
    let addr = default_server().addr;
    let without_key = "GET /ws/echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
                       Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n";
    assert_eq!(
        support::exchange_at(addr, without_key.as_bytes()).status,
        400
    );
    let short_key = "GET /ws/echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\n\
                     Sec-WebSocket-Version: 13\r\n\r\n";
    assert_eq!(support::exchange_at(addr, short_key.as_bytes()).status, 400);
    let post = "POST /ws/echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
                Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                Sec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(support::exchange_at(addr, post.as_bytes()).status, 400);
}

#[test]
fn two_hundred_sessions_at_once() {
    let server = default_server();
    let mut sockets: Vec<Client> = (0..200).map(|_| connect(server.addr, "/ws/echo")).collect();
    for (i, socket) in sockets.iter_mut().enumerate() {
        socket.send(Message::text(format!("session {i}"))).unwrap();
    }
    assert!(server.monitor.websocket_sessions() >= 200);
    for (i, socket) in sockets.iter_mut().enumerate() {
        assert_eq!(next_data(socket), Message::text(format!("session {i}")));
    }
    for socket in &mut sockets {
        socket
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .unwrap();
        assert_eq!(close_frame(socket).0, CloseCode::Normal);
    }
}

#[test]
fn a_failing_guest_closes_its_session_with_1011_and_no_other() {
    let server = fault_server();
    let mut bystander = connect(server.addr, "/ws/echo");
    for fault in ["trap", "alloc", "loop", "sleep"] {
        let mut victim = connect(server.addr, "/ws/echo");
        victim.send(Message::text("before")).unwrap();
        assert_eq!(next_data(&mut victim), Message::text("before"));
        victim.send(Message::text(fault)).unwrap();
        assert_eq!(close_frame(&mut victim).0, CloseCode::Error, "{fault}");
        bystander
            .send(Message::text(format!("still here after {fault}")))
            .unwrap();
        assert_eq!(
            next_data(&mut bystander),
            Message::text(format!("still here after {fault}"))
        );
    }
}

#[test]
fn a_session_keeps_its_instance_and_may_answer_with_any_number_of_messages() {
    let server = fault_server();
    let mut socket = connect(server.addr, "/ws/echo");
    for expected in ["1", "2", "3"] {
        socket.send(Message::text("count")).unwrap();
        assert_eq!(next_data(&mut socket), Message::text(expected));
    }
    socket.send(Message::text("many 3")).unwrap();
    for i in 0..3 {
        assert_eq!(next_data(&mut socket), Message::text(format!("reply {i}")));
    }
    // Zero replies: the next message read answers the one after.
    socket.send(Message::text("many 0")).unwrap();
    socket.send(Message::text("count")).unwrap();
    assert_eq!(next_data(&mut socket), Message::text("6"));
    // Another session starts from a fresh instance.
    let mut other = connect(server.addr, "/ws/echo");
    other.send(Message::text("count")).unwrap();
    assert_eq!(next_data(&mut other), Message::text("1"));
}

#[test]
fn the_guest_picks_the_subprotocol() {
    let addr = fault_server().addr;
    let request = |path: &str| {
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{addr}{path}"
        ))
        .unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "chat.v1, chat.v2".parse().unwrap(),
        );
        request
    };
    let (_, response) = tungstenite::connect(request("/ws/protocol")).unwrap();
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "chat.v2"
    );
    // Choosing one the client did not offer is the guest's error.
    assert!(matches!(
        tungstenite::connect(request("/ws/bad-protocol")),
        Err(tungstenite::Error::Http(response)) if response.status() == 500
    ));
}

#[test]
fn a_guest_that_fails_to_open_gives_500() {
    let response = raw_upgrade(fault_server().addr, "/ws/open-trap", "13");
    assert_eq!(response.status, 500);
    let mut still = connect(fault_server().addr, "/ws/echo");
    still.send(Message::text("fine")).unwrap();
    assert_eq!(next_data(&mut still), Message::text("fine"));
}

#[test]
fn a_silent_session_is_closed_with_1001() {
    let server = TestServer::start(wasmhttpd::Config {
        limits: Limits {
            ws_idle_timeout: Duration::from_millis(300),
            ..test_limits()
        },
        ..wasmhttpd::Config::new(demo_root())
    });
    let mut socket = connect(server.addr, "/ws/echo");
    let (code, reason) = close_frame(&mut socket);
    assert_eq!(code, CloseCode::Away);
    assert_eq!(reason, "idle timeout");
    server.eventually("the session ends", |m| m.websocket_sessions() == 0);
}

#[test]
fn sessions_end_when_clients_leave() {
    let server = TestServer::static_files(&demo_root());
    let mut sockets: Vec<Client> = (0..5).map(|_| connect(server.addr, "/ws/echo")).collect();
    for socket in &mut sockets {
        socket.send(Message::text("x")).unwrap();
        next_data(socket);
    }
    assert_eq!(server.monitor.websocket_sessions(), 5);
    drop(sockets);
    server.eventually("every session ends", |m| m.websocket_sessions() == 0);
}

#[test]
fn a_frame_sent_with_the_handshake_is_not_lost() {
    let mut stream = TcpStream::connect(default_server().addr).unwrap();
    stream
        .set_read_timeout(Some(support::CLIENT_TIMEOUT))
        .unwrap();
    let mut bytes = upgrade_request("/ws/echo", "13").into_bytes();
    bytes.extend_from_slice(&client_frame(0x1, true, b"eager"));
    stream.write_all(&bytes).unwrap();
    read_switch(&mut stream);
    assert_eq!(server_frame(&mut stream), (0x1, b"eager".to_vec()));
}

#[test]
fn a_component_without_the_export_gets_upgrades_as_requests() {
    let server = TestServer::guest(plain_guest(), &demo_root(), test_limits());
    let response = raw_upgrade(server.addr, "/ws/echo", "13");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "plain GET /ws/echo version=13\n");
    assert_eq!(server.monitor.websocket_sessions(), 0);
}

// --- Raw handshakes and frames, for what a client crate will not send.

fn upgrade_request(path: &str, version: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    )
}

fn raw_upgrade(addr: SocketAddr, path: &str, version: &str) -> support::Response {
    support::exchange_at(addr, upgrade_request(path, version).as_bytes())
}

/// Connects and completes a handshake by hand; returns the raw stream.
fn handshake(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(support::CLIENT_TIMEOUT))
        .unwrap();
    stream
        .write_all(upgrade_request(path, "13").as_bytes())
        .unwrap();
    read_switch(&mut stream);
    stream
}

/// Reads the `101` head byte by byte (nothing past it), checking the accept key.
fn read_switch(stream: &mut TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // RFC 6455 §1.3's example key and answer.
    assert!(
        head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
}

/// A masked client frame.
fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![opcode | if fin { 0x80 } else { 0 }];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=65_535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// One unmasked server frame: opcode and payload.
fn server_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut start = [0; 2];
    stream.read_exact(&mut start).unwrap();
    assert_eq!(start[1] & 0x80, 0, "server frames are not masked");
    let len = match start[1] & 0x7f {
        126 => {
            let mut len = [0; 2];
            stream.read_exact(&mut len).unwrap();
            u64::from(u16::from_be_bytes(len))
        }
        127 => {
            let mut len = [0; 8];
            stream.read_exact(&mut len).unwrap();
            u64::from_be_bytes(len)
        }
        len => u64::from(len),
    };
    let mut payload = vec![0; len as usize];
    stream.read_exact(&mut payload).unwrap();
    (start[0] & 0x0f, payload)
}

// --- Streamed responses.

/// Reads one chunk of a chunked body.
fn read_chunk(reader: &mut impl BufRead) -> Vec<u8> {
    let mut size = String::new();
    reader.read_line(&mut size).unwrap();
    let size = usize::from_str_radix(size.trim_end(), 16).expect("chunk size");
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk).unwrap();
    chunk.truncate(size);
    chunk
}

#[test]
fn each_chunk_reaches_the_client_before_the_guest_writes_the_next() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::guest(fault_guest(), root.path(), test_limits());
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(support::CLIENT_TIMEOUT))
        .unwrap();
    stream
        .write_all(b"GET /stream-gated?n=4 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream);
    let head = read_head(&mut reader);
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    // The guest writes chunk i only once gate-i exists, and the gate is
    // opened only after chunk i-1 arrived here: a host that held the body
    // back would leave this read waiting (and the test failing on its
    // read timeout).
    for i in 0..4 {
        assert_eq!(read_chunk(&mut reader), format!("chunk {i}\n").as_bytes());
        std::fs::write(root.path().join(format!("gate-{}", i + 1)), b"").unwrap();
    }
    assert!(read_chunk(&mut reader).is_empty(), "the last chunk");
}

/// Requests `target`, reads the head and the first chunk, then hangs up;
/// the guest must be stopped well before its 30 s deadline.
fn leave_after_the_first_chunk(target: &str) {
    let server = TestServer::faults(test_limits());
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(support::CLIENT_TIMEOUT))
        .unwrap();
    write!(stream, "GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    read_head(&mut reader);
    assert_eq!(read_chunk(&mut reader), b"chunk 0\n");
    assert_eq!(server.monitor.requests_running(), 1);
    drop(reader);
    server.eventually("the guest is stopped", |m| m.requests_running() == 0);
}

#[test]
fn a_client_that_leaves_mid_stream_stops_the_guest() {
    // A stream that would run for over an hour.
    leave_after_the_first_chunk("/stream?n=1000000&ms=5");
}

#[test]
fn a_client_that_leaves_a_silent_stream_stops_the_guest() {
    // After its first chunk the guest waits for a gate file that never
    // appears, writing nothing: a long poll with nothing to say.
    leave_after_the_first_chunk("/stream-gated?n=2");
}

#[test]
fn a_client_that_leaves_before_the_head_stops_the_guest() {
    let server = TestServer::faults(test_limits());
    let mut stream = TcpStream::connect(server.addr).unwrap();
    // Blocks in a host call until its 30 s deadline.
    stream
        .write_all(b"GET /sleep HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    server.eventually("the guest runs", |m| m.requests_running() == 1);
    drop(stream);
    server.eventually("the guest is stopped", |m| m.requests_running() == 0);
}

#[test]
fn shutdown_closes_sessions_with_1001() {
    let server = TestServer::static_files(&demo_root());
    let mut socket = connect(server.addr, "/ws/echo");
    socket.send(Message::text("before")).unwrap();
    assert_eq!(next_data(&mut socket), Message::text("before"));
    let stopping = std::thread::spawn(move || drop(server));
    assert_eq!(
        close_frame(&mut socket),
        (CloseCode::Away, "server shutting down".to_owned())
    );
    stopping.join().unwrap();
}

#[test]
fn each_message_is_held_to_the_cpu_budget_as_a_request_is() {
    let server = TestServer::faults(Limits {
        guest_timeout: Duration::from_secs(30),
        guest_cpu_time: Some(Duration::from_millis(50)),
        shutdown_grace: Duration::from_millis(100),
        ..test_limits()
    });
    let mut socket = connect(server.addr, "/ws/echo");
    // Twenty calls of 10 ms each: four times the budget in all, a fifth
    // of it in each call.
    for _ in 0..20 {
        socket.send(Message::text("spin 10")).unwrap();
        assert_eq!(next_data(&mut socket), Message::text("spun"));
    }
    // Long before its 30 s deadline: the budget ends the spinning call.
    socket.send(Message::text("loop")).unwrap();
    assert_eq!(close_frame(&mut socket).0, CloseCode::Error);
}
