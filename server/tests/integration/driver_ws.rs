//! `/ws/driver`: acks per message, errors per ping without closing, slow_down when the queue is full.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn pings_are_acked_and_a_bad_one_does_not_close_the_socket() {
    let server = start(config()).await;
    let mut ws = Socket::connect(&server, "/ws/driver").await;

    let mut good = ping("ws-driver", 6.5, 3.3);
    good["type"] = json!("ping");
    good["seq"] = json!(1);
    ws.send(&good).await;
    assert_eq!(ws.next().await, json!({"type": "ack", "seq": 1, "accepted": 1}));

    ws.send(&json!({"type": "ping", "seq": 2, "driver_id": "ws-driver", "lat": 6.5, "lon": 200.0, "ts": now_ms()}))
        .await;
    let error = ws.next().await;
    assert_eq!((error["type"].as_str(), error["seq"].as_u64()), (Some("error"), Some(2)));
    assert_eq!((error["code"].as_str(), error["field"].as_str()), (Some("lon_out_of_range"), Some("lon")));
    assert_eq!(ws.next().await, json!({"type": "ack", "seq": 2, "accepted": 0}));

    ws.send_text("this is not json").await;
    assert_eq!(ws.next().await["code"], "invalid_json");

    // Still open: a batch with one bad item keeps the others.
    ws.send(&json!({"type": "batch", "seq": 3, "pings": [
        ping("ws-a", 6.51, 3.31), {"driver_id": "ws-b", "lat": "x", "lon": 3.3, "ts": now_ms()}, ping("ws-c", 6.52, 3.32)
    ]}))
    .await;
    let error = ws.next().await;
    assert_eq!((error["index"].as_u64(), error["field"].as_str()), (Some(1), Some("lat")), "{error}");
    assert_eq!(ws.next().await, json!({"type": "ack", "seq": 3, "accepted": 2}));

    eventually(5, "ws-c is known", || async { (get(&server, "/api/drivers/ws-c").await.0 == 200).then_some(()) }).await;
    assert_eq!(metric(&server, "pulsemap_subscribers{kind=\"driver\"}").await, 1.0);
    server.stop().await;
}

#[tokio::test]
async fn a_full_queue_says_slow_down_and_refuses_with_a_code() {
    let mut config = config();
    config.queue_capacity = 1;
    config.queue_wait_ms = 100;
    let server = start(config).await;
    let mut ws = Socket::connect(&server, "/ws/driver").await;
    ws.send(&json!({"type": "batch", "seq": 9, "pings": [ping("s1", 6.5, 3.3), ping("s2", 6.5, 3.3)]})).await;
    let slow = ws.next().await;
    assert_eq!(slow["type"], "slow_down", "{slow}");
    assert!(slow["retry_after_ms"].as_u64().unwrap() > 0);
    let refused = ws.next().await;
    assert_eq!((refused["code"].as_str(), refused["seq"].as_u64()), (Some("queue_full"), Some(9)), "{refused}");
    // The socket stays usable for what fits.
    ws.send(&json!({"type": "ping", "seq": 10, "driver_id": "s1", "lat": 6.5, "lon": 3.3, "ts": now_ms()})).await;
    assert_eq!(ws.next().await, json!({"type": "ack", "seq": 10, "accepted": 1}));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_driver_sockets_with_going_away() {
    let server = start(config()).await;
    let mut ws = Socket::connect(&server, "/ws/driver").await;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(ws.closed_within(Duration::from_secs(5)).await, Some(1001));
    stopping.await.unwrap();
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009_and_is_counted() {
    let mut config = config();
    config.max_ws_message_bytes = 1_024;
    let server = start(config).await;
    let mut ws = Socket::connect(&server, "/ws/driver").await;
    ws.send_text(&format!("{{\"type\":\"ping\",\"driver_id\":\"{}\"}}", "x".repeat(4_096))).await;
    assert_eq!(ws.closed_within(Duration::from_secs(5)).await, Some(1009));
    assert_eq!(metric(&server, "pulsemap_pings_rejected_total{reason=\"body_too_large\"}").await, 1.0);
    server.stop().await;
}

/// A frame no WebSocket may carry (a reserved opcode) closes the socket with 1002.
#[tokio::test]
async fn a_malformed_frame_closes_with_1002() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(config()).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let handshake = format!(
        "GET /ws/driver HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    stream.write_all(handshake.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    // FIN, opcode 0x3 (reserved), masked, empty.
    stream.write_all(&[0x83, 0x80, 1, 2, 3, 4]).await.unwrap();
    let mut frame = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut frame)).await.unwrap().unwrap();
    assert_eq!(frame[0], 0x88, "a close frame");
    assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1002);
    server.stop().await;
}
