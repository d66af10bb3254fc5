//! Compiles proto/demo/v1/items.proto without protoc: protox (a protobuf compiler in Rust)
//! produces the descriptor set, which feeds tonic's code generator and is also written to
//! OUT_DIR as `descriptors.pb` for the crate's `DESCRIPTORS` (what grpc-transcode is given).

use std::env;
use std::path::PathBuf;

use prost::Message;

fn main() {
    println!("cargo:rerun-if-changed=proto");
    let mut compiler = protox::Compiler::new(["proto"]).unwrap_or_else(|err| panic!("{err:?}"));
    compiler
        .include_imports(true)
        .open_files(["proto/demo/v1/items.proto"])
        .unwrap_or_else(|err| panic!("{err:?}"));
    // Encoded by protox, which keeps the method options' extensions (the google.api.http
    // annotations); prost's FileDescriptorSet type would drop them.
    let encoded = compiler.encode_file_descriptor_set();
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("descriptors.pb"), &encoded).expect("cannot write descriptors.pb");
    let descriptors = prost_types::FileDescriptorSet::decode(encoded.as_slice())
        .expect("protox encodes a valid FileDescriptorSet");
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .compile_fds(descriptors)
        .expect("tonic code generation failed");
}
