//! Offline admin commands: `kiln verify` (scrub every record with a progress bar) and
//! `kiln status` (ask a running server's `/status` page).

use crate::cas;
use crate::config::Config;
use crate::setup::{self, SetupError};
use crate::storage::{Engine, VerifyReport};
use std::fmt::Write as _;
use std::time::Instant;

/// Scrubs the store of `config`: record checksums, and SHA-256 of every CAS blob against its
/// key ([`cas::scrub::SCRUB`]). Takes the data directory's lock, so it refuses to run beside a live server.
pub fn verify(config: &Config) -> Result<VerifyReport, SetupError> {
    let _lock = setup::lock_data_dir(config)?;
    let engine = Engine::open(setup::engine_config(config)?)?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "verify [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} {msg}",
        )
        .expect("static template"),
    );
    let started = Instant::now();
    let segment_bytes = engine.config().segment_size;
    let report = engine.verify(
        |p| {
            bar.set_length(u64::from(p.segments_total) * segment_bytes);
            bar.set_position(p.bytes_done);
            bar.set_message(format!("{} records", p.records));
        },
        Some(cas::scrub::SCRUB),
    );
    bar.finish_and_clear();
    tracing::info!(
        segments = report.segments,
        records = report.records,
        bytes = report.bytes,
        corrupt = report.corrupt_records,
        sha256_failures = report.check_failures,
        seconds = started.elapsed().as_secs_f64(),
        "verify finished"
    );
    Ok(report)
}

/// A one-paragraph summary of a verify report.
pub fn describe(report: &VerifyReport) -> String {
    let mut s = format!(
        "{} segments, {} records, {} payload bytes checked ({} bytes of blob content): {} corrupt records, {} CAS blobs with a wrong SHA-256, {} index entries dropped",
        report.segments,
        report.records,
        report.bytes,
        report.logical_bytes,
        report.corrupt_records,
        report.check_failures,
        report.dropped_entries,
    );
    if report.torn_tail_regions > 0 {
        let _ = write!(
            s,
            "; unacknowledged torn tail: {} bytes in {} regions (after the last record the index references in their segment: writes a crash interrupted before they were acknowledged, or records already dropped from the index; nothing served depends on them, not counted as corruption)",
            report.torn_tail_bytes, report.torn_tail_regions
        );
    }
    s
}

/// The verdict of `kiln verify` (its exit status): `Err` with what to tell the operator when
/// it found real damage. A torn unacknowledged tail alone is not damage.
pub fn outcome(report: &VerifyReport) -> Result<(), String> {
    if !report.damaged() {
        return Ok(());
    }
    Err(format!(
        "verify found damaged data; {} index entries that pointed at it were dropped, so FindMissingBlobs now reports those blobs missing and clients upload them again (damaged records no entry points at are never served)",
        report.dropped_entries
    ))
}

/// Fetches `/status` (or `/status.json`) from a running server's metrics address
/// (`HOST:PORT`): the figures of the status page.
pub async fn status(addr: &str, json: bool) -> Result<String, String> {
    http_get(addr, if json { "/status.json" } else { "/status" }).await
}

/// GETs `path` from kiln's metrics endpoint at `addr` and returns the body of a 200 answer.
pub async fn http_get(addr: &str, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot reach kiln's metrics endpoint at {addr}: {e}"))?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    match out.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
        {
            Ok(body.to_string())
        }
        _ => Err(format!(
            "unexpected answer from {addr}: {}",
            out.lines().next().unwrap_or("")
        )),
    }
}
