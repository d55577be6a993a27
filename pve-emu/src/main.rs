//! Proxmox VE console emulator for tests (Proxmox upstream issue). Not written yet.

fn main() {
    eprintln!("pve-emu: not implemented yet");
    std::process::exit(2);
}
