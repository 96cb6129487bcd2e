//! A loopback front for a test broker (TLS terminator, SASL checker): accepts connections until
//! stopped and serves each on its own task, which the stop also ends.

use std::future::Future;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Serves every connection `listener` accepts with `handle`, until `stop`.
pub fn serve_until<F, Fut>(listener: TcpListener, stop: CancellationToken, handle: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = stop.cancelled() => return,
            };
            let Ok((stream, _)) = accepted else { continue };
            let (connection, stopped) = (handle(stream), stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = connection => {}
                    () = stopped.cancelled() => {}
                }
            });
        }
    });
}
