//! Trust at the edges: WebSocket handshakes from pages of other sites are refused (cross-site WebSocket
//! hijacking), with the error table's code and a metric.

use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Error};

use crate::common::*;

/// Opens a WebSocket at `path` with `origin` (none: a non-browser client); the HTTP status of the handshake and,
/// when refused, the error code of its JSON body.
async fn handshake(server: &pulsemap::Running, path: &str, origin: Option<&str>) -> (u16, Option<String>) {
    let mut request = format!("ws://{}{path}", server.addr).into_client_request().expect("a valid request");
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", HeaderValue::from_str(origin).expect("a header value"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => (response.status().as_u16(), None),
        Err(Error::Http(response)) => {
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default()).expect("a JSON error body");
            (response.status().as_u16(), body["error"]["code"].as_str().map(str::to_string))
        }
        Err(e) => panic!("handshake failed without an HTTP answer: {e}"),
    }
}

#[tokio::test]
async fn websockets_refuse_pages_of_other_sites() {
    let server = start(config()).await;
    let own = format!("http://{}", server.addr);
    for path in ["/ws/heat", "/ws/driver", "/ws/track/d1"] {
        assert_eq!(handshake(&server, path, Some(&own)).await, (101, None), "{path}: this host's own pages");
        assert_eq!(handshake(&server, path, None).await, (101, None), "{path}: a client that is not a browser");
        assert_eq!(
            handshake(&server, path, Some("https://evil.example")).await,
            (403, Some("origin_not_allowed".into())),
            "{path}: another site"
        );
        // Same host, another port is another origin.
        let other_port = format!("http://127.0.0.1:{}", server.addr.port() + 1);
        assert_eq!(handshake(&server, path, Some(&other_port)).await.0, 403, "{path}: another port");
    }
    let metrics = get_text(&server, "/metrics").await.1;
    assert!(metrics.contains("pulsemap_ws_origin_refused_total 6"), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn configured_origins_replace_the_same_host_rule() {
    let mut config = config();
    config.allowed_origins = vec!["https://app.example.com".into()];
    let server = start(config).await;
    assert_eq!(handshake(&server, "/ws/heat", Some("https://app.example.com")).await.0, 101);
    assert_eq!(handshake(&server, "/ws/heat", Some("https://APP.example.com/")).await.0, 101, "case, trailing /");
    let own = format!("http://{}", server.addr);
    assert_eq!(handshake(&server, "/ws/heat", Some(&own)).await.0, 403, "only the configured origins");
    server.stop().await;
}
