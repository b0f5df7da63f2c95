//! Copies of the audit records besides the file: stdout (one JSON line per record, for a
//! container's log collector) and syslog (RFC 5424). Both are best effort: sent by a thread of
//! their own after the file's durable write and the exchange's answer, never waited for; a
//! failure, or a batch dropped because the copies are behind, is logged and counted
//! (`ephemera_audit_sink_errors_total{sink}`), and the file stays the record of evidence.

use std::io::Write;
use std::time::Duration;

/// Most batches of lines waiting for the copies.
const QUEUE: usize = 4096;
/// A syslog peer's connect and write bound.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// The copies' thread; batches of lines go to it (`try_send`: never waited for).
pub(super) fn spawn(options: &super::AuditOptions) -> std::sync::mpsc::SyncSender<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUE);
    let to_stdout = options.stdout;
    let mut syslog = options.syslog.as_deref().map(Syslog::new);
    let _ = std::thread::Builder::new().name("audit-copies".into()).spawn(move || {
        while let Ok(lines) = rx.recv() {
            if to_stdout {
                stdout(&lines);
            }
            if let Some(s) = syslog.as_mut() {
                s.send(&lines);
            }
        }
    });
    tx
}

/// The lines to stdout.
fn stdout(lines: &[u8]) {
    let mut out = std::io::stdout().lock();
    if out.write_all(lines).and_then(|()| out.flush()).is_err() {
        metrics::counter!("ephemera_audit_sink_errors_total", "sink" => "stdout").increment(1);
    }
}

enum Transport {
    Udp(std::net::UdpSocket),
    Tcp(String, Option<std::net::TcpStream>),
    Unix(std::os::unix::net::UnixDatagram, String),
    Unusable,
}

/// A syslog destination: `udp://HOST:PORT`, `tcp://HOST:PORT` (RFC 6587 octet counting, one
/// connection kept and re-made on failure) or `unix:///dev/log`.
struct Syslog {
    target: String,
    transport: Transport,
}

/// `<PRI>`: facility 13 (log audit), severity 6 (informational).
const PRI: u8 = 13 * 8 + 6;

impl Syslog {
    fn new(target: &str) -> Syslog {
        let transport = if let Some(addr) = target.strip_prefix("udp://") {
            std::net::UdpSocket::bind(if addr.starts_with('[') { "[::]:0" } else { "0.0.0.0:0" })
                .and_then(|s| s.connect(addr).map(|()| s))
                .map_or(Transport::Unusable, Transport::Udp)
        } else if let Some(addr) = target.strip_prefix("tcp://") {
            Transport::Tcp(addr.to_owned(), None)
        } else if let Some(path) = target.strip_prefix("unix://") {
            std::os::unix::net::UnixDatagram::unbound()
                .map_or(Transport::Unusable, |s| Transport::Unix(s, path.to_owned()))
        } else {
            Transport::Unusable
        };
        Syslog { target: target.to_owned(), transport }
    }

    /// Each line as one RFC 5424 message: `<110>1 TIME - ephemera PID audit - LINE`.
    fn send(&mut self, lines: &[u8]) {
        let pid = std::process::id();
        for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let time = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["time"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "-".into());
            let mut msg = format!("<{PRI}>1 {time} - ephemera {pid} audit - ").into_bytes();
            msg.extend_from_slice(line);
            if let Err(e) = self.deliver(&msg) {
                metrics::counter!("ephemera_audit_sink_errors_total", "sink" => "syslog").increment(1);
                tracing::warn!(target = %self.target, error = %e, "an audit record could not be sent to syslog");
            }
        }
    }

    fn deliver(&mut self, msg: &[u8]) -> std::io::Result<()> {
        match &mut self.transport {
            Transport::Udp(s) => s.send(msg).map(|_| ()),
            Transport::Unix(s, path) => {
                s.set_write_timeout(Some(PEER_TIMEOUT))?;
                s.send_to(msg, &*path).map(|_| ())
            }
            Transport::Tcp(addr, stream) => {
                let mut framed = format!("{} ", msg.len()).into_bytes();
                framed.extend_from_slice(msg);
                for _ in 0..2 {
                    if stream.is_none() {
                        let peer = std::net::ToSocketAddrs::to_socket_addrs(&*addr)?
                            .next()
                            .ok_or_else(|| std::io::Error::other("no address"))?;
                        let s = std::net::TcpStream::connect_timeout(&peer, PEER_TIMEOUT)?;
                        s.set_write_timeout(Some(PEER_TIMEOUT))?;
                        *stream = Some(s);
                    }
                    match stream.as_mut().map(|s| s.write_all(&framed)) {
                        Some(Ok(())) => return Ok(()),
                        _ => *stream = None,
                    }
                }
                Err(std::io::Error::other("the syslog connection failed twice"))
            }
            Transport::Unusable => Err(std::io::Error::other("unusable syslog target")),
        }
    }
}
