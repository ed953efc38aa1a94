//! Record libtorch's library directory as an rpath so every binary linking this
//! crate loads the same libtorch it was built against, without LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        let lib = std::path::Path::new(&dir).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        // Nothing calls into libtorch_cuda directly, so the linker's --as-needed
        // would drop it, and without its static initialisers libtorch reports no
        // CUDA devices even on a GPU machine. Keep it whenever the wheel has it.
        if lib.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
