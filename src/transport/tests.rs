//! Tests of the transport glue (`super`): TLS ends and errors over a
//! real rustls pair, a cancelled TLS write, and the end signal's waker slots.

use super::*;
use monoio::io::AsyncWriteRentExt;
use std::task::{Context, Wake};
use std::time::Duration;

struct Count(std::sync::atomic::AtomicUsize);
impl Wake for Count {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn tls_configs() -> (TlsAcceptor, TlsConnector) {
    let ss = crate::tls::self_signed().unwrap();
    let trust = crate::config::Trust::Fingerprint(ss.fingerprint);
    let client = crate::tls::client_config(&trust).unwrap();
    (TlsAcceptor::from(ss.config), TlsConnector::from(client))
}

/// A TLS connection over loopback, both ends this glue: (server, client).
async fn tls_pair() -> (TlsStream, TlsStream) {
    let (acceptor, connector) = tls_configs();
    let l = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let client = monoio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.unwrap()
    });
    let (tcp, _) = l.accept().await.unwrap();
    let server = acceptor.accept(tcp).await.unwrap();
    (server, client.await)
}

async fn read_some(r: &mut TlsReader, room: usize) -> io::Result<Vec<u8>> {
    let (res, buf) = r.read(Vec::with_capacity(room).slice_mut(0..room)).await;
    res.map(|_| buf.into_inner())
}

#[test]
fn tls_ends_read_as_zero_with_and_without_close_notify() {
    block_on(async {
        for clean in [true, false] {
            let (server, client) = tls_pair().await;
            let (mut sr, _sw) = server.into_split();
            let (_cr, mut cw) = client.into_split();
            let (res, _) = cw.write_all(b"last words".to_vec()).await;
            res.unwrap();
            if clean {
                cw.shutdown().await.unwrap();
            } else {
                drop((_cr, cw));
            }
            assert_eq!(read_some(&mut sr, 64).await.unwrap(), b"last words");
            assert!(read_some(&mut sr, 64).await.unwrap().is_empty(), "{clean}");
            assert_eq!(sr.buffered(), 0);
        }
    });
}

#[test]
fn tls_errors_carry_the_rustls_error() {
    block_on(async {
        // Not TLS at all: the handshake fails with rustls' verdict.
        let (acceptor, _) = tls_configs();
        let l = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let talker = monoio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let (res, _) = tcp.write_all(b"GET / HTTP/1.1\r\n\r\n".to_vec()).await;
            res.unwrap();
            tcp
        });
        let (tcp, _) = l.accept().await.unwrap();
        let e = acceptor.accept(tcp).await.err().expect("no TLS");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.get_ref().is_some_and(|e| e.is::<rustls::Error>()), "{e}");
        drop(talker.await);

        // A record that does not decrypt after the handshake: the same.
        let (acceptor, connector) = tls_configs();
        let l = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = monoio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            acceptor.accept(tcp).await.unwrap()
        });
        // A second handle on the client's socket, to write around rustls.
        let std_tcp = std::net::TcpStream::connect(addr).unwrap();
        let raw = std_tcp.try_clone().unwrap();
        let tcp = TcpStream::from_std(std_tcp).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let _client = connector.connect(name, tcp).await.unwrap();
        let (mut sr, _sw) = server.await.into_split();
        let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x40];
        forged.extend_from_slice(&[0x55; 0x40]);
        std::io::Write::write_all(&mut &raw, &forged).unwrap();
        let e = read_some(&mut sr, 64).await.expect_err("a forged record");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.get_ref().is_some_and(|e| e.is::<rustls::Error>()), "{e}");
    });
}

#[test]
fn a_cancelled_tls_write_cuts_the_stream_instead_of_leaving_a_gap() {
    block_on(async {
        let (server, client) = tls_pair().await;
        let (_sr, mut sw) = server.into_split();
        // The client never reads: the write fills the socket and waits.
        let big = vec![7u8; 32 << 20];
        let t = monoio::time::timeout(Duration::from_millis(300), sw.write_all(big)).await;
        assert!(t.is_err(), "32 MiB went out to a peer that does not read");
        let (res, _) = sw.write_all(b"after the gap".to_vec()).await;
        assert_eq!(res.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        assert!(sw.shutdown().await.is_err());
        drop(client);
    });
}

#[test]
fn waiting_around_every_read_keeps_one_slot() {
    let sig = Signal::default();
    let count = std::sync::Arc::new(Count(Default::default()));
    let waker = Waker::from(count.clone());
    let mut cx = Context::from_waker(&waker);
    // A million waits, each polled twice and dropped, as the pump does.
    for _ in 0..1_000_000 {
        let mut f = std::pin::pin!(sig.fired());
        assert!(f.as_mut().poll(&mut cx).is_pending());
        assert!(f.as_mut().poll(&mut cx).is_pending());
    }
    assert_eq!(sig.waiter_slots(), 1);
    let mut f = std::pin::pin!(sig.fired());
    assert!(f.as_mut().poll(&mut cx).is_pending());
    sig.fire();
    assert_eq!(count.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(f.as_mut().poll(&mut cx).is_ready());
}
