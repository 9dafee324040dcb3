// The dashboard build is embedded with include_dir, which cannot tell cargo about the files
// it reads: rebuild the crate when they change.
fn main() {
    println!("cargo:rerun-if-changed=dashboard-dist");
}
