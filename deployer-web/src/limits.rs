//! Bounds on what clients can hold: live log streams (in all, per job, per
//! client), request bodies, and connections that stop reading or never
//! finish sending their headers.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The web server's limits. `Limits::default()` suits a deployer on the
/// open internet; raise them for a busy internal dashboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Live log streams open at once, over all clients.
    pub streams: usize,
    /// Live log streams of one job open at once.
    pub streams_per_job: usize,
    /// Live log streams one client address holds at once.
    pub streams_per_client: usize,
    /// A connection must send a request's headers within this time (also
    /// the idle time allowed between requests on a kept-alive connection).
    pub header_read: Duration,
    /// A connection whose client reads nothing of a response for this long
    /// is closed.
    pub write_stall: Duration,
    /// The largest form a page accepts (forms here are a few fields).
    pub form_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            streams: 64,
            streams_per_job: 16,
            streams_per_client: 8,
            header_read: Duration::from_secs(10),
            write_stall: Duration::from_secs(30),
            form_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_job: HashMap<String, usize>,
    per_client: HashMap<IpAddr, usize>,
}

/// Admits live log streams within the limits.
pub(crate) struct StreamGate {
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
}

/// An open stream's place; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct StreamPermit {
    counts: Arc<Mutex<Counts>>,
    job: String,
    client: Option<IpAddr>,
}

impl StreamGate {
    pub(crate) fn new(limits: Limits) -> StreamGate {
        StreamGate { limits, counts: Arc::default() }
    }

    /// A place for a stream of `job` to `client`, or why there is none.
    pub(crate) fn admit(&self, job: &str, client: Option<IpAddr>) -> Result<StreamPermit, String> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= self.limits.streams {
            return Err(format!("{} log streams are open, the most this server allows", c.total));
        }
        if c.per_job.get(job).copied().unwrap_or(0) >= self.limits.streams_per_job {
            return Err(format!("{} streams of this job are open already", self.limits.streams_per_job));
        }
        if let Some(ip) = client {
            if c.per_client.get(&ip).copied().unwrap_or(0) >= self.limits.streams_per_client {
                return Err(format!("you have {} log streams open already", self.limits.streams_per_client));
            }
            *c.per_client.entry(ip).or_default() += 1;
        }
        c.total += 1;
        *c.per_job.entry(job.to_owned()).or_default() += 1;
        Ok(StreamPermit { counts: self.counts.clone(), job: job.to_owned(), client })
    }

    /// Streams open now.
    pub(crate) fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total -= 1;
        if let Some(n) = c.per_job.get_mut(&self.job) {
            *n -= 1;
            if *n == 0 {
                c.per_job.remove(&self.job);
            }
        }
        if let Some(ip) = self.client {
            if let Some(n) = c.per_client.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    c.per_client.remove(&ip);
                }
            }
        }
    }
}

/// A connection whose writes fail once the peer has read nothing for
/// `stall` (a client that stopped reading a live log, say), so the server
/// drops it and what it holds.
pub(crate) struct WriteStall<S> {
    inner: S,
    stall: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteStall<S> {
    pub(crate) fn new(inner: S, stall: Duration) -> WriteStall<S> {
        WriteStall { inner, stall, timer: None }
    }

    /// After a write that could not progress: fails once the stall is over.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let stall = self.stall;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "the client read nothing for too long"))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future as _;

impl<S: AsyncRead + Unpin> AsyncRead for WriteStall<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStall<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.stalled(cx).map(Err),
            done => {
                self.timer = None;
                done
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.stalled(cx).map(Err),
            done => {
                self.timer = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.stalled(cx).map(Err),
            done => {
                self.timer = None;
                done
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_in_all_per_job_and_per_client() {
        let gate =
            StreamGate::new(Limits { streams: 4, streams_per_job: 2, streams_per_client: 2, ..Limits::default() });
        let ip = |n: u8| -> Option<IpAddr> { Some(IpAddr::from([203, 0, 113, n])) };
        let p1 = gate.admit("job-1", ip(1)).unwrap();
        let _p2 = gate.admit("job-1", ip(2)).unwrap();
        assert!(gate.admit("job-1", ip(3)).unwrap_err().contains("streams of this job"));
        let _p3 = gate.admit("job-2", ip(1)).unwrap();
        assert!(gate.admit("job-3", ip(1)).unwrap_err().contains("you have 2"));
        let _p4 = gate.admit("job-3", ip(3)).unwrap();
        assert!(gate.admit("job-4", ip(4)).unwrap_err().contains("the most this server allows"));
        assert_eq!(gate.open(), 4);
        drop(p1);
        assert_eq!(gate.open(), 3);
        let _p5 = gate.admit("job-1", ip(1)).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_whose_peer_stops_reading_fails_after_the_stall() {
        use tokio::io::AsyncWriteExt;
        let (client, server) = tokio::io::duplex(1024);
        let mut server = WriteStall::new(server, Duration::from_secs(30));
        let chunk = vec![0u8; 512];
        // The peer reads nothing: the pipe fills, then the write waits
        // (virtual time) and fails once the stall is over.
        let err = loop {
            if let Err(e) = server.write_all(&chunk).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }
}
