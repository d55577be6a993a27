//! Unit tests of src/config/mod.rs (the pure phase) and resolve.rs (glue).

use super::*;

const KEY: &str = "oneXZRCfi6j3Vry/VM6mIWTg8JeXRZGu55wYzKyy2kA=";

fn load(extra: &str) -> Result<Config, ConfigError> {
    let text = format!(
        "[tickets]\nkeys = [{{ id = \"k1\", secret = \"{KEY}\" }}]\n{extra}\n[upstreams.lab]\nkind = \"tcp\"\naddr = \"127.0.0.1:5901\"\n"
    );
    Config::from_toml(&text, Path::new("/nonexistent"))
}

/// A host name no resolver can answer without asking the network: its
/// first label is longer than DNS allows, so the lookup fails at once.
fn unresolvable_host() -> String {
    format!("{}.invalid", "x".repeat(70))
}

#[test]
fn the_issue_example_works_and_defaults_apply() {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8443\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\npath = \"/console\"\n\
[tickets]\nkeys = [{{ id = \"k1\", secret = \"{KEY}\" }}]\nmax_ttl = \"120s\"\n\
[upstreams.lab]\nkind = \"tcp\"\naddr = \"127.0.0.1:5901\"\n[upstreams.any]\nkind = \"ws\"\nurl = \"ws://127.0.0.1:9001/\"\n"
    );
    let c = Config::from_toml(&text, Path::new("/etc/nexor")).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:8443".parse().unwrap());
    assert_eq!(
        c.server.tls.as_ref().unwrap().cert,
        Path::new("/etc/nexor/cert.pem")
    );
    assert_eq!(c.server.ping_interval, Some(Duration::from_secs(25)));
    assert_eq!(c.server.pong_timeout, Some(Duration::from_secs(50)));
    assert!(c.server.workers >= 1, "0 means one per CPU");
    assert_eq!(c.tickets.policy.max_ttl, 120);
    assert_eq!(c.limits.max_frame, 1 << 20);
    assert!(matches!(c.upstreams["lab"], Upstream::Tcp { .. }));
    match &c.upstreams["any"] {
        Upstream::Ws { url, trust, .. } => {
            assert_eq!((url.tls, url.port, url.path.as_str()), (false, 9001, "/"));
            assert_eq!(url.host_header(), "127.0.0.1:9001");
            assert_eq!(url.addr, "127.0.0.1:9001".parse().unwrap());
            assert_eq!(*trust, Trust::SystemRoots);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_defaults_written_as_text_are_the_ones_applied() {
    let c = load("").unwrap();
    assert_eq!(c.server.listen, DEFAULT_LISTEN.parse().unwrap());
    assert_eq!(c.admin.listen, Some(DEFAULT_ADMIN_LISTEN.parse().unwrap()));
    assert_eq!(c.server.path, DEFAULT_PATH);
}

#[test]
fn errors_name_the_key() {
    let cases = [
        ("[server]\nlisten = \"nope\"", "server.listen"),
        ("[server]\ntls_cert = \"c.pem\"", "server.tls_key"),
        ("[server]\nping_interval = \"10\"", "server.ping_interval"),
        ("[server]\npong_timeout = \"10\"", "server.pong_timeout"),
        ("[server]\npong_timeout = \"soon\"", "server.pong_timeout"),
        ("[server]\npath = \"console\"", "server.path"),
        ("[server]\nworkers = -1", "server.workers"),
        ("[server]\nworkers = \"4\"", "server.workers"),
        ("[limits]\nmax_frame = \"1 parsec\"", "limits.max_frame"),
        ("[limits]\nmax_frame = 1.5", "limits.max_frame"),
        (
            "[limits]\nhandshake_timeout = \"5 fortnights\"",
            "limits.handshake_timeout",
        ),
        ("[limits]\non_vm_limit = \"kill\"", "limits.on_vm_limit"),
        ("[upstreams.x]\nkind = \"ws\"", "upstreams.x.url"),
        ("[upstreams.x]\nurl = \"ws://a/\"", "upstreams.x.kind"),
        (
            "[upstreams.x]\nkind = \"ws\"\nurl = \"http://a/\"",
            "upstreams.x.url",
        ),
        (
            "[upstreams.x]\nkind = \"ws\"\nurl = \"wss://127.0.0.1/\"\nfingerprint = \"abc\"",
            "upstreams.x.fingerprint",
        ),
        (
            "[upstreams.x]\nkind = \"tcp\"\naddr = \"127.0.0.1\"",
            "upstreams.x.addr",
        ),
        (
            "[upstreams.x]\nkind = \"demo\"\naddr = \"127.0.0.1:1\"",
            "upstreams.x.addr",
        ),
        (
            "[upstreams.x]\nkind = \"demo\"\napi = \"https://a\"",
            "upstreams.x.api",
        ),
        ("[upstreams.x]\nkind = \"ftp\"", "upstreams.x.kind"),
        ("[upstreams.x]\nkind = 7", "upstreams.x.kind"),
        (
            "[upstreams.x]\nkind = \"proxmox\"\napi = \"https://127.0.0.1\"\ntoken_id = \"a@b!c\"",
            "upstreams.x.token_secret",
        ),
    ];
    for (extra, key) in cases {
        let e = load(extra).unwrap_err();
        assert_eq!(e.key, key, "{extra}: {e}");
        assert!(e.to_string().contains(key), "{e}");
        assert!(e.at.is_some(), "{extra}: {e}");
    }
}

#[test]
fn errors_say_what_was_wrong() {
    let e = load("[server]\nworkers = \"4\"").unwrap_err();
    assert_eq!(
        e.kind,
        ErrorKind::WrongType {
            expected: "an integer",
            found: "a string"
        }
    );
    assert!(
        e.to_string()
            .ends_with("server.workers: expected an integer, found a string"),
        "{e}"
    );
    let e = load("[limits]\non_vm_limit = \"kill\"").unwrap_err();
    assert!(
        e.to_string()
            .ends_with("limits.on_vm_limit: expected one of \"reject\", \"replace\""),
        "{e}"
    );
    let e = load("[server]\nworkers = -1").unwrap_err();
    assert!(e.to_string().contains("a whole number from 0 to"), "{e}");
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let e = load("[server]\nlisten_addr = \"1.2.3.4:5\"").unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.kind),
        ("server.listen_addr", ErrorKind::UnknownKey)
    );
    assert!(
        e.to_string().contains("server.listen_addr: unknown field"),
        "{e}"
    );
    let e = load("[limits]\nmax_frames = 5").unwrap_err();
    assert_eq!(e.key, "limits.max_frames");
    let e = load("[serverx]\nlisten = 5").unwrap_err();
    assert_eq!(e.key, "serverx");
    let e = load("[upstreams.y]\nkind = \"demo\"\nnode = {}").unwrap_err();
    assert_eq!(e.key, "upstreams.y.node");
    // In an inline table and an array of tables too.
    let text = format!(
        "[[tickets.keys]]\nid = \"k1\"\nsecret = \"{KEY}\"\nkid = \"x\"\n[upstreams.d]\nkind = \"demo\"\n"
    );
    let e = parse(&text).unwrap_err();
    assert_eq!(e.key, "tickets.keys[0].kid");
    assert_eq!(e.at, Some(Pos { line: 4, column: 1 }));
}

#[test]
fn names_that_are_not_plain_are_not_shown() {
    // A secret pasted where a key name belongs is not printed back.
    let e = load(&format!("[server]\n\"{KEY}\" = 1")).unwrap_err();
    assert_eq!(e.key, format!("server.{HIDDEN_NAME}"));
    assert_eq!(e.at, Some(Pos { line: 4, column: 1 }));
    assert!(!e.to_string().contains("oneXZRCf"), "{e}");
    let e = load(&format!("[server]\n{} = 1", "a".repeat(MAX_SHOWN_NAME + 1))).unwrap_err();
    assert_eq!(e.key, format!("server.{HIDDEN_NAME}"));
    let e = load(&format!("[server]\n{} = 1", "a".repeat(MAX_SHOWN_NAME))).unwrap_err();
    assert_eq!(e.key, format!("server.{}", "a".repeat(MAX_SHOWN_NAME)));
    let e = load("[upstreams.\"a b\"]\nkind = \"ftp\"").unwrap_err();
    assert_eq!(e.key, format!("upstreams.{HIDDEN_NAME}.kind"));
}

#[test]
fn secrets_never_reach_errors_or_debug() {
    let c = load("").unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains(KEY) && !dbg.contains("oneXZRCf"), "{dbg}");
    let short = "[tickets]\nkeys = [{ id = \"k1\", secret = \"c2hvcnQ=\" }]\n[upstreams.d]\nkind = \"demo\"\n";
    let e = Config::from_toml(short, Path::new("/")).unwrap_err();
    assert_eq!(e.key, "tickets.keys[0].secret");
    assert!(!e.to_string().contains("c2hvcnQ"), "{e}");
}

/// Every way a bad secret value can fail: the error names the key and
/// where it is, never the value.
#[test]
fn an_error_about_a_secret_never_contains_it() {
    let token = "tok3n-w1th a-space-1234567890";
    let pve = "5f2b6c1e 8d3a-4b7f-9c21-0e4d5a6b7c8d";
    let cases: Vec<(String, &str, &str)> = vec![
        // Not base64; too short; a published sample; wrong type.
        (
            "[tickets]\nkeys = [{ id = \"k\", secret = \"n0t!base64#s3cret-value\" }]".into(),
            "n0t!base64#s3cret-value",
            "tickets.keys[0].secret",
        ),
        (
            "[tickets]\nkeys = [{ id = \"k\", secret = \"c2VjcmV0LXNob3J0\" }]".into(),
            "c2VjcmV0LXNob3J0",
            "tickets.keys[0].secret",
        ),
        (
            "[tickets]\nkeys = [{ id = \"k\", secret = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\" }]".into(),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
            "tickets.keys[0].secret",
        ),
        (
            format!("[tickets]\nkeys = \"{KEY}\""),
            KEY,
            "tickets.keys",
        ),
        // A syntax error on the secret's line (the parser's own message
        // would quote the line).
        (
            format!("[tickets]\nkeys = [{{ id = \"k\", secret = \"{KEY}\" ]"),
            KEY,
            "",
        ),
        (
            format!("[tickets]\nkeys = [{{ id = \"k\", secret = \"{KEY}\", kid = 1 }}]"),
            KEY,
            "tickets.keys[0].kid",
        ),
        (
            format!("[tickets]\nkeys = [{{ id = \"k\", secret = \"{KEY}\" }}]\n[admin]\ntoken = \"{token}\""),
            token,
            "admin.token",
        ),
        (
            format!("[tickets]\nkeys = [{{ id = \"k\", secret = \"{KEY}\" }}]\n[upstreams.p]\nkind = \"proxmox\"\napi = \"https://127.0.0.1\"\ntoken_id = \"a@pve!c\"\ntoken_secret = \"{pve}\""),
            pve,
            "upstreams.p.token_secret",
        ),
        (
            format!("[tickets]\nkeys = [{{ id = \"k\", secret = \"{KEY}\" }}]\n[upstreams.p]\nkind = \"proxmox\"\napi = \"https://127.0.0.1\"\ntoken_id = \"a@pve!c\"\ntoken_secret = \"{pve}\" x"),
            pve,
            "",
        ),
    ];
    for (text, secret, key) in cases {
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
        assert!(e.at.is_some(), "{e}");
        for shown in [e.to_string(), format!("{e:?}")] {
            for piece in secret.as_bytes().windows(8) {
                let piece = std::str::from_utf8(piece).unwrap();
                assert!(!shown.contains(piece), "{piece:?} in {shown}");
            }
        }
    }
}

#[test]
fn positions_are_line_and_column_of_the_fault() {
    let text = format!(
        "# a comment\n[tickets]\nkeys = [{{ id = \"k1\", secret = \"{KEY}\" }}]\n\n[server]\n  listen   = \"nope\"\n[upstreams.d]\nkind = \"demo\"\n"
    );
    let e = parse(&text).unwrap_err();
    assert_eq!(e.key, "server.listen");
    assert_eq!(
        e.at,
        Some(Pos {
            line: 6,
            column: 14
        })
    );
    assert!(
        e.to_string()
            .starts_with("line 6, column 14: server.listen: "),
        "{e}"
    );
    // Columns count characters, not bytes.
    let e = parse("[server]\nallowed_origins = [\"https://é.example\", \"nope\"]").unwrap_err();
    assert_eq!(e.key, "server.allowed_origins[1]");
    assert_eq!(
        e.at,
        Some(Pos {
            line: 2,
            column: 41
        })
    );
    let e = parse("# é\n[server]\n\"é\" = 1\nworkers = 1").unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.at),
        ("server.…", Some(Pos { line: 3, column: 1 }))
    );
    let e = parse("[server]\npath = \"/é\"\nworkers = \"é\"").unwrap_err();
    assert_eq!(
        e.at,
        Some(Pos {
            line: 3,
            column: 11
        })
    );
    // An unknown key points at the key, a bad value at the value.
    let e = parse("[limits]\n   max_frames = 5").unwrap_err();
    assert_eq!(e.at, Some(Pos { line: 2, column: 4 }));
    // A syntax error has a position and no key.
    let e = parse("[server]\nlisten = \"1.2.3.4:5\"\nworkers = = 4\n").unwrap_err();
    assert_eq!((e.key.as_str(), e.kind), ("", ErrorKind::Syntax));
    assert_eq!(e.at.map(|p| p.line), Some(3));
    assert!(e.to_string().starts_with("line 3, column "), "{e}");
    // Array elements: the element's own place.
    let text = format!(
        "[tickets]\nkeys = [{{ id = \"k1\", secret = \"{KEY}\" }}]\n[server]\ntrusted_proxies = [\"10.0.0.0/8\",\n  \"10.0.0.0/99\"]\n[upstreams.d]\nkind = \"demo\"\n"
    );
    let e = parse(&text).unwrap_err();
    assert_eq!(e.key, "server.trusted_proxies[1]");
    assert_eq!(e.at, Some(Pos { line: 5, column: 3 }));
}

#[test]
fn errors_are_one_line() {
    let text = "[tickets]\nkeys = [{ id = \"k2\", secret = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\" }]\n[upstreams.pe]\nkind = \"proxm\\ntps:/7.0.0.1:87\"\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.key, "tickets.keys[0].secret", "{e}");
    let text = text.replace("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", KEY);
    let e = parse(&text).unwrap_err();
    assert_eq!(e.key, "upstreams.pe.kind");
    assert!(!e.to_string().contains('\n'), "{e:?}");
}

/// Parse reads no file and asks no resolver: a config naming a secret
/// file that does not exist and a host that does not resolve parses; the
/// glue then refuses it, naming the key (and the file).
#[test]
fn parse_is_pure_and_resolve_does_the_io() {
    let host = unresolvable_host();
    let text = format!(
        "[tickets]\nkeys = [{{ id = \"k1\", secret_file = \"no-such-dir/k1.key\" }}]\n\
[admin]\ntoken_file = \"/no-such-dir/admin.token\"\n\
[upstreams.lab]\nkind = \"tcp\"\naddr = \"{host}:5901\"\n"
    );
    let p = parse(&text).unwrap();
    match &p.tickets.keys[0] {
        ParsedKey::File { id, path, site } => {
            assert_eq!(
                (id.as_str(), path.as_path()),
                ("k1", Path::new("no-such-dir/k1.key"))
            );
            assert_eq!(site.key, "tickets.keys[0].secret_file");
            assert_eq!(
                site.at,
                Some(Pos {
                    line: 2,
                    column: 36
                })
            );
        }
        other => panic!("{other:?}"),
    }
    match &p.upstreams["lab"] {
        ParsedUpstream::Tcp { addr, .. } => {
            assert_eq!((addr.host.as_str(), addr.port), (host.as_str(), 5901))
        }
        other => panic!("{other:?}"),
    }
    let e = resolve(p, Path::new("/etc/nexor")).unwrap_err();
    assert_eq!(e.key, "admin.token_file");
    assert_eq!(e.kind, ErrorKind::CannotRead(std::io::ErrorKind::NotFound));
    assert_eq!(
        e.file.as_deref(),
        Some(Path::new("/no-such-dir/admin.token"))
    );

    // The token file there, the key file is next: relative to the base.
    let dir = tempfile::tempdir().unwrap();
    let text = text.replace("/no-such-dir/admin.token", "admin.token");
    std::fs::write(dir.path().join("admin.token"), "0123456789abcdefXYZ\n").unwrap();
    let e = Config::from_toml(&text, dir.path()).unwrap_err();
    assert_eq!(e.key, "tickets.keys[0].secret_file");
    let file = dir.path().join("no-such-dir/k1.key");
    assert_eq!(e.file.as_deref(), Some(file.as_path()));
    assert_eq!(
        e.to_string(),
        format!(
            "line 2, column 36: tickets.keys[0].secret_file: cannot read {}: {}",
            file.display(),
            std::io::ErrorKind::NotFound
        )
    );

    // With the files there, the host is what fails.
    std::fs::create_dir(dir.path().join("no-such-dir")).unwrap();
    std::fs::write(dir.path().join("no-such-dir/k1.key"), format!("{KEY}\n")).unwrap();
    let e = Config::from_toml(&text, dir.path()).unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.kind),
        ("upstreams.lab.addr", ErrorKind::Unresolvable)
    );
    assert_eq!(e.at, Some(Pos { line: 7, column: 8 }));

    // And with a host that resolves, it loads: the files were read.
    let text = text.replace(&format!("{host}:5901"), "127.0.0.1:5901");
    let c = Config::from_toml(&text, dir.path()).unwrap();
    assert_eq!(
        c.admin.token.as_ref().unwrap().expose(),
        "0123456789abcdefXYZ"
    );
    assert!(c.tickets.keys.get("k1").is_some());
    assert_eq!(c.upstreams.len(), 1);
}

#[test]
fn a_bad_secret_file_is_refused_without_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    let token = "short token";
    std::fs::write(dir.path().join("t"), token).unwrap();
    std::fs::write(dir.path().join("k"), "c2VjcmV0LXNob3J0").unwrap();
    let base = format!(
        "[tickets]\nkeys = [{{ id = \"k1\", secret = \"{KEY}\" }}]\n[upstreams.d]\nkind = \"demo\"\n"
    );
    let e =
        Config::from_toml(&format!("{base}[admin]\ntoken_file = \"t\"\n"), dir.path()).unwrap_err();
    assert_eq!(e.key, "admin.token_file");
    assert_eq!(
        e.at,
        Some(Pos {
            line: 6,
            column: 14
        })
    );
    assert!(
        !e.to_string().contains("short") && !format!("{e:?}").contains("short"),
        "{e}"
    );
    let text = "[tickets]\nkeys = [{ id = \"k1\", secret_file = \"k\" }]\n[upstreams.d]\nkind = \"demo\"\n";
    let e = Config::from_toml(text, dir.path()).unwrap_err();
    assert_eq!(e.key, "tickets.keys[0].secret_file");
    assert!(matches!(e.kind, ErrorKind::Key(_)), "{e}");
    assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
    // A device that never ends is read only so far.
    let text = text.replace("secret_file = \"k\"", "secret_file = \"/dev/zero\"");
    let e = Config::from_toml(&text, dir.path()).unwrap_err();
    assert_eq!(
        e.kind,
        ErrorKind::CannotRead(std::io::ErrorKind::FileTooLarge)
    );
}

#[test]
fn an_unreadable_config_file_names_it() {
    let e = Config::load(Path::new("/no-such-dir/relay.toml")).unwrap_err();
    assert_eq!(e.key, "");
    assert_eq!(
        e.to_string(),
        format!(
            "cannot read /no-such-dir/relay.toml: {}",
            std::io::ErrorKind::NotFound
        )
    );
}

#[test]
fn ipv4_mapped_networks_match_ipv4_clients() {
    let c = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
    assert_eq!(c, Cidr::parse("10.0.0.0/8").unwrap());
    assert!(c.contains("10.1.2.3".parse().unwrap()));
    assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
    assert!(!c.contains("11.0.0.1".parse().unwrap()));
    assert!(Cidr::parse("::ffff:10.0.0.0/64").is_err());
    assert_eq!(
        Cidr::parse("::ffff:10.0.0.1").unwrap(),
        Cidr::parse("10.0.0.1").unwrap()
    );
}

#[test]
fn a_secret_in_the_wrong_key_is_not_shown() {
    let text = format!("[tickets]\nkeys = \"{KEY}\"\n[upstreams.d]\nkind = \"demo\"\n");
    let e = Config::from_toml(&text, Path::new("/")).unwrap_err();
    assert!(!e.to_string().contains("oneXZRCf"), "{e}");
    assert!(
        e.to_string()
            .ends_with("tickets.keys: expected an array, found a string"),
        "{e}"
    );
}

#[test]
fn durations_sizes_and_fingerprints() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("8h"), Ok(Duration::from_secs(8 * 3600)));
    assert!(
        parse_duration("5").is_err()
            && parse_duration("s").is_err()
            && parse_duration("-1s").is_err()
    );
    assert_eq!(
        parse_duration("99999999999999999999s"),
        Err(ErrorKind::DurationTooLong)
    );
    assert_eq!(parse_size("64KiB"), Ok(65536));
    assert_eq!(parse_size("512"), Ok(512));
    assert_eq!(parse_size("1 MB"), Err(ErrorKind::Size));
    assert_eq!(parse_size("99999999999GiB"), Err(ErrorKind::SizeTooLarge));
    let fp = "AB:cd:".repeat(16);
    assert_eq!(parse_fingerprint(&fp).unwrap()[..3], [0xab, 0xcd, 0xab]);
    assert!(parse_fingerprint("zz").is_err());
    assert_eq!(
        load("[limits]\nmax_frame = 4096").unwrap().limits.max_frame,
        4096
    );
    assert_eq!(
        load("[limits]\nmax_frame = \"64KiB\"")
            .unwrap()
            .limits
            .max_frame,
        65536
    );
}

#[test]
fn urls_and_addresses_are_parsed_without_resolving() {
    let site = Site {
        key: "k".into(),
        at: None,
    };
    let u = parse_ws_url("wss://[::1]:9443/a?b", site.clone()).unwrap();
    assert_eq!(
        (u.tls, u.host.host.as_str(), u.host.port, u.path.as_str()),
        (true, "::1", 9443, "/a?b")
    );
    let u = parse_ws_url("ws://console.example", site.clone()).unwrap();
    assert_eq!(
        (u.host.host.as_str(), u.host.port, u.path.as_str()),
        ("console.example", 80, "/")
    );
    for bad in [
        "http://a/",
        "ws://u:p@a/",
        "ws:///x",
        "ws://a:99999/",
        "ws://[::1/",
        "ws://a/#f",
    ] {
        assert!(parse_ws_url(bad, site.clone()).is_err(), "{bad}");
    }
    let h = parse_host_port("vnc.example:5901", site.clone()).unwrap();
    assert_eq!((h.host.as_str(), h.port), ("vnc.example", 5901));
    let h = parse_host_port("[::1]:5901", site.clone()).unwrap();
    assert_eq!((h.host.as_str(), h.port), ("::1", 5901));
    assert!(parse_host_port("vnc.example", site.clone()).is_err());
    assert!(parse_host_port("[::1]", site).is_err());
    // Proxmox: 8006 without a port; no path, no credentials.
    let pve = |api: &str| {
        parse(&format!(
            "[tickets]\nkeys = [{{ id = \"k1\", secret = \"{KEY}\" }}]\n[upstreams.p]\nkind = \"proxmox\"\napi = \"{api}\"\ntoken_id = \"a@pve!c\"\ntoken_secret = \"s\"\n"
        ))
    };
    match &pve("https://pve.example").unwrap().upstreams["p"] {
        ParsedUpstream::Proxmox(p) => assert_eq!(
            (p.api.host.host.as_str(), p.api.host.port),
            ("pve.example", 8006)
        ),
        other => panic!("{other:?}"),
    }
    for bad in ["http://pve", "https://pve/x", "https://u@pve", "https://"] {
        assert_eq!(pve(bad).unwrap_err().key, "upstreams.p.api", "{bad}");
    }
}

#[test]
fn pong_timeout_defaults_to_twice_the_ping_interval_and_can_be_off() {
    let p = |extra: &str| load(extra).unwrap().server;
    assert_eq!(p("").pong_timeout, Some(Duration::from_secs(50)));
    let s = p("[server]\nping_interval = \"10s\"");
    assert_eq!(s.pong_timeout, Some(Duration::from_secs(20)));
    let s = p("[server]\npong_timeout = \"7s\"");
    assert_eq!(s.pong_timeout, Some(Duration::from_secs(7)));
    assert_eq!(p("[server]\npong_timeout = \"0\"").pong_timeout, None);
    assert_eq!(p("[server]\npong_timeout = \"0s\"").pong_timeout, None);
    // No pings, nothing to time out.
    assert_eq!(p("[server]\nping_interval = \"0s\"").pong_timeout, None);
    let e = load("[server]\npong_timeout = \"-3s\"").unwrap_err();
    assert!(e.to_string().contains("server.pong_timeout"), "{e}");
}

#[test]
fn no_well_known_key_can_sign_tickets() {
    let samples = [
        // The bytes 0..31: the README, config/relay.toml and test example.
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        // The second example key of the tests and fuzz targets.
        "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoOEhYaHiImKi4yNjo+QkZKT",
        // All-zero, and all one byte.
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "//////////////////////////////////////////8=",
    ];
    for secret in samples {
        let text = format!(
            "[tickets]\nkeys = [{{ id = \"portal-1\", secret = \"{secret}\" }}]\n[upstreams.d]\nkind = \"demo\"\n"
        );
        let e = Config::from_toml(&text, Path::new("/")).unwrap_err();
        assert_eq!(e.key, "tickets.keys[0].secret", "{secret}");
        assert_eq!(e.kind, ErrorKind::WellKnownKey);
        assert!(e.message().contains("openssl rand -base64 32"), "{e}");
        assert!(!e.to_string().contains(&secret[..12]), "{e}");
    }
    // A second key that is a sample is refused too, named by its place.
    let text = format!(
        "[tickets]\nkeys = [{{ id = \"new\", secret = \"{KEY}\" }}, {{ id = \"old\", secret = \"{}\" }}]\n[upstreams.d]\nkind = \"demo\"\n",
        samples[0]
    );
    let e = Config::from_toml(&text, Path::new("/")).unwrap_err();
    assert_eq!(e.key, "tickets.keys[1].secret");
    assert_eq!(
        e.at,
        Some(Pos {
            line: 2,
            column: 105
        })
    );
    assert!(load("").is_ok(), "a random key loads");
}

#[test]
fn key_ids_are_plain_and_unique() {
    let text = |a: &str, b: &str| {
        format!(
            "[tickets]\nkeys = [{{ id = \"{a}\", secret = \"{KEY}\" }}, {{ id = \"{b}\", secret = \"{KEY}\" }}]\n[upstreams.d]\nkind = \"demo\"\n"
        )
    };
    assert!(parse(&text("a", "b")).is_ok());
    let e = parse(&text("a", "a")).unwrap_err();
    assert_eq!(e.key, "tickets.keys[1].id");
    assert!(e.message().contains("duplicate key id"), "{e}");
    let e = parse(&text("a", "b c")).unwrap_err();
    assert_eq!(e.key, "tickets.keys[1].id");
    let e = parse("[tickets]\nkeys = []\n[upstreams.d]\nkind = \"demo\"\n").unwrap_err();
    assert_eq!(e.key, "tickets.keys");
    let e = parse("[upstreams.d]\nkind = \"demo\"\n").unwrap_err();
    assert_eq!(e.key, "tickets");
    let e = parse(&format!(
        "[tickets]\nkeys = [{{ id = \"k\", secret = \"{KEY}\" }}]\n"
    ))
    .unwrap_err();
    assert_eq!(e.key, "upstreams");
}

#[test]
fn client_ip_header_and_proxy_protocol_need_trusted_proxies() {
    let c = load("[server]\ntrusted_proxies = [\"10.0.0.0/8\"]").unwrap();
    assert_eq!(
        c.server.client_ip_header,
        Some(ClientIpHeader::XForwardedFor)
    );
    assert_eq!(load("").unwrap().server.client_ip_header, None);
    for (v, h) in [
        ("forwarded", ClientIpHeader::Forwarded),
        ("CF-Connecting-IP", ClientIpHeader::CfConnectingIp),
        ("x-real-ip", ClientIpHeader::XRealIp),
    ] {
        let c = load(&format!(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\nclient_ip_header = \"{v}\""
        ))
        .unwrap();
        assert_eq!(c.server.client_ip_header, Some(h));
    }
    let e =
        load("[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\nclient_ip_header = \"true-client-ip\"")
            .unwrap_err();
    assert_eq!(e.key, "server.client_ip_header");
    let e = load("[server]\nclient_ip_header = \"x-forwarded-for\"").unwrap_err();
    assert_eq!(e.key, "server.client_ip_header");
    let e = load("[server]\nproxy_protocol = true").unwrap_err();
    assert_eq!(e.key, "server.trusted_proxies");
    assert!(load("[server]\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.1\"]").is_ok());
    assert_eq!(load("").unwrap().limits.max_handshakes_per_ip, 64);
    let e = load("[admin]\nhost = \"a b\"").unwrap_err();
    assert_eq!(e.key, "admin.host");
}
