//! A TCP relay on loopback in front of a server, which a test can cut and restore: what a
//! network partition between one client and the server looks like to both. While cut, every
//! relayed connection is closed and new ones are accepted and closed at once.

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
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(watch::Sender::new(false));
        let task = tokio::spawn(accept(listener, target, cut.clone()));
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

async fn accept(listener: TcpListener, target: SocketAddr, cut: Arc<watch::Sender<bool>>) {
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
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = cut.wait_for(|cut| *cut) => {}
            }
        });
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
