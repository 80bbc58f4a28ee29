//! Deliveries to an `https://` subscriber, verified against the trusted
//! roots (here a test CA given through `SSL_CERT_FILE`, as an operator would
//! add a private CA to the system roots).

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use wsbridge_dataplane::delivery::{AttemptOutcome, HttpSender};

/// A TLS subscriber on loopback answering 200 and reporting each body.
async fn https_subscriber(
    server: Arc<rustls::ServerConfig>,
) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Bytes>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = Router::new().fallback(move |body: Bytes| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(body);
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn https_subscribers_get_deliveries_over_verified_tls() {
    let (ca_pem, server) = support::peers::tls_material();
    let ca_file = std::env::temp_dir().join(format!("wsbridge-test-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, &ca_pem).unwrap();
    // SAFETY: the only test in this binary, before any thread reads the environment.
    unsafe { std::env::set_var("SSL_CERT_FILE", &ca_file) };

    let (port, mut received) = https_subscriber(server).await;
    let sender = HttpSender::new();
    let uri: http::Uri = format!("https://localhost:{port}/ingest").parse().unwrap();
    let outcome = sender
        .post(&uri, &Default::default(), b"over tls", Duration::from_secs(10))
        .await;
    assert!(
        matches!(outcome, AttemptOutcome::Response { status, .. } if status == StatusCode::OK),
        "{outcome:?}"
    );
    assert_eq!(received.recv().await.unwrap(), Bytes::from_static(b"over tls"));

    // A name the certificate does not carry is refused, not delivered.
    let other: http::Uri = format!("https://127.0.0.2:{port}/ingest").parse().unwrap();
    let refused = sender
        .post(&other, &Default::default(), b"x", Duration::from_secs(10))
        .await;
    assert!(matches!(refused, AttemptOutcome::Network(_)), "{refused:?}");
    let _ = std::fs::remove_file(ca_file);
}
