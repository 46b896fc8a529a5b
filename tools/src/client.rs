//! The harness's side of the wire: HTTP and WebSocket clients that carry the server's key, small socket
//! buffers for thousands of sockets in one process, and reading one figure from `/metrics`.

/// An HTTP client that sends `key` with every request.
pub fn keyed_client(key: &str) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))?;
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(reqwest::Client::builder().default_headers(headers))
}

/// A WebSocket handshake to `url` that carries `key`.
pub fn keyed_request(
    url: &str,
    key: &str,
) -> anyhow::Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request()?;
    request.headers_mut().insert("authorization", format!("Bearer {key}").parse()?);
    Ok(request)
}

/// Reads one counter from `/metrics`.
pub async fn server_metric(client: &reqwest::Client, url: &str, name: &str) -> anyhow::Result<f64> {
    let text = client.get(format!("{url}/metrics")).send().await?.text().await?;
    Ok(text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0))
}

/// Client sockets with small buffers: tungstenite's default read buffer is 128 KiB per socket, too much for
/// tens of thousands of harness sockets in one process.
pub fn small_buffers() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0)
}
