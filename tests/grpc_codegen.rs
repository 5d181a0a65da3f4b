//! The checked-in `proto/generated/demo.rs` is what `proto/demo.proto`
//! compiles to. Code generation is pure Rust (protox parses the .proto,
//! tonic-prost-build writes the Rust), so it needs no `protoc`; the generated
//! file is checked in so that building the example and tests needs no code
//! generation at all.
//!
//! After editing the .proto (or upgrading tonic/prost), regenerate with
//!
//! ```sh
//! UPDATE_GENERATED=1 cargo test --test grpc_codegen
//! ```

use std::path::{Path, PathBuf};

#[test]
fn generated_code_matches_the_proto() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fds = protox::compile([root.join("proto/demo.proto")], [root.join("proto")])
        .expect("proto/demo.proto compiles");
    let out: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpc_codegen");
    std::fs::create_dir_all(&out).unwrap();
    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        .out_dir(&out)
        .compile_fds(fds)
        .expect("tonic-prost-build generates code");
    let generated = std::fs::read_to_string(out.join("demo.rs")).unwrap();
    let checked_in_path = root.join("proto/generated/demo.rs");
    if std::env::var_os("UPDATE_GENERATED").is_some() {
        std::fs::write(&checked_in_path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
    assert!(
        generated == checked_in,
        "proto/generated/demo.rs is out of date with proto/demo.proto; \
         regenerate it with `UPDATE_GENERATED=1 cargo test --test grpc_codegen`"
    );
}
