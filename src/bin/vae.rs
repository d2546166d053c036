use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = vae_wgpu::cli::Cli::parse();
    match vae_wgpu::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
