//! The console page, for people trying the relay: `demo` turns it on (or
//! `[server] console_page = true`). `GET /` serves a page that opens the
//! console whose ticket is in the URL fragment (never sent to a server,
//! never in a log):
//!
//! ```text
//! https://relay:8443/#console=vnc&ticket=<JWT>                 noVNC
//! https://relay:8443/#console=term&ticket=<JWT>                xterm.js, raw bytes (demo)
//! https://relay:8443/#console=term&proto=termproxy&ticket=<JWT> xterm.js, Proxmox termproxy
//! ```
//!
//! noVNC 1.7 and xterm.js 6 come from `console_assets` (a folder holding
//! the npm packages as `novnc/` and `xterm/`), loaded into memory at start
//! so no request ever touches the file system, or else from pinned CDN
//! URLs. Nothing else is served: no redirects, no directory listings, no
//! arbitrary files.

use std::collections::HashMap;
use std::path::Path;

/// Pinned CDN copies, used when no local copy is configured.
pub const NOVNC_CDN: &str = "https://cdn.jsdelivr.net/npm/@novnc/novnc@1.7.0";
pub const XTERM_CDN: &str = "https://cdn.jsdelivr.net/npm/@xterm/xterm@6.0.0";
/// Local copies are served under these prefixes.
const NOVNC_LOCAL: &str = "/assets/novnc";
const XTERM_LOCAL: &str = "/assets/xterm";
/// The most bytes of assets loaded (noVNC + xterm.js are ~3 MiB).
const MAX_ASSET_BYTES: usize = 32 << 20;

/// A response the page handler makes.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub cache: &'static str,
}

/// The page and its assets, ready in memory.
#[derive(Default)]
pub struct Page {
    files: HashMap<String, (Vec<u8>, &'static str)>,
    novnc_base: String,
    xterm_base: String,
    console_path: String,
}

fn content_type(name: &str) -> Option<&'static str> {
    let ext = name.rsplit('.').next()?;
    Some(match ext {
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        _ => return None,
    })
}

fn load_tree(
    root: &Path,
    prefix: &str,
    out: &mut HashMap<String, (Vec<u8>, &'static str)>,
    total: &mut usize,
) -> Result<(), String> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for e in entries.flatten() {
            let p = e.path();
            let ft = e.file_type().map_err(|e| e.to_string())?;
            if ft.is_symlink() {
                continue;
            }
            if ft.is_dir() {
                stack.push(p);
                continue;
            }
            let Ok(rel) = p.strip_prefix(root) else {
                continue;
            };
            let Some(rel) = rel.to_str() else { continue };
            let Some(ct) = content_type(rel) else {
                continue;
            };
            let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            *total += bytes.len();
            if *total > MAX_ASSET_BYTES {
                return Err("server.console_assets: more than 32 MiB of assets".into());
            }
            out.insert(format!("{prefix}/{rel}"), (bytes, ct));
        }
    }
    Ok(())
}

impl Page {
    /// Builds the page; `assets` is the local copy of the npm packages.
    pub fn new(console_path: &str, assets: Option<&Path>) -> Result<Page, String> {
        let mut files = HashMap::new();
        let mut total = 0;
        let (mut novnc_base, mut xterm_base) = (NOVNC_CDN.to_string(), XTERM_CDN.to_string());
        if let Some(dir) = assets {
            let novnc = dir.join("novnc");
            let xterm = dir.join("xterm");
            if !novnc.join("core/rfb.js").is_file() || !xterm.join("lib/xterm.js").is_file() {
                return Err(format!(
                    "server.console_assets: {} must hold novnc/core/rfb.js and xterm/lib/xterm.js (npm packages @novnc/novnc and @xterm/xterm)",
                    dir.display()
                ));
            }
            load_tree(&novnc, NOVNC_LOCAL, &mut files, &mut total)?;
            load_tree(&xterm, XTERM_LOCAL, &mut files, &mut total)?;
            novnc_base = NOVNC_LOCAL.into();
            xterm_base = XTERM_LOCAL.into();
        }
        Ok(Page {
            files,
            novnc_base,
            xterm_base,
            console_path: console_path.to_string(),
        })
    }

    fn html(&self) -> String {
        format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nexor-relay console</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{x}/css/xterm.css">
<style>
html,body{{margin:0;height:100%;background:#111;color:#ddd;font:14px system-ui,sans-serif}}
#bar{{padding:6px 10px;background:#222;border-bottom:1px solid #333}}
#screen{{position:absolute;top:33px;left:0;right:0;bottom:0}}
</style></head>
<body><div id="bar">nexor-relay · <span id="status">connecting…</span></div><div id="screen"></div>
<script src="{x}/lib/xterm.js"></script>
<script type="module" src="/console.js"></script>
</body></html>
"#,
            x = self.xterm_base
        )
    }

    fn script(&self) -> String {
        format!(
            r#"// Opens the console named in the URL fragment (#console=vnc|term&ticket=…).
import RFB from "{n}/core/rfb.js";
const params = new URLSearchParams(location.hash.slice(1));
const ticket = params.get("ticket") || "";
const kind = params.get("console") || "vnc";
const proto = params.get("proto") || "raw";
const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + {path:?};
const protocols = ["binary", "nexor.ticket." + ticket];
const status = document.getElementById("status");
const screen = document.getElementById("screen");
window.nexor = {{ kind, events: [] }};
if (kind === "vnc") {{
  const rfb = new RFB(screen, url, {{ wsProtocols: protocols, shared: true }});
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", () => {{
    status.textContent = "connected" + (window.nexor.desktopName ? ": " + window.nexor.desktopName : "");
    window.nexor.events.push("connect");
  }});
  rfb.addEventListener("desktopname", (e) => {{ window.nexor.desktopName = e.detail.name; status.textContent = "connected: " + e.detail.name; }});
  rfb.addEventListener("disconnect", (e) => {{ status.textContent = e.detail.clean ? "disconnected" : "connection lost"; window.nexor.events.push(e.detail.clean ? "disconnect-clean" : "disconnect-error"); }});
  window.nexor.rfb = rfb;
}} else {{
  const term = new Terminal({{ cursorBlink: true }});
  term.open(screen);
  const ws = new WebSocket(url, protocols);
  ws.binaryType = "arraybuffer";
  const enc = new TextEncoder();
  const send = (s) => {{ if (ws.readyState === 1) ws.send(enc.encode(s)); }};
  ws.onopen = () => {{
    status.textContent = "connected"; window.nexor.events.push("connect");
    if (proto === "termproxy") {{
      send("1:" + term.cols + ":" + term.rows + ":");
      setInterval(() => send("2"), 30000);
    }}
  }};
  ws.onmessage = (e) => term.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data));
  ws.onclose = (e) => {{ status.textContent = "disconnected (" + e.code + ")"; window.nexor.events.push("close-" + e.code); }};
  term.onData((d) => {{
    if (proto === "termproxy") send("0:" + enc.encode(d).length + ":" + d); else send(d);
  }});
  window.nexor.term = term;
}}
"#,
            n = self.novnc_base,
            path = self.console_path
        )
    }

    /// Answers a GET for `path`, or None (404).
    pub fn get(&self, path: &str) -> Option<Response> {
        match path {
            "/" | "/index.html" => Some(Response {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: self.html().into_bytes(),
                cache: "no-store",
            }),
            "/console.js" => Some(Response {
                status: 200,
                content_type: "text/javascript; charset=utf-8",
                body: self.script().into_bytes(),
                cache: "no-store",
            }),
            p => self.files.get(p).map(|(b, ct)| Response {
                status: 200,
                content_type: ct,
                body: b.clone(),
                cache: "public, max-age=3600",
            }),
        }
    }

    /// The Content-Security-Policy of every page response.
    pub fn csp(&self) -> String {
        let cdn = if self.files.is_empty() {
            " https://cdn.jsdelivr.net"
        } else {
            ""
        };
        format!(
            "default-src 'self'{cdn}; script-src 'self'{cdn}; style-src 'self' 'unsafe-inline'{cdn}; img-src 'self' data: blob:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_page_and_only_known_files() {
        let dir = std::env::temp_dir().join(format!("nexor-page-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("novnc/core")).unwrap();
        std::fs::create_dir_all(dir.join("xterm/lib")).unwrap();
        std::fs::write(dir.join("novnc/core/rfb.js"), "export default 1;").unwrap();
        std::fs::write(dir.join("novnc/secret.txt"), "no").unwrap();
        std::fs::write(dir.join("xterm/lib/xterm.js"), "var Terminal;").unwrap();
        let p = Page::new("/console", Some(&dir)).unwrap();
        assert!(String::from_utf8(p.get("/").unwrap().body)
            .unwrap()
            .contains("/assets/xterm/lib/xterm.js"));
        assert!(String::from_utf8(p.get("/console.js").unwrap().body)
            .unwrap()
            .contains("import RFB from \"/assets/novnc/core/rfb.js\""));
        assert_eq!(
            p.get("/assets/novnc/core/rfb.js").unwrap().body,
            b"export default 1;"
        );
        for bad in [
            "/assets/novnc/secret.txt",
            "/assets/novnc/../novnc/core/rfb.js",
            "/etc/passwd",
            "/assets/",
            "/assets/novnc/core",
        ] {
            assert!(p.get(bad).is_none(), "{bad}");
        }
        assert!(!p.csp().contains("jsdelivr"));
        let cdn = Page::new("/console", None).unwrap();
        assert!(String::from_utf8(cdn.get("/console.js").unwrap().body)
            .unwrap()
            .contains(NOVNC_CDN));
        assert!(cdn.csp().contains("https://cdn.jsdelivr.net"));
        assert!(Page::new("/console", Some(Path::new("/nonexistent"))).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
