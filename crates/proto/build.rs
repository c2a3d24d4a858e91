//! Compiles `proto/` with protox (pure Rust, so no system `protoc` anywhere) and keeps the
//! encoded descriptor set in `OUT_DIR` for server reflection.
use std::{error::Error, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "order/v1/order.proto",
    "payment/v1/payment.proto",
    "shipping/v1/shipping.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let fds = protox::compile(PROTOS, [&root])?;
    // compile_fds does not write the descriptor set itself: reflection needs it.
    std::fs::write(
        out_dir.join("order_saga_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
