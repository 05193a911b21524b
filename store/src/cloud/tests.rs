//! The cloud stores' retries and error kinds, against small servers of our own that answer as told.

use super::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};

/// An HTTP server on 127.0.0.1 that answers every request with `status` (and a short body), one connection
/// per request; returns its URL and the count of requests it answered. It runs until the test process ends.
fn answering(status: u16) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answered = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&answered);
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            let Ok(mut connection) = connection else { continue };
            let mut reader = BufReader::new(connection.try_clone().unwrap());
            // The head, then the body (read whole: a response sent over an unread body can reach the client as
            // a reset connection rather than an answer).
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let _ = reader.by_ref().take(length as u64).read_to_end(&mut Vec::new());
            // Counted before it is answered: a test reads the count once it has its answer.
            count.fetch_add(1, Ordering::SeqCst);
            let body = format!("<Error><Code>Status{status}</Code></Error>");
            let _ = write!(
                connection,
                "HTTP/1.1 {status} Whatever\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, answered)
}

/// Two retries, a millisecond apart at most (shorter than `object_store`'s usual first wait: see
/// [`RequestOptions::retry_config`]).
fn quick_retries() -> RequestOptions {
    RequestOptions {
        max_retries: 2,
        max_backoff: Duration::from_millis(1),
        request_timeout: Duration::from_secs(10),
        storage_class: None,
    }
}

fn block_on<T>(work: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(work)
}

/// Our own requests: a 403 is answered at once, for the caller to refuse (permanent); a 503 is retried, then
/// reported retryable; a server that is not there (a refused connection) is retryable too.
#[test]
fn our_requests_are_retried_and_classified_by_status() {
    let client = reqwest::Client::new();
    let send = |url: String| {
        let client = client.clone();
        block_on(async move {
            match send_retrying(&quick_retries(), "test", async || Ok(client.put(&url).body("x"))).await {
                Ok(response) => Err(refused(response).await),
                Err(failure) => Ok(failure),
            }
        })
    };

    let (url, answered) = answering(403);
    let refusal = send(url).expect_err("a 403 comes back as an answer, not after retries");
    assert_eq!(refusal.kind, FailureKind::Permanent, "{refusal:?}");
    assert!(refusal.message.starts_with("403 Forbidden: <Error>"), "{}", refusal.message);
    let cause = refusal.cause.as_deref().and_then(|c| c.downcast_ref::<reqwest::Error>()).expect("the cause");
    assert_eq!(cause.status(), Some(reqwest::StatusCode::FORBIDDEN));
    assert_eq!(answered.load(Ordering::SeqCst), 1, "a 403 is not retried");

    for status in [503, 500, 429, 408] {
        let (url, answered) = answering(status);
        let failure = send(url).expect("retried until the retries are spent");
        assert_eq!(failure.kind, FailureKind::Retryable, "{status}: {failure:?}");
        assert!(failure.message.ends_with("(after 2 retries)"), "{status}: {}", failure.message);
        assert_eq!(answered.load(Ordering::SeqCst), 3, "{status}: the first try and two retries");
    }
    for status in [400, 401, 404, 409] {
        let (url, _) = answering(status);
        assert_eq!(send(url).unwrap_err().kind, FailureKind::Permanent, "{status}");
    }

    // Nothing listens on a port just released: the connection is refused, every time.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let failure = send(format!("http://127.0.0.1:{port}")).expect("a transport failure, after the retries");
    assert_eq!(failure.kind, FailureKind::Retryable, "{failure:?}");
    assert!(failure.cause.as_deref().is_some_and(|c| c.is::<reqwest::Error>()), "{failure:?}");
}

/// `object_store`'s errors: its variants for refusals are permanent; a generic error is retryable unless the
/// status it shows is one no retry mends.
#[test]
fn object_store_errors_are_classified_by_variant_and_status() {
    let source = || -> Box<dyn std::error::Error + Send + Sync> { "the service's words".into() };
    let path = || "bucket/key".to_string();
    for error in [
        object_store::Error::PermissionDenied { path: path(), source: source() },
        object_store::Error::Unauthenticated { path: path(), source: source() },
        object_store::Error::Precondition { path: path(), source: source() },
        object_store::Error::NotSupported { source: source() },
        object_store::Error::NotImplemented { operation: "x".into(), implementer: "y".into() },
        object_store::Error::UnknownConfigurationKey { store: "S3", key: "x".into() },
        object_store::Error::NotFound { path: path(), source: source() },
    ] {
        assert_eq!(failure_kind(&error), FailureKind::Permanent, "{error}");
    }
    let generic = |text: &str| object_store::Error::Generic { store: "S3", source: text.to_string().into() };
    let shown = |status: &str| {
        generic(&format!(
            "Error performing GET http://127.0.0.1/b?list-type=2 in 3ms - Server returned non-2xx status code: \
             {status}: <Error/>"
        ))
    };
    for status in
        ["503 Service Unavailable", "500 Internal Server Error", "429 Too Many Requests", "408 Request Timeout"]
    {
        assert_eq!(failure_kind(&shown(status)), FailureKind::Retryable, "{status}");
    }
    for status in ["403 Forbidden", "400 Bad Request", "405 Method Not Allowed", "301 Moved Permanently"] {
        assert_eq!(failure_kind(&shown(status)), FailureKind::Permanent, "{status}");
    }
    assert_eq!(failure_kind(&generic("error sending request: connection reset")), FailureKind::Retryable);
    let error = CloudError::from(shown("403 Forbidden"));
    assert!(error.cause.as_deref().is_some_and(|c| c.is::<object_store::Error>()), "the error is kept");
    assert_eq!(error.message, error_message(&shown("403 Forbidden")), "the message is as before");
}

/// Through a whole store: S3 at a server that refuses every request (403: permanent) or is unavailable (503:
/// retryable, once `object_store`'s retries are spent); the message is the one shown before.
#[test]
fn a_cloud_store_reports_refusals_as_permanent_and_unavailability_as_retryable() {
    for (status, kind) in [(403, FailureKind::Permanent), (503, FailureKind::Retryable)] {
        let (url, answered) = answering(status);
        let options = crate::s3::S3Options {
            endpoint: Some(url),
            region: Some("us-east-1".into()),
            access_key: Some("key".into()),
            secret_key: Some("secret".into()),
            ..crate::s3::S3Options::default()
        };
        let store = CloudStore::new(crate::s3::S3::new("bucket", &options, &quick_retries()), "prefix").unwrap();
        let err = store.put("a/b", Bytes::from_static(b"x")).unwrap_err();
        assert_eq!(err.kind(), Some(kind), "{status}: {err:?}");
        assert!(err.to_string().starts_with("s3://bucket/prefix: put a/b: "), "{err}");
        assert!(err.to_string().contains(&status.to_string()), "{err}");
        assert!(err.cause().is_some_and(|c| c.is::<object_store::Error>()), "{err:?}");
        let tries = if kind == FailureKind::Retryable { 3 } else { 1 };
        assert_eq!(answered.load(Ordering::SeqCst), tries, "{status}");
        let err = store.list("a").unwrap_err();
        assert_eq!(err.kind(), Some(kind), "{status}: list: {err:?}");
    }
}

/// Listed keys come back as they were put: `object_store`'s percent-encoding of a path undone, part by part,
/// below the store's prefix.
#[test]
fn listed_keys_are_decoded_below_the_prefix() {
    for key in ["odd/ünï/cödé", "a/100%/x", "a/%2F/b", "b#c/[d]/e f", "plain/0000000000.xbs", "x/./y"] {
        for prefix in ["", "pre", "pré/fix"] {
            let location = Path::from(crate::join_key(&[prefix, key]));
            assert_eq!(listed_key(&Path::from(prefix), &location), key, "{prefix:?} {key:?} as {location}");
        }
    }
    // A name some other program stored that does not decode to UTF-8 stays as listed.
    assert_eq!(listed_key(&Path::ROOT, &Path::parse("a/%FF").unwrap()), "a/%FF");
}
