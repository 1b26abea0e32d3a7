//! The `oxtarget` daemon and its command-line client.

fn main() {
    eprintln!("oxtarget: the daemon is not built yet; see README.md");
    std::process::exit(2);
}
