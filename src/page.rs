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
//! arbitrary files. CDN files carry subresource integrity (an import map's
//! `integrity` for noVNC's modules, `integrity` attributes for xterm.js),
//! and the Content-Security-Policy names those exact URLs, not the CDN
//! host. The page drops the ticket from its URL (`history.replaceState`)
//! as soon as it has read it.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Pinned CDN copies, used when no local copy is configured.
pub const NOVNC_CDN: &str = "https://cdn.jsdelivr.net/npm/@novnc/novnc@1.7.0";
pub const XTERM_CDN: &str = "https://cdn.jsdelivr.net/npm/@xterm/xterm@6.0.0";
/// Subresource integrity of every module `core/rfb.js` imports, itself
/// included, as npm publishes noVNC 1.7.0 (and jsDelivr serves it).
pub const NOVNC_SRI: &[(&str, &str)] = &[
    (
        "core/base64.js",
        "sha384-wnNRldeOdKDfLEpYtshEf96jNvFNA0aQUeeLtIe4jmDddk33Zh8stiG9zcZm3uuv",
    ),
    (
        "core/crypto/aes.js",
        "sha384-Crw2BKhc97XbLptZtxwU8kH2VbKnBj1kpwh6cJ/OBRHiOWEgtfVBZA2ORrhtvm/U",
    ),
    (
        "core/crypto/bigint.js",
        "sha384-MaxGc4fHj+agCAh3pdbfaFfsDs4MKAFub8g/pIr7Bt/pztqioJonZfKXO4vWmSb7",
    ),
    (
        "core/crypto/crypto.js",
        "sha384-g1TifhYgzyNfbtZwHjrSJpMVn4nT4VHUdvwtrNYEsMxmPW7NrXMqw3nyhdu4uLVo",
    ),
    (
        "core/crypto/des.js",
        "sha384-iqinAFM4a4xnH5nHbAJgoKCkXnOxr/gfwvv2/MtNHjb2dNkWawPkyGuYxlpErP3c",
    ),
    (
        "core/crypto/dh.js",
        "sha384-oLJQaqgEp/rnajHYq6C97ps21ONaurs+dOX0AU67Yk7J90tsoWnKqrGh84J+FRDK",
    ),
    (
        "core/crypto/md5.js",
        "sha384-quZT1UykU1Pt95IineUZPOUqam38IvZeTa53O0Znl8TWJKlPo5Ka/7YJBzA62sn/",
    ),
    (
        "core/crypto/rsa.js",
        "sha384-P9PmDQ4D+BPxNt5lV31Q+0N7GLnQx/9xKFTnT4r1KTVv7MwhBRqDEPfACI9YqH28",
    ),
    (
        "core/decoders/copyrect.js",
        "sha384-SosGsTuiwC1NPYazMk94vF7fDJ4oBiIe6YItafHSt/8xXfkDtshElsfZtAZqK6Hi",
    ),
    (
        "core/decoders/h264.js",
        "sha384-C8z6GzdlWko44vJHT/XzZK1+C2oMjnqlMEZsYuLrKXKMH6fpB/my3FR9BhAG67R5",
    ),
    (
        "core/decoders/hextile.js",
        "sha384-7YARNe609102pn/P2t2eiJeiZv5aiyzsAfd5APEBCQ6EiDnf9W3svRkdxqXKRFWI",
    ),
    (
        "core/decoders/jpeg.js",
        "sha384-vJvknqFhrmuEZTLvz2JN89ry+9VWKYroL00lTAYY7RUBxtc+H9q1pzQ42C94eIde",
    ),
    (
        "core/decoders/raw.js",
        "sha384-kcnJreB80OmKD6vlZtzRtbwuXdRI6Z6xv+1W44tVqyJrse9hrelUMSPiqqzWdsIe",
    ),
    (
        "core/decoders/rre.js",
        "sha384-FooinChcLse9qHc0wZNKld6E1mZuVeHEjYajr2TIUMF7Fs4DiLtMCrbCPaMDfKnq",
    ),
    (
        "core/decoders/tight.js",
        "sha384-xT1CPt06yZqKWTRe55549MwzErtz3hkJKTnZc3yZtOXzJhXtx9YCjCQ0uMCqSDN9",
    ),
    (
        "core/decoders/tightpng.js",
        "sha384-01RRCQPP0XXopZoc2NzTsnDTQrc1b/q8XCUljsgP06cXPQOiL7whZSzCakQF0Ui6",
    ),
    (
        "core/decoders/zlib.js",
        "sha384-itOeqDCFAu2u8e+sxCLd4lJP6XIXgb2reeZp0Cw170WOEbHRas7gJCbDzL6M655R",
    ),
    (
        "core/decoders/zrle.js",
        "sha384-rRVoF43wF222SvIGedenHOmoW8xz91SplwDRdheDGWkEnVWCMc9h4NBnCZdWwRJo",
    ),
    (
        "core/deflator.js",
        "sha384-K17xKc24hWUaVVaHnVGXFAKwBYHHlZ3dxgQqrROpc20xb3DVl3uEWgfrx/vMNlXb",
    ),
    (
        "core/display.js",
        "sha384-gzFH1NfOYPEc6LSxpKoOmEEaPJXohFLu++ihYOUGAnPBw6mha2v8e5L35rSvl61T",
    ),
    (
        "core/encodings.js",
        "sha384-zpIlo/VphqBJvRbWI2e7RKZUDTpNHpMWQrmoDKtiVEWUU7VeCFi+hj+py7PtidTM",
    ),
    (
        "core/inflator.js",
        "sha384-ZGxOkgVXTSY/OAqtUz6cWUDo4EtHZDx3lWMEVXwpkrrh17onmVo40esQcQ2xHYxt",
    ),
    (
        "core/input/domkeytable.js",
        "sha384-Qugk4fZnVv9l0VYtZVamS/RMjkLhNrci3jnyKfyqF7B72jc224HSy5RclIT6rPzb",
    ),
    (
        "core/input/fixedkeys.js",
        "sha384-+JUyB21c9EVQAkPb1dvtY2azR8gC65cmiusp+EOvHkryzK2u7/+bHpbvfsbg95hV",
    ),
    (
        "core/input/gesturehandler.js",
        "sha384-33m8Jk+Asx0fJ/GMV4WJF+wjLn9ZAGKuBW6GPw5Mpvh55TSEyfLem5YAHVbvHF7t",
    ),
    (
        "core/input/keyboard.js",
        "sha384-9nHEN+k1tzYFETQA1CTwmRy4/gUv/AayohTz/GnowyZNYj4r2450qVtc4lUsL0wa",
    ),
    (
        "core/input/keysym.js",
        "sha384-bh0f8sdLtjZP25bD51JKOfuqxdom8Nef2W1sC4flhujLYnfYDGyg3naoUFxFFPJ7",
    ),
    (
        "core/input/keysymdef.js",
        "sha384-Hoj8979+wX+tON5SQQXk4kyIkBRR8R+vxhJIC6Tdy9XVvM9n4WFFsFEUeqpqlX/I",
    ),
    (
        "core/input/util.js",
        "sha384-lB7Rf8IXDwJAs7XMlHlUrDP0I6n08aU52AKroe3qe1pEVXQErV+wgvURyfsunhPE",
    ),
    (
        "core/input/vkeys.js",
        "sha384-HV5BF3Se+EFGkPGxTsblU0ESPdhnr67IHMKb4E4+4CVP15U2r5LompwWhH97Zr36",
    ),
    (
        "core/input/xtscancodes.js",
        "sha384-8C5+v1/6e2ilSRx6lBFyojOWeRuwb55xjRmpBPEdCUlO9gksMANyNklK8jRtVxZO",
    ),
    (
        "core/ra2.js",
        "sha384-vq5URuVQ9hPs9zCe2V1++m4pLQeI7tc9QSAbTA5Vn2j9WF5WWES8+905cXZMmBon",
    ),
    (
        "core/rfb.js",
        "sha384-V7gKNqsm1e9rl3OTz4WzglGogw8s16KnfgmTeSQM9VprnC7hGdee5gsLxgaL1iux",
    ),
    (
        "core/util/browser.js",
        "sha384-xemLnSITMx8GAcJLLSDBQF1hM4sD5iQhwyeRBaW1PjMriTQ3J0nB3BN4l7Qu4mTt",
    ),
    (
        "core/util/cursor.js",
        "sha384-3eDZrLoBmX8ZBTqblvNsasWdFKgREYY6a8V/x26AqkJ0hhU7/ImST+6UKvAqtV7g",
    ),
    (
        "core/util/element.js",
        "sha384-ag/6L6ZuwwAQkafiaqeu9NBM/6JebtuWkN9T93TvwAEddiCJVs1bS+pmrC7sQIGC",
    ),
    (
        "core/util/events.js",
        "sha384-Xv9jJhnUB9mJ5zMbSVDVeP6qfIlQo+WlklMjMFh4YW5XKxmUWxCPzK1mfjcXuN2z",
    ),
    (
        "core/util/eventtarget.js",
        "sha384-c3/B/XnTaPOBdZeQ2QtPKCwaswqZ8jMZEcHNPhVmwPHrfIjmzQJkXw4rsTf/nFNH",
    ),
    (
        "core/util/int.js",
        "sha384-CwZS4SkfKzurejVCXsv2VwiIEoXB+rfCb3CBWxX97HOTVoEhEuMSk4bk1/0TbkzJ",
    ),
    (
        "core/util/logging.js",
        "sha384-PSW8HPLN8LP37Q6o3z3UgsYV7ECmNzqDgEtHHzel85rwcQqYG8/nmMsdY05lpAPA",
    ),
    (
        "core/util/strings.js",
        "sha384-P+maNGJWgcJ2cT8n12U88H/uETpRDcePMS+AqN1x/udOyNiz9piQlr0iA5lwq7b/",
    ),
    (
        "core/websock.js",
        "sha384-94KRbrnNFb1Tp/zBeB0qxfOhTV+o/YY5mNHJqQSvB3aQOxPiMiaKALCTsEoSn4qU",
    ),
    (
        "vendor/pako/lib/utils/common.js",
        "sha384-G/Gr9pOmNszIbeMQVYIXnF/OSA3uXguaIqrCCr05iqgbGZi9Fh0/Sa1WbCQLjgbk",
    ),
    (
        "vendor/pako/lib/zlib/adler32.js",
        "sha384-vEAzZBXmlXEVmIg2MrayFS/P5WAyTEdvtlnELXHYLHDHglkkc+VEETNorq9kEzp7",
    ),
    (
        "vendor/pako/lib/zlib/crc32.js",
        "sha384-8aB+gaFx5AyeAFZsyugD7NfaJD/Kbm82r4K7vKFkN3p7P4Mk6AfFxxSRE5PGFKY3",
    ),
    (
        "vendor/pako/lib/zlib/deflate.js",
        "sha384-Pll4AS1IOU1HePm5R6Zk+4sGfA8wWxardzIcJvi7+9//JvQ/DvkZTsOCELBDTlVs",
    ),
    (
        "vendor/pako/lib/zlib/inffast.js",
        "sha384-7lhzwHAf8vZFOb5cOqCHDQOU5+hDGr843bw4PHWbGghdpoScoFgbMJOb30xgBr3i",
    ),
    (
        "vendor/pako/lib/zlib/inflate.js",
        "sha384-b4OC1pwVOJUIvyWLN3qIXpKj5kVZs1lQvquQ35OAO7yqJfLetZlDShnsbKcbaSSk",
    ),
    (
        "vendor/pako/lib/zlib/inftrees.js",
        "sha384-ZPrFvOxqijoEmvBDFI3fUZAUCGPUSwLEnXZuv1eQHSqrhGrlZqhv/YRd5aHQX13R",
    ),
    (
        "vendor/pako/lib/zlib/messages.js",
        "sha384-EIlOW4mcj2svinxpku+8mu1NiFR7/gCtuQ3jJ9bLImgJC2ZZnL7pdkBGnygqD2cC",
    ),
    (
        "vendor/pako/lib/zlib/trees.js",
        "sha384-Qcg1yDANNY2TnI2EQ9x0vmRWc0vEWxSA44W6KyYZ+9WQPAvZdoGjtVwaqlp2x7nn",
    ),
    (
        "vendor/pako/lib/zlib/zstream.js",
        "sha384-yQJ6XHnKlzR6czOJHfIFUUKUs6c4wvc3MuJxvX8zQDkhgQQjT1JfsP+JUP2Ln8cT",
    ),
];
/// Subresource integrity of xterm.js 6.0.0's script and style sheet.
pub const XTERM_JS_SRI: &str =
    "sha384-f/1U6Z9wM4D71a5eRXEZnyOTMOvjqxr2XLwh+Go1OvIl3L3tOcvUrzudnhbECwl4";
pub const XTERM_CSS_SRI: &str =
    "sha384-n2n7twoohnW+d3myBKaUgl7DSiwidw6MkQy9oesGzkPpMjejKRR3XlnD+5yCdtBD";

/// The replay page's script (src/page/replay.js), with `@@NOVNC@@` and
/// `@@KIND@@` filled in when served.
const REPLAY_JS: &str = include_str!("page/replay.js");

/// What `nexor-relay replay` plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayKind {
    /// asciicast v3, played in xterm.js.
    Cast,
    /// A VNC recording, streamed to noVNC by the replay server.
    Vnc,
}

impl ReplayKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayKind::Cast => "cast",
            ReplayKind::Vnc => "vnc",
        }
    }
}

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

    fn cdn(&self) -> bool {
        self.files.is_empty()
    }

    /// The import map pinning noVNC's modules by hash (CDN only).
    fn import_map(&self) -> String {
        let entries: Vec<String> = NOVNC_SRI
            .iter()
            .map(|(f, h)| format!("\"{NOVNC_CDN}/{f}\":\"{h}\""))
            .collect();
        format!("{{\"integrity\":{{{}}}}}", entries.join(","))
    }

    fn html(&self) -> String {
        let (pin, css_sri, js_sri) = if self.cdn() {
            (
                format!(
                    "<script type=\"importmap\">{}</script>\n",
                    self.import_map()
                ),
                format!(" integrity=\"{XTERM_CSS_SRI}\" crossorigin=\"anonymous\""),
                format!(" integrity=\"{XTERM_JS_SRI}\" crossorigin=\"anonymous\""),
            )
        } else {
            Default::default()
        };
        format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nexor-relay console</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
{pin}<link rel="stylesheet" href="{x}/css/xterm.css"{css_sri}>
<style>
html,body{{margin:0;height:100%;background:#111;color:#ddd;font:14px system-ui,sans-serif}}
#bar{{padding:6px 10px;background:#222;border-bottom:1px solid #333}}
#screen{{position:absolute;top:33px;left:0;right:0;bottom:0}}
</style></head>
<body><div id="bar">nexor-relay · <span id="status">connecting…</span></div><div id="screen"></div>
<script src="{x}/lib/xterm.js"{js_sri}></script>
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
// The ticket leaves the URL at once (not in history, bookmarks or a shared
// screen); this tab keeps it in sessionStorage, so a reload reconnects
// within the relay's reconnect grace. Closing the tab forgets it.
let fragment = location.hash.slice(1);
if (new URLSearchParams(fragment).has("ticket")) {{
  sessionStorage.setItem("nexor.console", fragment);
  history.replaceState(null, "", location.pathname + location.search);
}} else {{
  fragment = sessionStorage.getItem("nexor.console") || "";
}}
const params = new URLSearchParams(fragment);
const ticket = params.get("ticket") || "";
const kind = params.get("console") || "vnc";
const proto = params.get("proto") || "raw";
const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + {path:?};
const protocols = ["binary", "nexor.ticket." + ticket];
const status = document.getElementById("status");
const screen = document.getElementById("screen");
window.nexor = {{ kind, events: [] }};
if (kind === "vnc") {{
  // `reconnect=1` in the fragment: after a drop the page opens the console
  // again with the same ticket, as noVNC's own app does with
  // `reconnect=true`: the relay (any relay of a fleet) admits it within
  // `reconnect_grace` after an abnormal end. Bounded: 10 tries, 0.5 s to 2 s
  // apart; a connect resets the count.
  const reconnect = params.get("reconnect") === "1";
  let tries = 0;
  window.nexor.reconnects = 0;
  const open = () => {{
    const rfb = new RFB(screen, url, {{ wsProtocols: protocols, shared: true }});
    rfb.scaleViewport = true;
    rfb.addEventListener("connect", () => {{
      tries = 0;
      status.textContent = "connected" + (window.nexor.desktopName ? ": " + window.nexor.desktopName : "");
      window.nexor.events.push("connect");
    }});
    rfb.addEventListener("desktopname", (e) => {{ window.nexor.desktopName = e.detail.name; status.textContent = "connected: " + e.detail.name; }});
    rfb.addEventListener("disconnect", (e) => {{
      status.textContent = e.detail.clean ? "disconnected" : "connection lost";
      window.nexor.events.push(e.detail.clean ? "disconnect-clean" : "disconnect-error");
      if (reconnect && tries < 10) {{
        tries += 1;
        status.textContent += ", reconnecting";
        setTimeout(() => {{ window.nexor.reconnects += 1; screen.innerHTML = ""; open(); }}, Math.min(500 * tries, 2000));
      }}
    }});
    window.nexor.rfb = rfb;
  }};
  open();
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

    /// The replay page of `nexor-relay replay` (docs/recording.md): the
    /// same assets and CSP as the console page, a control bar, and
    /// `/replay.js` (src/page/replay.js) instead of `/console.js`.
    fn replay_html(&self, title: &str) -> String {
        let (pin, css_sri, js_sri) = if self.cdn() {
            (
                format!(
                    "<script type=\"importmap\">{}</script>\n",
                    self.import_map()
                ),
                format!(" integrity=\"{XTERM_CSS_SRI}\" crossorigin=\"anonymous\""),
                format!(" integrity=\"{XTERM_JS_SRI}\" crossorigin=\"anonymous\""),
            )
        } else {
            Default::default()
        };
        let title = title
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>();
        format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nexor-relay replay · {title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
{pin}<link rel="stylesheet" href="{x}/css/xterm.css"{css_sri}>
<style>
html,body{{margin:0;height:100%;background:#111;color:#ddd;font:14px system-ui,sans-serif}}
#bar{{padding:4px 10px;background:#222;border-bottom:1px solid #333;display:flex;gap:10px;align-items:center;height:24px;white-space:nowrap;overflow:hidden}}
#bar b{{font-weight:600;overflow:hidden;text-overflow:ellipsis;max-width:40%}}
#bar button,#bar select{{background:#333;color:#ddd;border:1px solid #555;border-radius:3px}}
#clock{{font-variant-numeric:tabular-nums;color:#9c9}}
#screen{{position:absolute;top:33px;left:0;right:0;bottom:0}}
</style></head>
<body><div id="bar">nexor-relay replay · <b>{title}</b> <button id="pause">pause</button>
<label>speed <select id="speed"><option value="0.5">0.5×</option><option value="1">1×</option><option value="2">2×</option><option value="4">4×</option><option value="8">8×</option><option value="0">max</option></select></label>
<span id="clock">0.0 s</span> <span id="status">loading…</span></div><div id="screen"></div>
<script src="{x}/lib/xterm.js"{js_sri}></script>
<script type="module" src="/replay.js"></script>
</body></html>
"#,
            x = self.xterm_base
        )
    }

    /// Answers a GET of the replay page for a recording of `kind` (file
    /// name `title`): the page, its script, or an asset; None: 404.
    pub fn replay_get(&self, path: &str, kind: ReplayKind, title: &str) -> Option<Response> {
        match path {
            "/" | "/index.html" => Some(Response {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: self.replay_html(title).into_bytes(),
                cache: "no-store",
            }),
            "/replay.js" => Some(Response {
                status: 200,
                content_type: "text/javascript; charset=utf-8",
                body: REPLAY_JS
                    .replace("@@NOVNC@@", &self.novnc_base)
                    .replace("@@KIND@@", kind.as_str())
                    .into_bytes(),
                cache: "no-store",
            }),
            "/console.js" => None,
            p => self.get(p),
        }
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

    /// The Content-Security-Policy of every page response. With the CDN,
    /// scripts come from noVNC's pinned folder, xterm.js's one file and the
    /// import map (by its hash); the style sheet from its one URL.
    pub fn csp(&self) -> String {
        let (script, style) = if self.cdn() {
            let map = Sha256::digest(self.import_map().as_bytes());
            let map = base64::engine::general_purpose::STANDARD.encode(map);
            (
                format!(" 'sha256-{map}' {NOVNC_CDN}/ {XTERM_CDN}/lib/xterm.js"),
                format!(" {XTERM_CDN}/css/xterm.css"),
            )
        } else {
            Default::default()
        };
        format!(
            "default-src 'self'; script-src 'self'{script}; style-src 'self' 'unsafe-inline'{style}; img-src 'self' data: blob:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
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
        assert!(cdn
            .csp()
            .contains("https://cdn.jsdelivr.net/npm/@novnc/novnc@1.7.0/"));
        assert!(Page::new("/console", Some(Path::new("/nonexistent"))).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn replay_page_uses_the_same_assets_and_policy() {
        let p = Page::new("/replay", None).unwrap();
        let html = String::from_utf8(
            p.replay_get("/", ReplayKind::Vnc, "a<b>.vncrec")
                .unwrap()
                .body,
        )
        .unwrap();
        assert!(html.contains("<script type=\"module\" src=\"/replay.js\"></script>"));
        assert!(html.contains(&format!(
            "<script type=\"importmap\">{}</script>",
            p.import_map()
        )));
        assert!(
            html.contains("a_b_.vncrec") && !html.contains("a<b>"),
            "{html}"
        );
        for kind in [ReplayKind::Cast, ReplayKind::Vnc] {
            let js =
                String::from_utf8(p.replay_get("/replay.js", kind, "x").unwrap().body).unwrap();
            assert!(js.contains(&format!("import RFB from \"{NOVNC_CDN}/core/rfb.js\"")));
            assert!(js.contains(&format!("const kind = \"{}\";", kind.as_str())));
            assert!(!js.contains("@@"), "{js}");
        }
        // Replay mode serves no console script and nothing unknown.
        assert!(p.replay_get("/console.js", ReplayKind::Cast, "x").is_none());
        assert!(p.replay_get("/etc/passwd", ReplayKind::Cast, "x").is_none());
    }

    #[test]
    fn console_page_pins_cdn_files() {
        let p = Page::new("/console", None).unwrap();
        let html = String::from_utf8(p.get("/").unwrap().body).unwrap();
        let csp = p.csp();
        // No source is the bare CDN host: only the pinned folder and files.
        for src in csp.split([';', ' ']) {
            assert_ne!(src, "https://cdn.jsdelivr.net", "{csp}");
            assert_ne!(src, "https://cdn.jsdelivr.net/", "{csp}");
            assert!(!src.contains('*'), "{csp}");
        }
        assert!(html.contains(&format!(
            "{XTERM_CDN}/lib/xterm.js\" integrity=\"{XTERM_JS_SRI}\" crossorigin=\"anonymous\""
        )));
        assert!(html.contains(&format!(
            "{XTERM_CDN}/css/xterm.css\" integrity=\"{XTERM_CSS_SRI}\" crossorigin=\"anonymous\""
        )));
        // Every noVNC module is in the import map, and the map's hash is in the CSP.
        let map = p.import_map();
        let v: serde_json::Value = serde_json::from_str(&map).unwrap();
        assert_eq!(v["integrity"].as_object().unwrap().len(), NOVNC_SRI.len());
        assert!(v["integrity"][format!("{NOVNC_CDN}/core/rfb.js")]
            .as_str()
            .unwrap()
            .starts_with("sha384-"));
        assert!(html.contains(&format!("<script type=\"importmap\">{map}</script>")));
        let digest =
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(map.as_bytes()));
        assert!(csp.contains(&format!("'sha256-{digest}'")), "{csp}");
        // The ticket leaves the URL once read.
        let js = String::from_utf8(p.get("/console.js").unwrap().body).unwrap();
        let read = js.find("location.hash.slice(1)").unwrap();
        let gone = js
            .find("history.replaceState(null, \"\", location.pathname + location.search)")
            .unwrap();
        let used = js.find("new RFB(").unwrap();
        assert!(read < gone && gone < used, "{js}");
    }
}
