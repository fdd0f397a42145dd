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

/// The `vidkv eval --cross-layer` report: one row per layer (JSON lines with `json`), then the
/// averages over the layers (equal weight: every layer has the same shape in a model dump).
pub fn cross_layer(
    out: &mut impl Write,
    json: bool,
    rows: &[vidkv::cross_layer::CrossLayerRow],
) -> io::Result<()> {
    if json {
        for r in rows {
            let line = serde_json::to_string(r).map_err(io::Error::other)?;
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    let Some(first) = rows.first() else {
        return Ok(());
    };
    writeln!(
        out,
        "{} — {} (own codes | shared)",
        first.file, first.scheme
    )?;
    writeln!(
        out,
        "{:>5} {:>6} {:>15} {:>15} {:>17} {:>17} {:>17}",
        "layer",
        "lender",
        "code bits",
        "bits all-in",
        "key rel_error",
        "value rel_error",
        "attn rel_error"
    )?;
    let opt = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
    for r in rows {
        writeln!(
            out,
            "{:>5} {:>6} {:>7.3}|{:<7.3} {:>7.3}|{:<7.3} {:>8.4}|{:<8.4} {:>8.4}|{:<8.4} {:>8}|{:<8}",
            r.layer,
            r.lender.map_or_else(|| "-".to_owned(), |l| l.to_string()),
            r.code_bits,
            r.code_bits_shared,
            r.bits,
            r.bits_shared,
            r.key_error,
            r.key_error_shared,
            r.value_error,
            r.value_error_shared,
            opt(r.attn_error),
            opt(r.attn_error_shared),
        )?;
    }
    let n = rows.len() as f64;
    let mean =
        |f: &dyn Fn(&vidkv::cross_layer::CrossLayerRow) -> f64| rows.iter().map(f).sum::<f64>() / n;
    let attn: Vec<_> = rows
        .iter()
        .filter_map(|r| r.attn_error.zip(r.attn_error_shared))
        .collect();
    let attn_mean = |i: usize| {
        (!attn.is_empty()).then(|| {
            attn.iter()
                .map(|p| if i == 0 { p.0 } else { p.1 })
                .sum::<f64>()
                / attn.len() as f64
        })
    };
    writeln!(
        out,
        "{:>5} {:>6} {:>7.3}|{:<7.3} {:>7.3}|{:<7.3} {:>8.4}|{:<8.4} {:>8.4}|{:<8.4} {:>8}|{:<8}",
        "mean",
        rows.iter().filter(|r| r.lender.is_some()).count(),
        mean(&|r| r.code_bits),
        mean(&|r| r.code_bits_shared),
        mean(&|r| r.bits),
        mean(&|r| r.bits_shared),
        mean(&|r| r.key_error),
        mean(&|r| r.key_error_shared),
        mean(&|r| r.value_error),
        mean(&|r| r.value_error_shared),
        opt(attn_mean(0)),
        opt(attn_mean(1)),
    )?;
    writeln!(out)
}
