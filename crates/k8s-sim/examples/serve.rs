//! Runs a simulator until Ctrl-C and writes its kubeconfig to the path given (default
//! `./sim-kubeconfig`): `KUBECONFIG=./sim-kubeconfig kubectl get pods`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sim-kubeconfig".to_owned());
    let sim = berth_k8s_sim::Sim::start().await?;
    sim.write_kubeconfig(std::path::Path::new(&path))?;
    println!(
        "serving on {} (kubeconfig {path}); Ctrl-C stops",
        sim.base_url()
    );
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
