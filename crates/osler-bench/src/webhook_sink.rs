//! A webhook receiver for the benchmarks: a loopback listener that answers every delivery
//! 200 at once and keeps its arrival time and body (one thread per connection, keep-alive).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// What arrived: (arrival time, UTC ms; the delivery's JSON body).
pub type Arrivals = Arc<Mutex<Vec<(i64, serde_json::Value)>>>;

pub struct Sink {
    pub url: String,
    pub got: Arrivals,
}

use crate::now_ms;

/// Serves one connection's requests until it closes.
fn serve(stream: std::net::TcpStream, got: &Arrivals) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut len = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.trim().eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        let at = now_ms();
        out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")?;
        if let Ok(v) = serde_json::from_slice(&body) {
            got.lock().unwrap_or_else(|p| p.into_inner()).push((at, v));
        }
    }
}

impl Sink {
    pub fn start() -> anyhow::Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}/osler-bench", listener.local_addr()?);
        let got: Arrivals = Arc::default();
        let sink = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let got = sink.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &got);
                });
            }
        });
        Ok(Sink { url, got })
    }
}
