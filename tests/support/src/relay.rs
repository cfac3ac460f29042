//! A TCP relay on loopback in front of a server, which a test can cut and restore: what a
//! network partition between one client and the server looks like to both. While cut, every
//! relayed connection is closed and new ones are accepted and closed at once. A throttled relay
//! passes the server's bytes at a set rate: a slow link (a pull that takes long enough to be
//! interrupted).

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running relay; stops relaying when dropped.
pub struct TcpRelay {
    addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpRelay {
    /// Listens on a free loopback port and relays every connection to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<TcpRelay> {
        Self::start_with(target, None).await
    }

    /// A relay that passes the server's bytes to the client at `bytes_per_sec` at most.
    pub async fn throttled(target: SocketAddr, bytes_per_sec: u64) -> anyhow::Result<TcpRelay> {
        Self::start_with(target, Some(bytes_per_sec.max(1))).await
    }

    async fn start_with(target: SocketAddr, rate: Option<u64>) -> anyhow::Result<TcpRelay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(watch::Sender::new(false));
        let task = tokio::spawn(accept(listener, target, cut.clone(), rate));
        Ok(TcpRelay { addr, cut, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every relayed connection and refuses new ones until [`TcpRelay::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Relays again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.cut.send_replace(true);
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    rate: Option<u64>,
) {
    while let Ok((client, _)) = listener.accept().await {
        if *cut.borrow() {
            drop(client);
            continue;
        }
        let mut cut = cut.subscribe();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let (mut client, mut server) = (client, server);
            match rate {
                None => tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = cut.wait_for(|cut| *cut) => {}
                },
                Some(rate) => {
                    let (mut client_read, mut client_write) = client.split();
                    let (mut server_read, mut server_write) = server.split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut client_read, &mut server_write) => {}
                        _ = paced_copy(&mut server_read, &mut client_write, rate) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                }
            }
        });
    }
}

/// Copies at `rate` bytes per second at most, in chunks of a tenth of a second's worth.
async fn paced_copy<R, W>(from: &mut R, to: &mut W, rate: u64) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let chunk = usize::try_from(rate / 10)
        .unwrap_or(usize::MAX)
        .clamp(1, 64 * 1024);
    let mut buf = vec![0u8; chunk];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        let pause = std::time::Duration::from_secs_f64(n as f64 / rate as f64);
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_until_cut_and_again_once_restored() -> anyhow::Result<()> {
        let echo = TcpListener::bind("127.0.0.1:0").await?;
        let target = echo.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let relay = TcpRelay::start(target).await?;
        let mut conn = TcpStream::connect(relay.addr()).await?;
        conn.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");

        relay.cut();
        // The open connection is closed by the relay.
        let n =
            tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf)).await??;
        assert_eq!(n, 0, "the relayed connection ends when cut");
        let mut refused = TcpStream::connect(relay.addr()).await?;
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), refused.read(&mut buf))
            .await?
            .unwrap_or(0);
        assert_eq!(n, 0, "a new connection is closed at once while cut");

        relay.restore();
        let mut again = TcpStream::connect(relay.addr()).await?;
        again.write_all(b"pong").await?;
        again.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");
        Ok(())
    }
}
