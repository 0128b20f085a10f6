//! Relinks capsa when the list of functions laid out first changes (see
//! link/cc, which .cargo/config.toml makes the linker on x86-64 Linux).

fn main() {
    for f in ["link/cc", "link/names.awk", "link/startup-order.txt"] {
        println!("cargo:rerun-if-changed={f}");
    }
}
