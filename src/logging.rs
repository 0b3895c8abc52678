//! Log output that can never take the agent down: a log pipe whose reader went away (a
//! restarted shipper, a closed terminal, `| head`) makes writes fail, and a failed write must
//! neither panic (as `eprintln!` does) nor stop the agent from obeying signals. Failed writes
//! are dropped and counted (`etcd_sync_log_write_errors_total`).

use std::io::{self, Write};

use etcd_sync_engine::metrics::LOG_WRITE_ERRORS;

/// A writer to a stream that swallows (and counts) its errors.
pub struct Lossy<W>(pub W);

impl<W: Write> Write for Lossy<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.write_all(buf) {
            Ok(()) => {}
            Err(_) => {
                LOG_WRITE_ERRORS.inc();
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// Standard error, lossy: for the log.
pub fn stderr() -> Lossy<io::Stderr> {
    Lossy(io::stderr())
}

/// Writes a line of a command's report to standard output; a reader that went away (`sync
/// verify | head -1`) ends nothing but the output.
pub fn say(line: impl std::fmt::Display) {
    let _ = writeln!(io::stdout().lock(), "{line}");
}
