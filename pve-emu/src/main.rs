//! `pve-emu`: a Proxmox VE console API emulator (pveproxy :8006 for the console
//! endpoints) used by nexor-relay's tests. It is deliberately independent of the relay's
//! code: it is the other side that catches the relay's bugs. See docs/proxmox.md §11.
//!
//! Start: `pve-emu --listen 127.0.0.1:0 --token 'relay@pve!console=SECRET'`; it prints
//! `pve-emu listening on 127.0.0.1:PORT fingerprint AB:CD:...` and serves until killed.
//! Threads and blocking sockets only: one thread per connection (plus two per websocket).

mod api;
mod app;
mod backend;
mod http;
mod stats;
mod ticket;
mod tls;
mod ws;

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::thread;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match app::Config::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(cfg) {
        eprintln!("pve-emu: {e}");
        std::process::exit(1);
    }
}

fn run(cfg: app::Config) -> Result<(), String> {
    let identity = tls::identity(cfg.cert.as_deref(), cfg.key.as_deref())?;
    let signer = ticket::Signer::new()?;
    let listener =
        TcpListener::bind(cfg.listen).map_err(|e| format!("bind {}: {e}", cfg.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let fingerprint = identity.fingerprint.clone();
    let app = Arc::new(app::App::new(cfg, identity, signer));
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "pve-emu listening on {addr} fingerprint {fingerprint}");
        let _ = out.flush();
    }
    for sock in listener.incoming() {
        match sock {
            Ok(s) => {
                let app = Arc::clone(&app);
                thread::spawn(move || api::serve(app, s));
            }
            Err(e) => {
                eprintln!("pve-emu: accept: {e}");
                thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
    Ok(())
}
