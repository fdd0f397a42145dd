//! Prints eval rows as an aligned table or as JSON lines, one row at a time so that long runs show
//! progress.

use std::io::{self, Write};

use vidkv::EvalRow;
use vidkv::attn_eval::AttnRow;

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

    /// Prints the column names of the attention lines (table form only).
    pub fn attn_header(&mut self) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        let fw = self.file_width;
        writeln!(
            self.out,
            "\nattention through the cache (queries at the last positions, causal):\n\
             {:<fw$}  layer  {:<11}  {:>6}  {:>5}  {:>7}  {:>10}  {:>14}  {:>14}  {:>10}",
            "file",
            "scheme",
            "R",
            "S",
            "queries",
            "cache bits",
            "attn_rel_error",
            "(worst)",
            "attn_kl"
        )
    }

    /// Prints one attention line and flushes it.
    pub fn attn_row(&mut self, r: &AttnRow) -> io::Result<()> {
        if self.json {
            let line = serde_json::to_string(r).map_err(io::Error::other)?;
            writeln!(self.out, "{line}")?;
        } else {
            let fw = self.file_width;
            writeln!(
                self.out,
                "{:<fw$}  {:>5}  {:<11}  {:>6}  {:>5}  {:>7}  {:>10.4}  {:>14.5}  {:>14.5}  {:>10.2e}",
                r.file,
                r.layer,
                r.scheme,
                r.residual,
                r.sinks,
                r.queries,
                r.cache_bits_per_element,
                r.attn_rel_error,
                r.attn_rel_error_max,
                r.attn_kl
            )?;
        }
        self.out.flush()
    }
}
