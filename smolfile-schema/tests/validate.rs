//! Parsing and validation through the public API: a file with every key, and every
//! class of error with its exact message and position.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use smolfile::{
    Artifact, Auth, Cidr, Dev, Health, HostPattern, Network, Platform, Port, Restart,
    RestartPolicy, Smolfile, Volume, reference,
};

fn parse(source: &str) -> Result<Smolfile, smolfile::Diagnostics> {
    Smolfile::parse(source, "Smolfile", Path::new("/proj"))
}

/// Every diagnostic of `source`, displayed.
fn errors(source: &str) -> Vec<String> {
    match parse(source) {
        Ok(smolfile) => panic!("expected errors, parsed {smolfile:#?}"),
        Err(diagnostics) => diagnostics.iter().map(ToString::to_string).collect(),
    }
}

/// The single diagnostic of `source`, displayed.
fn error(source: &str) -> String {
    let errors = errors(source);
    assert_eq!(errors.len(), 1, "expected one error: {errors:#?}");
    errors.into_iter().next().unwrap()
}

#[test]
fn empty_file_is_the_bare_vm_with_defaults() {
    assert_eq!(parse("").unwrap(), Smolfile::default());
    assert_eq!(parse("# nothing but a comment\n").unwrap().image, None);
}

#[test]
fn every_key_is_read() {
    let source = r#"
image = "ghcr.io/acme/app:1.2"
entrypoint = ["/bin/app"]
cmd = ["serve", "--port", "80"]
env = ["A=1", "B=two=2"]
workdir = "/srv"
cpus = 2
memory = 1024
net = true
storage = 30
overlay = 4

[network]
allow_hosts = ["Example.com", "*.pypi.org"]
allow_cidrs = ["10.0.0.0/8", "fd00::/8", "192.0.2.1"]

[dev]
volumes = ["./src:/srv/src:ro", "/var/cache:/cache"]
ports = ["8080:80", "127.0.0.1:8443:443"]
init = ["apk add curl", "echo ready"]
env = ["DEBUG=1"]
workdir = "/srv/src"

[artifact]
cpus = 1
memory = 256
entrypoint = ["/bin/app", "--packed"]
cmd = ["serve"]
oci_platform = "linux/arm64/v8"

[health]
exec = ["curl", "-f", "http://localhost/"]
interval = "15s"
timeout = "1m30s"
startup_grace = "500ms"
retries = 5

[restart]
policy = "unless-stopped"
max_retries = 10
max_backoff = "2m"

[auth]
ssh_agent = true
"#;
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let expected = Smolfile {
        image: Some(reference::parse("ghcr.io/acme/app:1.2").unwrap()),
        entrypoint: Some(strings(&["/bin/app"])),
        cmd: Some(strings(&["serve", "--port", "80"])),
        env: strings(&["A=1", "B=two=2"]),
        workdir: Some("/srv".into()),
        cpus: Some(2),
        memory: Some(1024),
        net: true,
        storage: Some(30),
        overlay: Some(4),
        network: Network {
            allow_hosts: vec![
                HostPattern::parse("example.com").unwrap(),
                HostPattern::parse("*.pypi.org").unwrap(),
            ],
            allow_cidrs: vec![
                Cidr::parse("10.0.0.0/8").unwrap(),
                Cidr::parse("fd00::/8").unwrap(),
                Cidr::parse("192.0.2.1/32").unwrap(),
            ],
            localhost_only: false,
        },
        dev: Dev {
            volumes: vec![
                Volume {
                    host_spec: "./src".into(),
                    host: PathBuf::from("/proj/src"),
                    guest: "/srv/src".into(),
                    read_only: true,
                },
                Volume {
                    host_spec: "/var/cache".into(),
                    host: PathBuf::from("/var/cache"),
                    guest: "/cache".into(),
                    read_only: false,
                },
            ],
            ports: vec![
                Port {
                    ip: None,
                    host: 8080,
                    guest: 80,
                },
                Port {
                    ip: Some(IpAddr::from([127, 0, 0, 1])),
                    host: 8443,
                    guest: 443,
                },
            ],
            init: strings(&["apk add curl", "echo ready"]),
            env: strings(&["DEBUG=1"]),
            workdir: Some("/srv/src".into()),
        },
        artifact: Artifact {
            cpus: Some(1),
            memory: Some(256),
            entrypoint: Some(strings(&["/bin/app", "--packed"])),
            cmd: Some(strings(&["serve"])),
            oci_platform: Some(Platform::parse("linux/arm64/v8").unwrap()),
        },
        health: Some(Health {
            exec: strings(&["curl", "-f", "http://localhost/"]),
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(90),
            startup_grace: Duration::from_millis(500),
            retries: 5,
        }),
        restart: Restart {
            policy: RestartPolicy::UnlessStopped,
            max_retries: Some(10),
            max_backoff: Duration::from_secs(120),
        },
        auth: Auth { ssh_agent: true },
    };
    assert_eq!(parse(source).unwrap(), expected);
}

#[test]
fn table_defaults_fill_in_what_is_not_written() {
    let smolfile = parse("[health]\nexec = [\"true\"]\n[restart]\npolicy = \"always\"\n").unwrap();
    assert_eq!(
        smolfile.health,
        Some(Health {
            exec: vec!["true".into()],
            interval: Health::DEFAULT_INTERVAL,
            timeout: Health::DEFAULT_TIMEOUT,
            startup_grace: Health::DEFAULT_STARTUP_GRACE,
            retries: Health::DEFAULT_RETRIES,
        })
    );
    assert_eq!(
        smolfile.restart,
        Restart {
            policy: RestartPolicy::Always,
            ..Restart::default()
        }
    );
}

#[test]
fn inline_and_dotted_tables_are_the_same_tables() {
    let inline = parse("dev = { ports = [\"8080:80\"] }\n").unwrap();
    let dotted = parse("dev.ports = [\"8080:80\"]\n").unwrap();
    assert_eq!(inline, dotted);
    assert_eq!(inline.dev.ports, [Port::parse("8080:80").unwrap()]);
}

#[test]
fn relative_base_dir_is_made_absolute() {
    let smolfile = Smolfile::parse(
        "[dev]\nvolumes = [\"data:/data\"]\n",
        "Smolfile",
        Path::new("proj"),
    )
    .unwrap();
    let expected = std::env::current_dir().unwrap().join("proj/data");
    assert_eq!(smolfile.dev.volumes[0].host, expected);
}

// ---- unknown keys and tables ----

#[test]
fn unknown_key_with_suggestion() {
    assert_eq!(
        error("[dev]\nprots = [\"8080:80\"]\n"),
        "Smolfile:2:1: [dev].prots: unknown key \"prots\"; did you mean \"ports\"?"
    );
    assert_eq!(
        error("mem = 512\n"),
        "Smolfile:1:1: mem: unknown key \"mem\"; did you mean \"memory\"?"
    );
    assert_eq!(
        error("[health]\nexec = [\"true\"]\nIntervals = \"5s\"\n"),
        "Smolfile:3:1: [health].Intervals: unknown key \"Intervals\"; did you mean \"interval\"?"
    );
}

#[test]
fn unknown_key_that_belongs_in_another_table() {
    assert_eq!(
        error("ports = [\"8080:80\"]\n"),
        "Smolfile:1:1: ports: unknown key \"ports\"; did you mean \"[dev].ports\"?"
    );
    assert_eq!(
        error("[dev]\ncpus = 2\n"),
        "Smolfile:2:1: [dev].cpus: unknown key \"cpus\"; did you mean top-level \"cpus\"?"
    );
    assert_eq!(
        error("[artifact]\npolicy = \"always\"\n"),
        "Smolfile:2:1: [artifact].policy: unknown key \"policy\"; did you mean \"[restart].policy\"?"
    );
}

#[test]
fn unknown_key_without_suggestion_lists_the_valid_ones() {
    assert_eq!(
        error("hostname = \"vm\"\n"),
        "Smolfile:1:1: hostname: unknown key \"hostname\"; expected one of: image, entrypoint, cmd, env, workdir, cpus, memory, net, storage, overlay"
    );
    assert_eq!(
        error("[auth]\ntoken = \"x\"\n"),
        "Smolfile:2:1: [auth].token: unknown key \"token\"; expected one of: ssh_agent"
    );
}

#[test]
fn unknown_table() {
    assert_eq!(
        error("[netwrk]\nallow_hosts = []\n"),
        "Smolfile:1:2: [netwrk]: unknown table \"[netwrk]\"; did you mean \"[network]\"?"
    );
    assert_eq!(
        error("[extras]\n"),
        "Smolfile:1:2: [extras]: unknown table \"[extras]\"; expected one of: [network], [dev], [artifact], [health], [restart], [auth]"
    );
    // A dotted key makes a table too.
    assert_eq!(
        error("helth.exec = [\"true\"]\n"),
        "Smolfile:1:1: [helth]: unknown table \"[helth]\"; did you mean \"[health]\"?"
    );
}

// ---- types ----

#[test]
fn type_errors_say_what_was_expected_and_found() {
    let cases = [
        (
            "cpus = \"four\"",
            "Smolfile:1:8: cpus: expected an integer, found string \"four\"",
        ),
        (
            "cpus = 2.5",
            "Smolfile:1:8: cpus: expected an integer, found float 2.5",
        ),
        (
            "memory = \"8G\"",
            "Smolfile:1:10: memory: expected an integer (MiB), found string \"8G\"",
        ),
        (
            "net = \"yes\"",
            "Smolfile:1:7: net: expected a boolean, found string \"yes\"",
        ),
        (
            "image = 3",
            "Smolfile:1:9: image: expected a string, found integer 3",
        ),
        (
            "workdir = 1979-05-27",
            "Smolfile:1:11: workdir: expected a string, found datetime 1979-05-27",
        ),
        (
            "env = \"A=1\"",
            "Smolfile:1:7: env: expected an array of strings, found string \"A=1\"",
        ),
        (
            "cmd = [\"a\", [\"b\"]]",
            "Smolfile:1:13: cmd[1]: expected a string, found array",
        ),
        (
            "dev = 1",
            "Smolfile:1:7: [dev]: expected a table, found integer 1",
        ),
        (
            "[[dev]]",
            "Smolfile:1:1: [dev]: expected a table, found array",
        ),
        (
            "[image]",
            "Smolfile:1:1: image: expected a string, found table",
        ),
        (
            "[dev]\nports = [8080]",
            "Smolfile:2:10: [dev].ports[0]: expected a string, found integer 8080",
        ),
        (
            "[auth]\nssh_agent = 1",
            "Smolfile:2:13: [auth].ssh_agent: expected a boolean, found integer 1",
        ),
    ];
    for (source, expected) in cases {
        assert_eq!(error(source), expected, "for {source:?}");
    }
}

// ---- values ----

#[test]
fn bad_env() {
    assert_eq!(
        error("env = [\"A=1\", \"1B=2\"]\n"),
        "Smolfile:1:15: env[1]: expected KEY=VALUE with KEY matching [A-Za-z_][A-Za-z0-9_]*, found \"1B=2\""
    );
    assert_eq!(
        error("[dev]\nenv = [\"DEBUG\"]\n"),
        "Smolfile:2:8: [dev].env[0]: expected KEY=VALUE with KEY matching [A-Za-z_][A-Za-z0-9_]*, found \"DEBUG\""
    );
}

#[test]
fn bad_port_at_the_documented_position() {
    let source = "image = \"alpine\"\n\n[dev]\n# Forwarded ports.\n\nports = [\"8080:80\",\n         \"80\"]\n";
    assert_eq!(
        error(source),
        "Smolfile:7:10: [dev].ports[1]: expected HOST:GUEST with ports 1-65535, found \"80\""
    );
    assert_eq!(
        error("[dev]\nports = [\"70000:80\"]\n"),
        "Smolfile:2:10: [dev].ports[0]: expected HOST:GUEST with ports 1-65535, found \"70000:80\""
    );
    assert_eq!(
        error("[dev]\nports = [\"localhost:80:80\"]\n"),
        "Smolfile:2:10: [dev].ports[0]: expected an IPv4 address or a bracketed [IPv6] address before HOST:GUEST, found \"localhost:80:80\""
    );
}

#[test]
fn bad_volumes() {
    let source = r#"[dev]
volumes = [
  "./src:app",
  "./src:/srv/../etc",
  "./src:/",
  "src",
]
"#;
    assert_eq!(
        errors(source),
        [
            "Smolfile:3:3: [dev].volumes[0]: expected an absolute guest path, found \"app\"",
            "Smolfile:4:3: [dev].volumes[1]: expected a guest path without \"..\", found \"/srv/../etc\"",
            "Smolfile:5:3: [dev].volumes[2]: expected a guest path other than \"/\", found \"/\"",
            "Smolfile:6:3: [dev].volumes[3]: expected HOST:GUEST[:ro|:rw], found \"src\"",
        ]
    );
}

#[test]
fn duplicate_mounts_and_forwards() {
    let source = "[dev]\nvolumes = [\"a:/data\", \"b:/data/\", \"c:/data\"]\nports = [\"80:80\", \"80:8080\"]\n";
    assert_eq!(
        errors(source),
        [
            "Smolfile:2:35: [dev].volumes[2]: duplicate guest path \"/data\"; first at [dev].volumes[0]",
            "Smolfile:3:19: [dev].ports[1]: duplicate host port 80; first at [dev].ports[0]",
        ]
    );
    // The same port on different addresses is two listeners.
    assert!(parse("[dev]\nports = [\"127.0.0.1:80:80\", \"[::1]:80:80\"]\n").is_ok());
}

#[test]
fn bad_workdir() {
    assert_eq!(
        error("workdir = \"app\"\n"),
        "Smolfile:1:11: workdir: expected an absolute guest path, found \"app\""
    );
}

#[test]
fn bad_cidrs() {
    let source = "[network]\nallow_cidrs = [\"10.0.0.1/8\", \"10.0.0.0/33\", \"corp\"]\n";
    assert_eq!(
        errors(source),
        [
            "Smolfile:2:16: [network].allow_cidrs[0]: expected a network address with no host bits set, found \"10.0.0.1/8\"; did you mean \"10.0.0.0/8\"?",
            "Smolfile:2:30: [network].allow_cidrs[1]: expected a prefix length from 0 to 32 after \"/\", found \"10.0.0.0/33\"",
            "Smolfile:2:45: [network].allow_cidrs[2]: expected an IPv4 or IPv6 CIDR like 10.0.0.0/8 or fd00::/8, found \"corp\"",
        ]
    );
}

#[test]
fn bad_hostnames() {
    let source = "[network]\nallow_hosts = [\"pypi.org\", \"https://pypi.org\", \"1.1.1.1\"]\n";
    assert_eq!(
        errors(source),
        [
            "Smolfile:2:28: [network].allow_hosts[1]: expected a hostname like example.com or *.example.com, found \"https://pypi.org\"",
            "Smolfile:2:48: [network].allow_hosts[2]: expected a hostname, found IP address \"1.1.1.1\" (addresses belong in allow_cidrs)",
        ]
    );
}

#[test]
fn net_false_contradicts_allow_lists() {
    assert_eq!(
        error("net = false\n[network]\nallow_hosts = [\"pypi.org\"]\n"),
        "Smolfile:1:7: net: net = false contradicts [network].allow_hosts, which turns the network on; remove one of them"
    );
    assert_eq!(
        error("net = false\n[network]\nallow_cidrs = [\"10.0.0.0/8\"]\n"),
        "Smolfile:1:7: net: net = false contradicts [network].allow_cidrs, which turns the network on; remove one of them"
    );
    assert_eq!(
        error("net = false\n[network]\noutbound_localhost_only = true\n"),
        "Smolfile:1:7: net: net = false contradicts [network].outbound_localhost_only, which turns the network on; remove one of them"
    );
    assert!(parse("net = false\n[network]\nallow_hosts = []\n").is_ok());
    assert!(parse("net = false\n[network]\noutbound_localhost_only = false\n").is_ok());
}

#[test]
fn bad_durations() {
    let source = "[health]\nexec = [\"true\"]\ninterval = \"10\"\ntimeout = \"0s\"\nstartup_grace = \"1 minute\"\n[restart]\npolicy = \"always\"\nmax_backoff = 30\n";
    assert_eq!(
        errors(source),
        [
            "Smolfile:3:12: [health].interval: expected a duration like 10s, 2m or 500ms, found \"10\"",
            "Smolfile:4:11: [health].timeout: expected a duration greater than zero, found \"0s\"",
            "Smolfile:5:17: [health].startup_grace: expected a duration like 10s, 2m or 500ms, found \"1 minute\"",
            "Smolfile:8:15: [restart].max_backoff: expected a string, found integer 30",
        ]
    );
}

#[test]
fn integer_bounds() {
    let cases = [
        (
            "cpus = 64",
            "Smolfile:1:8: cpus: expected an integer from 1 to 32, found 64",
        ),
        (
            "cpus = 0",
            "Smolfile:1:8: cpus: expected an integer from 1 to 32, found 0",
        ),
        (
            "memory = 64",
            "Smolfile:1:10: memory: expected an integer from 128 to 1048576 (MiB), found 64",
        ),
        (
            "memory = 2097152",
            "Smolfile:1:10: memory: expected an integer from 128 to 1048576 (MiB), found 2097152",
        ),
        (
            "storage = 0",
            "Smolfile:1:11: storage: expected an integer of at least 1 (GiB), found 0",
        ),
        (
            "overlay = -2",
            "Smolfile:1:11: overlay: expected an integer of at least 1 (GiB), found -2",
        ),
        (
            "overlay = 9999999999999",
            "Smolfile:1:11: overlay: expected an integer of at least 1 (GiB), found 9999999999999",
        ),
        (
            "[artifact]\ncpus = 33",
            "Smolfile:2:8: [artifact].cpus: expected an integer from 1 to 32, found 33",
        ),
        (
            "[artifact]\nmemory = 0x10",
            "Smolfile:2:10: [artifact].memory: expected an integer from 128 to 1048576 (MiB), found 0x10",
        ),
        (
            "[health]\nexec = [\"true\"]\nretries = -1",
            "Smolfile:3:11: [health].retries: expected a non-negative integer, found -1",
        ),
        (
            "[restart]\npolicy = \"always\"\nmax_retries = -3",
            "Smolfile:3:15: [restart].max_retries: expected a non-negative integer, found -3",
        ),
    ];
    for (source, expected) in cases {
        assert_eq!(error(source), expected, "for {source:?}");
    }
    assert_eq!(parse("cpus = 32\nmemory = 128\n").unwrap().cpus, Some(32));
    assert_eq!(parse("memory = 0x800\n").unwrap().memory, Some(2048));
}

#[test]
fn bad_platform() {
    assert_eq!(
        error("[artifact]\noci_platform = \"linux/x86_64\"\n"),
        "Smolfile:2:16: [artifact].oci_platform: expected a platform like linux/amd64 or linux/arm/v7 (arch: amd64, arm64, 386, arm, ppc64le, s390x, riscv64), found \"linux/x86_64\"; did you mean \"linux/amd64\"?"
    );
    assert_eq!(
        error("[artifact]\noci_platform = \"darwin/arm64\"\n"),
        "Smolfile:2:16: [artifact].oci_platform: expected a platform like linux/amd64 or linux/arm/v7 (arch: amd64, arm64, 386, arm, ppc64le, s390x, riscv64), found \"darwin/arm64\""
    );
}

#[test]
fn bad_image_references() {
    assert_eq!(
        error("image = \"alpine@sha256:abc123\"\n"),
        "Smolfile:1:9: image: expected a digest of \"sha256:\" and exactly 64 lowercase hex characters, found \"sha256:abc123\""
    );
    assert_eq!(
        error("image = \"Python:3.12\"\n"),
        "Smolfile:1:9: image: expected lowercase repository path components matching [a-z0-9]+([._-][a-z0-9]+)*, found \"Python\""
    );
    assert_eq!(
        error("image = \"alpine:3.20 \"\n"),
        "Smolfile:1:9: image: expected a tag of 1 to 128 characters from [A-Za-z0-9_.-], not starting with \".\" or \"-\", found \"3.20 \""
    );
}

#[test]
fn bad_restart_policy() {
    assert_eq!(
        error("[restart]\npolicy = \"on_failure\"\n"),
        "Smolfile:2:10: [restart].policy: expected one of never, always, on-failure, unless-stopped, found \"on_failure\"; did you mean \"on-failure\"?"
    );
}

#[test]
fn missing_required_keys() {
    assert_eq!(
        errors("[health]\ninterval = \"5s\"\n\n[restart]\nmax_retries = 3\n"),
        [
            "Smolfile:1:1: [health]: missing required key \"exec\"",
            "Smolfile:4:1: [restart]: missing required key \"policy\"",
        ]
    );
    assert_eq!(
        error("[health]\nexec = []\n"),
        "Smolfile:2:8: [health].exec: expected a non-empty array of strings, found []"
    );
}

// ---- TOML syntax ----

#[test]
fn toml_syntax_errors_are_located() {
    assert_eq!(
        error("image = \"alpine\ncpus = 2\n"),
        "Smolfile:1:16: invalid TOML: invalid basic string, expected `\"`"
    );
    assert_eq!(
        error("cpus 4\n"),
        "Smolfile:1:6: invalid TOML: key with no value, expected `=`"
    );
    assert_eq!(
        error("cpus = 4\nmemory = 512\ncpus = 8\n"),
        "Smolfile:3:1: invalid TOML: duplicate key \"cpus\""
    );
    assert_eq!(
        error("[dev]\n[dev]\n"),
        "Smolfile:2:2: invalid TOML: duplicate key \"dev\""
    );
}

#[test]
fn toml_syntax_errors_on_separate_lines_come_together_without_follow_on_noise() {
    // The parser recovers and reports four more problems on line 2; only the first is real.
    assert_eq!(
        errors("cmd = [1, 2\nmemory = 3\n"),
        ["Smolfile:2:1: invalid TOML: missing comma between array elements, expected `,`"]
    );
    assert_eq!(
        errors("image = alpine\ncpus = 2\nenv = [\"A=1\" \"B=2\"]\n"),
        [
            "Smolfile:1:9: invalid TOML: string values must be quoted, expected literal string",
            "Smolfile:3:14: invalid TOML: missing comma between array elements, expected `,`",
        ]
    );
}

// ---- reporting ----

#[test]
fn all_errors_come_at_once_in_file_order() {
    let source = r#"
imag = "alpine"
cpus = 99

[restart]
policy = "sometimes"

[dev]
ports = ["80", "8080:80"]
volumes = ["data:data"]

[network]
allow_cidrs = ["10.1.2.3/16"]
"#;
    assert_eq!(
        errors(source),
        [
            "Smolfile:2:1: imag: unknown key \"imag\"; did you mean \"image\"?",
            "Smolfile:3:8: cpus: expected an integer from 1 to 32, found 99",
            "Smolfile:6:10: [restart].policy: expected one of never, always, on-failure, unless-stopped, found \"sometimes\"",
            "Smolfile:9:10: [dev].ports[0]: expected HOST:GUEST with ports 1-65535, found \"80\"",
            "Smolfile:10:12: [dev].volumes[0]: expected an absolute guest path, found \"data\"",
            "Smolfile:13:16: [network].allow_cidrs[0]: expected a network address with no host bits set, found \"10.1.2.3/16\"; did you mean \"10.1.0.0/16\"?",
        ]
    );
}

#[test]
fn columns_count_characters_and_follow_the_value() {
    let source = "image = \"alpine\" # ünïcödé ✓\n\t cpus    =   \"x\"\ncmd = [\"é\", 1]\n";
    assert_eq!(
        errors(source),
        [
            "Smolfile:2:15: cpus: expected an integer, found string \"x\"",
            "Smolfile:3:13: cmd[1]: expected a string, found integer 1",
        ]
    );
    assert_eq!(
        error("dev = { ports = [\"80\"] }\n"),
        "Smolfile:1:18: [dev].ports[0]: expected HOST:GUEST with ports 1-65535, found \"80\""
    );
}

#[test]
fn diagnostics_serialize_for_json_output() {
    let diagnostics = parse("cpus = 0\n[dev]\nprots = []\n").unwrap_err();
    assert_eq!(
        serde_json::to_value(&diagnostics).unwrap(),
        serde_json::json!([
            {"file": "Smolfile", "line": 1, "column": 8, "path": "cpus", "message": "expected an integer from 1 to 32, found 0"},
            {"file": "Smolfile", "line": 3, "column": 1, "path": "[dev].prots", "message": "unknown key \"prots\"; did you mean \"ports\"?"},
        ])
    );
    assert_eq!(
        diagnostics.to_string(),
        "Smolfile:1:8: cpus: expected an integer from 1 to 32, found 0\nSmolfile:3:1: [dev].prots: unknown key \"prots\"; did you mean \"ports\"?"
    );
    let error: &dyn std::error::Error = &diagnostics;
    assert!(error.to_string().starts_with("Smolfile:1:8:"));
}

#[test]
fn load_reads_the_file_and_resolves_volumes_next_to_it() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("smolfile-load");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("Smolfile");
    std::fs::write(&file, "[dev]\nvolumes = [\"./data:/data\"]\ncpus = 1\n").unwrap();
    let diagnostics = Smolfile::load(&file).unwrap_err();
    assert_eq!(
        diagnostics.to_string(),
        format!(
            "{}:3:1: [dev].cpus: unknown key \"cpus\"; did you mean top-level \"cpus\"?",
            file.display()
        )
    );
    std::fs::write(&file, "[dev]\nvolumes = [\"./data:/data\"]\n").unwrap();
    assert_eq!(
        Smolfile::load(&file).unwrap().dev.volumes[0].host,
        dir.join("data")
    );

    let missing = dir.join("Nope");
    let diagnostics = Smolfile::load(&missing).unwrap_err();
    assert_eq!(diagnostics.len(), 1);
    assert_eq!((diagnostics[0].line, diagnostics[0].column), (None, None));
    assert_eq!(
        diagnostics.to_string(),
        format!(
            "{}: cannot read: No such file or directory (os error 2)",
            missing.display()
        )
    );
}
