//! VNC tickets (docs/proxmox.md §3.2, §12): `PVEVNC:%08X::base64(sig)` where the signature
//! (HMAC-SHA256 here instead of RSA) covers `PVEVNC:TIME:authid:/vms/VMID[:PORT]`.

use base64::Engine;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Signs and verifies vnc tickets with a per-process random key.
pub struct Signer {
    key: hmac::Key,
}

impl Signer {
    /// A signer with a fresh random key.
    pub fn new() -> Result<Signer, String> {
        let rng = SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(|_| "rng failed")?;
        Ok(Signer { key })
    }

    fn data(time: u64, authid: &str, path: &str, port: Option<u16>) -> String {
        match port {
            Some(p) => format!("PVEVNC:{time:08X}:{authid}:{path}:{p}"),
            None => format!("PVEVNC:{time:08X}:{authid}:{path}"),
        }
    }

    /// Assembles a ticket minted at unix time `time`. `port`: None = old format (no port).
    pub fn assemble(&self, time: u64, authid: &str, path: &str, port: Option<u16>) -> String {
        let sig = hmac::sign(&self.key, Self::data(time, authid, path, port).as_bytes());
        format!(
            "PVEVNC:{time:08X}::{}",
            base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
        )
    }

    /// Verifies `ticket` (a leading `XXXXXXXX:` password prefix is stripped first),
    /// strict age bounds −20 < age < 40 s.
    pub fn verify(
        &self,
        ticket: &str,
        authid: &str,
        path: &str,
        port: Option<u16>,
        now: u64,
    ) -> bool {
        let t = strip_prefix(ticket);
        let Some(rest) = t.strip_prefix("PVEVNC:") else {
            return false;
        };
        let Some((ts, sig_b64)) = rest.split_once("::") else {
            return false;
        };
        if ts.len() != 8
            || !ts
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        {
            return false;
        }
        let Ok(time) = u64::from_str_radix(ts, 16) else {
            return false;
        };
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig_b64) else {
            return false;
        };
        if hmac::verify(
            &self.key,
            Self::data(time, authid, path, port).as_bytes(),
            &sig,
        )
        .is_err()
        {
            return false;
        }
        let age = now as i64 - time as i64;
        age > -20 && age < 40
    }
}

/// Strips the `^.{8}:` password prefix of new-style tickets (`^.{8}:(PVEVNC:.*)$`).
pub fn strip_prefix(ticket: &str) -> &str {
    let mut idx = ticket.char_indices();
    if let Some((i, ':')) = idx.nth(8) {
        let rest = &ticket[i + 1..];
        if rest.starts_with("PVEVNC:") {
            return rest;
        }
    }
    ticket
}

/// 8 chars, each uniformly from `!` (0x21) ..= `` ` `` (0x60) (TK generate_vnc_password).
pub fn vnc_password() -> Result<String, String> {
    let rng = SystemRandom::new();
    let mut out = String::new();
    while out.len() < 8 {
        let mut b = [0u8; 1];
        rng.fill(&mut b).map_err(|_| "rng failed")?;
        // 64 values: rejection-free since 256 % 64 == 0
        out.push((0x21 + (b[0] & 0x3f)) as char);
    }
    Ok(out)
}

/// Random bytes from the system RNG (zeros if it fails, which it does not on Linux).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let _ = SystemRandom::new().fill(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_binding() {
        let s = Signer::new().expect("signer");
        let t = s.assemble(1000, "a@pve!t", "/vms/100", Some(5900));
        assert!(s.verify(&t, "a@pve!t", "/vms/100", Some(5900), 1000));
        assert!(s.verify(
            &format!("Ab3!x:Z9:{t}"),
            "a@pve!t",
            "/vms/100",
            Some(5900),
            1039
        ));
        assert!(!s.verify(&t, "a@pve!t", "/vms/100", Some(5900), 1040));
        assert!(!s.verify(&t, "a@pve!t", "/vms/100", Some(5900), 980));
        assert!(s.verify(&t, "a@pve!t", "/vms/100", Some(5900), 981));
        assert!(!s.verify(&t, "b@pve!t", "/vms/100", Some(5900), 1000));
        assert!(!s.verify(&t, "a@pve!t", "/vms/101", Some(5900), 1000));
        assert!(!s.verify(&t, "a@pve!t", "/vms/100", Some(5901), 1000));
        let pw = vnc_password().expect("pw");
        assert_eq!(pw.len(), 8);
        assert!(pw.bytes().all(|b| (0x21..=0x60).contains(&b)));
    }
}
