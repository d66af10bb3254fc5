//! Serves demo.v1.Items on one address, on a current-thread tokio runtime (bench/grpc.sh's gRPC
//! upstream):
//!
//! ```text
//! cargo run --release -p grpc-demo --example serve -- 127.0.0.1:50051 [api.pb]
//! ```
//!
//! With a second argument, the descriptor set (`grpc_demo::DESCRIPTORS`) is written to that file
//! first. Prints `listening on ADDR` once the socket is bound.

use std::io::Write;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), descriptors, None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: serve ADDR [DESCRIPTOR-SET-FILE]");
        std::process::exit(2);
    };
    if let Some(path) = descriptors
        && let Err(err) = std::fs::write(&path, grpc_demo::DESCRIPTORS)
    {
        eprintln!("writing {path}: {err}");
        std::process::exit(1);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        println!("listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        grpc_demo::serve(listener).await
    });
    if let Err(err) = result {
        eprintln!("serve {addr}: {err}");
        std::process::exit(1);
    }
}
