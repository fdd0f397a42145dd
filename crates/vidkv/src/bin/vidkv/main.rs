//! The `vidkv` command: `eval` measures the schemes on K/V tensors, `roundtrip` writes a
//! quantized-then-dequantized copy of a file; `pack`/`unpack`/`inspect` handle `.vkv` files.
//!
//! Every failure is printed as one `error: …` line on stderr with exit code 1 (clap's own usage
//! errors keep exit code 2); a closed stdout (`vidkv eval | head`) ends the run quietly.

mod args;
mod bench_cmd;
mod builtin;
mod report;
mod vkv_cmd;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;
use vidkv::{
    Error, ErrorKind, KvQuantBackend, KvTensor, Result, ScalarBackend, Scheme, TensorFile,
};

use args::{Cli, Command, EvalArgs, EvalBackend, RoundtripArgs};
use report::Report;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let backend = ScalarBackend;
    let result = match cli.command {
        Command::Eval(a) => match a.backend {
            EvalBackend::Scalar => eval(&backend, &a),
            EvalBackend::Simd => eval_simd(&a),
        },
        Command::Roundtrip(a) => roundtrip(&backend, &a),
        Command::Pack(a) => vkv_cmd::pack(&backend, &a),
        Command::Unpack(a) => vkv_cmd::unpack(&backend, &a),
        Command::Inspect(a) => vkv_cmd::inspect(&a),
        Command::Bench(a) => bench_cmd::bench(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Io(io) if io.kind() == io::ErrorKind::BrokenPipe)
}

fn stdout_error(e: io::Error) -> Error {
    Error::new(ErrorKind::Io(e)).in_file("stdout")
}

/// `vidkv eval`: loads every file and checks every (tensor, scheme) before printing anything, so
/// bad input fails fast and alone, then prints one row per (tensor, scheme).
fn eval<B: KvQuantBackend>(backend: &B, a: &EvalArgs) -> Result<()> {
    if let Some(from) = a.cross_layer {
        return cross_layer(backend, a, from);
    }
    let schemes = args::schemes(&a.schemes)?;
    let options = a.quant.options()?;
    let files = if a.files.is_empty() {
        builtin::samples()
    } else {
        a.files
            .iter()
            .map(|p| TensorFile::read(p))
            .collect::<Result<_>>()?
    };
    let tensors = files.iter().map(kv_tensors).collect::<Result<Vec<_>>>()?;
    for_each_run(&files, &tensors, &schemes, |file, tensor, scheme| {
        vidkv::eval::prepare(file.label(), tensor, scheme, &options).map(drop)
    })?;

    let file_width = files.iter().map(|f| f.label().len()).max().unwrap_or(0);
    let tensor_width = tensors
        .iter()
        .flatten()
        .map(|t| t.name().len())
        .max()
        .unwrap_or(0);
    let layers = if a.no_attention {
        vec![Vec::new(); files.len()]
    } else {
        files
            .iter()
            .map(vidkv::attn_eval::attention_layers)
            .collect::<Result<Vec<_>>>()?
    };
    if schemes.iter().any(|s| s.salient_fraction().is_some()) {
        eprintln!(
            "note: vidkv-stp: no visual/text embeddings given; each token's value norm (summed \
             over KV heads) stands in for the salience score"
        );
    }
    if schemes.contains(&Scheme::H1b) {
        eprintln!(
            "note: h1b: H1B-KV evaluated without the fine-tuning the published method relies on; \
             its key error is that of the decoded direction estimate, while its attention uses \
             the SimHash score estimate (attn_kl of h1b is over those estimated scores)"
        );
    }
    let mut report = Report::new(io::stdout().lock(), a.json, file_width, tensor_width);
    report.header().map_err(stdout_error)?;
    for_each_run(&files, &tensors, &schemes, |file, tensor, scheme| {
        let row = vidkv::evaluate(backend, file.label(), tensor, scheme, &options, a.repeat)?;
        report.row(&row).map_err(stdout_error)
    })?;
    let attn = vidkv::attn_eval::AttnOptions {
        residual: a.residual,
        sinks: a.sinks,
    };
    let mut header = true;
    for (file, layers) in files.iter().zip(&layers) {
        for layer in layers {
            let rows = vidkv::attn_eval::evaluate_attention(
                backend, file, layer, &schemes, &options, &attn,
            )?;
            if header {
                report.attn_header().map_err(stdout_error)?;
                header = false;
            }
            for row in &rows {
                report.attn_row(row).map_err(stdout_error)?;
            }
        }
    }
    Ok(())
}

/// `vidkv eval --backend simd`.
#[cfg(feature = "simd")]
fn eval_simd(a: &EvalArgs) -> Result<()> {
    eval(&vidkv_simd::SimdBackend::new(), a)
}

#[cfg(not(feature = "simd"))]
fn eval_simd(_: &EvalArgs) -> Result<()> {
    Err(Error::from(vidkv_core::Error::Unsupported {
        backend: "simd",
        operation: "eval",
        reason: "this vidkv was built without the `simd` feature (cargo run --features simd)",
    }))
}

/// `vidkv eval --cross-layer FROM`: one row per layer, then the averages over the file.
fn cross_layer<B: KvQuantBackend>(backend: &B, a: &EvalArgs, from: u32) -> Result<()> {
    let schemes = if a.schemes.is_empty() {
        vec![Scheme::Xquant]
    } else {
        args::schemes(&a.schemes)?
    };
    let options = a.quant.options()?;
    let attn = vidkv::attn_eval::AttnOptions {
        residual: a.residual,
        sinks: a.sinks,
    };
    let attn = (!a.no_attention).then_some(&attn);
    let mut out = io::stdout().lock();
    for path in &a.files {
        let file = TensorFile::read(path)?;
        for &scheme in &schemes {
            let rows = vidkv::cross_layer::evaluate_cross_layer(
                backend, &file, scheme, &options, from, attn,
            )?;
            report::cross_layer(&mut out, a.json, &rows).map_err(stdout_error)?;
        }
    }
    Ok(())
}

/// Calls `f` for every (file, tensor, scheme) in report order, stopping at the first error.
fn for_each_run(
    files: &[TensorFile],
    tensors: &[Vec<KvTensor<'_>>],
    schemes: &[Scheme],
    mut f: impl FnMut(&TensorFile, &KvTensor<'_>, Scheme) -> Result<()>,
) -> Result<()> {
    for (file, tensors) in files.iter().zip(tensors) {
        for tensor in tensors {
            for &scheme in schemes {
                f(file, tensor, scheme)?;
            }
        }
    }
    Ok(())
}

/// The file's K/V tensors; none at all is an error, since eval would print nothing.
fn kv_tensors(file: &TensorFile) -> Result<Vec<KvTensor<'_>>> {
    let tensors = file.kv_tensors()?;
    if tensors.is_empty() {
        return Err(Error::new(ErrorKind::NoKvTensors).in_file(file.label()));
    }
    Ok(tensors)
}

/// `vidkv roundtrip IN OUT --scheme S`.
fn roundtrip<B: KvQuantBackend>(backend: &B, a: &RoundtripArgs) -> Result<()> {
    let scheme = vidkv::parse_scheme(&a.scheme)?;
    let options = a.quant.options()?;
    let input = TensorFile::read(&a.input)?;
    let out = vidkv::roundtrip(backend, &input, scheme, &options)?;
    let label = a.output.display().to_string();
    std::fs::write(&a.output, &out.bytes)
        .map_err(|e| Error::new(ErrorKind::Io(e)).in_file(&label))?;
    let mut stdout = io::stdout().lock();
    writeln!(
        stdout,
        "{label}: {} K/V tensors quantized with {} (group {}), {} other tensors copied",
        out.quantized.len(),
        scheme.name(),
        options.group.tokens(),
        out.copied
    )
    .map_err(stdout_error)
}
