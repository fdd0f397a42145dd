//! Prints eval rows as an aligned table or as JSON lines, one row at a time so that long runs show
//! progress.

use std::io::{self, Write};

use vidkv::EvalRow;

/// Output format of `vidkv eval`.
#[derive(Debug)]
pub struct Report<W: Write> {
    out: W,
    json: bool,
    file_width: usize,
    tensor_width: usize,
}

impl<W: Write> Report<W> {
    /// A report whose columns fit the longest file label and tensor name.
    pub fn new(out: W, json: bool, file_width: usize, tensor_width: usize) -> Self {
        Self {
            out,
            json,
            file_width: file_width.max("file".len()),
            tensor_width: tensor_width.max("tensor".len()),
        }
    }

    /// Prints the column names (table form only).
    pub fn header(&mut self) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        let (fw, tw) = (self.file_width, self.tensor_width);
        writeln!(
            self.out,
            "{:<fw$}  {:<tw$}  kind  {:<11}  {:>9}  {:>9}  {:>9}  {:>8}  {:>8}",
            "file",
            "tensor",
            "scheme",
            "bits/elem",
            "remainder",
            "rel_error",
            "enc GB/s",
            "dec GB/s"
        )
    }

    /// Prints one row and flushes it.
    pub fn row(&mut self, r: &EvalRow) -> io::Result<()> {
        if self.json {
            let line = serde_json::to_string(r).map_err(io::Error::other)?;
            writeln!(self.out, "{line}")?;
        } else {
            let (fw, tw) = (self.file_width, self.tensor_width);
            writeln!(
                self.out,
                "{:<fw$}  {:<tw$}  {:<4}  {:<11}  {:>9.4}  {:>9}  {:>9.5}  {:>8.3}  {:>8.3}",
                r.file,
                r.tensor,
                r.kind,
                r.scheme,
                r.bits_per_element,
                r.remainder_tokens,
                r.rel_error,
                r.encode_gb_per_s,
                r.decode_gb_per_s
            )?;
        }
        self.out.flush()
    }
}
