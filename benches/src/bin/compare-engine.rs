//! `ringmail serve` for the comparison benchmark (`benches/compare`): the engine in
//! its own process, so that its CPU time and memory are measured alone.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let Some(path) = std::env::args().nth(1).map(std::path::PathBuf::from) else {
        eprintln!("usage: compare-engine CONFIG");
        return std::process::ExitCode::from(2);
    };
    let result = ringmail::config::Config::load(&path)
        .map_err(|e| e.to_string())
        .and_then(|config| ringmail::daemon::serve(config, path).map_err(|e| e.to_string()));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("compare-engine: {error}");
            std::process::ExitCode::from(2)
        }
    }
}
