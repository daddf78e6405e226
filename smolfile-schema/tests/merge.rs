//! One table of cases for `merge`, one or more per precedence rule.

use std::path::Path;

use smolfile::{
    Cidr, Effective, HostPattern, ImageConfig, Overrides, Platform, Port, Purpose, Smolfile,
    Volume, merge,
};

/// A Python-like image config.
fn image() -> ImageConfig {
    ImageConfig {
        entrypoint: vec!["docker-entrypoint.sh".into()],
        cmd: vec!["python3".into()],
        env: vec!["PATH=/usr/bin".into(), "LANG=C".into()],
        workdir: Some("/image".into()),
        user: Some("app".into()),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn volume(spec: &str) -> Volume {
    Volume::parse(spec, Path::new("/cli")).unwrap()
}

fn port(spec: &str) -> Port {
    Port::parse(spec).unwrap()
}

struct Case {
    rule: &'static str,
    purpose: Purpose,
    smolfile: Option<&'static str>,
    cli: Overrides,
    image: Option<ImageConfig>,
    /// The part of the result the rule is about, as Debug text.
    show: fn(&Effective) -> String,
    expected: &'static str,
}

fn image_name(e: &Effective) -> String {
    format!("{:?}", e.image)
}
fn argv(e: &Effective) -> String {
    format!("{:?} {:?}", e.entrypoint, e.cmd)
}
fn env(e: &Effective) -> String {
    format!("{:?}", e.env)
}
fn workdir(e: &Effective) -> String {
    format!("{:?}", e.workdir)
}
fn mounts(e: &Effective) -> String {
    let volumes: Vec<String> = e.volumes.iter().map(ToString::to_string).collect();
    let ports: Vec<String> = e.ports.iter().map(ToString::to_string).collect();
    format!("{volumes:?} {ports:?} {:?}", e.init)
}
fn resources(e: &Effective) -> String {
    format!(
        "cpus={} memory={} storage={} overlay={}",
        e.cpus, e.memory, e.storage, e.overlay
    )
}
fn network(e: &Effective) -> String {
    let hosts: Vec<&str> = e.allow_hosts.iter().map(HostPattern::as_str).collect();
    let cidrs: Vec<String> = e.allow_cidrs.iter().map(ToString::to_string).collect();
    format!(
        "net={} {hosts:?} {cidrs:?} localhost_only={}",
        e.net, e.localhost_only
    )
}
fn platform(e: &Effective) -> String {
    format!("{:?}", e.platform.as_ref().map(ToString::to_string))
}

const WITH_IMAGE: &str = "image = \"python:3.12\"";
const ENTRYPOINT_AND_CMD: &str = r#"
entrypoint = ["/bin/app"]
cmd = ["serve"]
[artifact]
entrypoint = ["/bin/packed"]
cmd = ["--packed"]
"#;
const ENTRYPOINT_ONLY: &str = "entrypoint = [\"/bin/sh\", \"-c\"]";
const CMD_ONLY: &str = "cmd = [\"python3\", \"-m\", \"http.server\"]";
const ENV: &str = r#"
env = ["LANG=en_US.UTF-8", "A=top"]
[dev]
env = ["A=dev", "B=dev"]
"#;
const WORKDIRS: &str = "workdir = \"/top\"\n[dev]\nworkdir = \"/dev\"\n";
const TOP_WORKDIR: &str = "workdir = \"/top\"";
const DEV_LISTS: &str = r#"
[dev]
volumes = ["./src:/src", "./data:/data:ro"]
ports = ["8080:80", "127.0.0.1:9090:90"]
init = ["echo one"]
"#;
const RESOURCES: &str = r#"
cpus = 2
memory = 2048
storage = 40
overlay = 8
[artifact]
cpus = 1
memory = 512
"#;
const ALLOW_HOSTS: &str = "[network]\nallow_hosts = [\"pypi.org\"]";
const NET_TRUE: &str = "net = true";
const PLATFORM: &str = "[artifact]\noci_platform = \"linux/arm64\"";
const RUN_EXTRAS: &str = r#"
[health]
exec = ["true"]
[restart]
policy = "always"
[auth]
ssh_agent = true
"#;

fn cases() -> Vec<Case> {
    let run = Purpose::Run;
    let case =
        |rule, purpose, smolfile, cli, image, show: fn(&Effective) -> String, expected| Case {
            rule,
            purpose,
            smolfile,
            cli,
            image,
            show,
            expected,
        };
    let none = Overrides::default;
    vec![
        // image: --image > Smolfile image > bare VM
        case(
            "no image anywhere is the bare VM",
            run,
            None,
            none(),
            None,
            image_name,
            "None",
        ),
        case(
            "Smolfile image",
            run,
            Some(WITH_IMAGE),
            none(),
            None,
            image_name,
            "Some(\"python:3.12\")",
        ),
        case(
            "--image beats the Smolfile",
            run,
            Some(WITH_IMAGE),
            Overrides {
                image: Some("alpine".into()),
                ..none()
            },
            None,
            image_name,
            "Some(\"alpine\")",
        ),
        // entrypoint and cmd
        case(
            "image entrypoint and cmd by default",
            run,
            None,
            none(),
            Some(image()),
            argv,
            r#"["docker-entrypoint.sh"] ["python3"]"#,
        ),
        case(
            "Smolfile entrypoint and cmd beat the image",
            run,
            Some(ENTRYPOINT_AND_CMD),
            none(),
            Some(image()),
            argv,
            r#"["/bin/app"] ["serve"]"#,
        ),
        case(
            "a Smolfile entrypoint drops the image cmd",
            run,
            Some(ENTRYPOINT_ONLY),
            none(),
            Some(image()),
            argv,
            r#"["/bin/sh", "-c"] []"#,
        ),
        case(
            "a Smolfile cmd keeps the image entrypoint",
            run,
            Some(CMD_ONLY),
            none(),
            Some(image()),
            argv,
            r#"["docker-entrypoint.sh"] ["python3", "-m", "http.server"]"#,
        ),
        case(
            "args after -- beat the Smolfile cmd",
            run,
            Some(ENTRYPOINT_AND_CMD),
            Overrides {
                cmd: strings(&["migrate"]),
                ..none()
            },
            Some(image()),
            argv,
            r#"["/bin/app"] ["migrate"]"#,
        ),
        case(
            "args after -- beat the image cmd",
            run,
            None,
            Overrides {
                cmd: strings(&["bash"]),
                ..none()
            },
            Some(image()),
            argv,
            r#"["docker-entrypoint.sh"] ["bash"]"#,
        ),
        case(
            "--entrypoint beats the Smolfile and keeps the Smolfile cmd",
            run,
            Some(ENTRYPOINT_AND_CMD),
            Overrides {
                entrypoint: Some(strings(&["/bin/sh"])),
                ..none()
            },
            Some(image()),
            argv,
            r#"["/bin/sh"] ["serve"]"#,
        ),
        case(
            "[artifact] entrypoint and cmd win when packing",
            Purpose::Pack,
            Some(ENTRYPOINT_AND_CMD),
            none(),
            Some(image()),
            argv,
            r#"["/bin/packed"] ["--packed"]"#,
        ),
        case(
            "[artifact] is ignored when creating",
            Purpose::Create,
            Some(ENTRYPOINT_AND_CMD),
            none(),
            Some(image()),
            argv,
            r#"["/bin/app"] ["serve"]"#,
        ),
        // env: image, env, [dev].env, -e; later wins per key in first-seen order
        case(
            "env layers for run",
            run,
            Some(ENV),
            Overrides {
                env: strings(&["B=cli", "PATH=/cli/bin", "C=cli"]),
                ..none()
            },
            Some(image()),
            env,
            r#"["PATH=/cli/bin", "LANG=en_US.UTF-8", "A=dev", "B=cli", "C=cli"]"#,
        ),
        case(
            "env layers for create",
            Purpose::Create,
            Some(ENV),
            none(),
            None,
            env,
            r#"["LANG=en_US.UTF-8", "A=dev", "B=dev"]"#,
        ),
        case(
            "packing leaves out [dev].env",
            Purpose::Pack,
            Some(ENV),
            Overrides {
                env: strings(&["X=1"]),
                ..none()
            },
            Some(image()),
            env,
            r#"["PATH=/usr/bin", "LANG=en_US.UTF-8", "A=top", "X=1"]"#,
        ),
        // workdir: --workdir > [dev].workdir > workdir > image
        case(
            "image workdir",
            run,
            None,
            none(),
            Some(image()),
            workdir,
            "Some(\"/image\")",
        ),
        case(
            "top-level workdir beats the image",
            run,
            Some(TOP_WORKDIR),
            none(),
            Some(image()),
            workdir,
            "Some(\"/top\")",
        ),
        case(
            "[dev].workdir beats top-level",
            run,
            Some(WORKDIRS),
            none(),
            Some(image()),
            workdir,
            "Some(\"/dev\")",
        ),
        case(
            "--workdir beats everything",
            run,
            Some(WORKDIRS),
            Overrides {
                workdir: Some("/cli".into()),
                ..none()
            },
            Some(image()),
            workdir,
            "Some(\"/cli\")",
        ),
        case(
            "packing ignores [dev].workdir",
            Purpose::Pack,
            Some(WORKDIRS),
            none(),
            None,
            workdir,
            "Some(\"/top\")",
        ),
        case(
            "no workdir anywhere",
            run,
            None,
            none(),
            None,
            workdir,
            "None",
        ),
        // volumes, ports, init: [dev] lists then flags
        case(
            "[dev] lists then flags; a flag replaces the same guest path or host port",
            run,
            Some(DEV_LISTS),
            Overrides {
                volumes: vec![volume("/elsewhere:/data"), volume("./logs:/logs")],
                ports: vec![port("8080:8000"), port("9090:90")],
                init: strings(&["echo two"]),
                ..none()
            },
            None,
            mounts,
            r#"["/proj/src:/src", "/elsewhere:/data", "/cli/logs:/logs"] ["8080:8000", "127.0.0.1:9090:90", "9090:90"] ["echo one", "echo two"]"#,
        ),
        case(
            "packing ignores [dev] lists",
            Purpose::Pack,
            Some(DEV_LISTS),
            Overrides {
                init: strings(&["echo two"]),
                ..none()
            },
            None,
            mounts,
            r#"[] [] ["echo two"]"#,
        ),
        // cpus, memory, storage, overlay: flag > Smolfile ([artifact] first when packing) > defaults
        case(
            "defaults",
            run,
            None,
            none(),
            None,
            resources,
            "cpus=4 memory=8192 storage=20 overlay=2",
        ),
        case(
            "Smolfile values",
            run,
            Some(RESOURCES),
            none(),
            None,
            resources,
            "cpus=2 memory=2048 storage=40 overlay=8",
        ),
        case(
            "[artifact] wins when packing",
            Purpose::Pack,
            Some(RESOURCES),
            none(),
            None,
            resources,
            "cpus=1 memory=512 storage=40 overlay=8",
        ),
        case(
            "flags win over [artifact] too",
            Purpose::Pack,
            Some(RESOURCES),
            Overrides {
                cpus: Some(8),
                memory: Some(4096),
                storage: Some(1),
                overlay: Some(3),
                ..none()
            },
            None,
            resources,
            "cpus=8 memory=4096 storage=1 overlay=3",
        ),
        // net and allow lists
        case(
            "no network by default",
            run,
            None,
            none(),
            None,
            network,
            r#"net=false [] [] localhost_only=false"#,
        ),
        case(
            "net = true",
            run,
            Some(NET_TRUE),
            none(),
            None,
            network,
            r#"net=true [] [] localhost_only=false"#,
        ),
        case(
            "--net",
            run,
            None,
            Overrides {
                net: true,
                ..none()
            },
            None,
            network,
            r#"net=true [] [] localhost_only=false"#,
        ),
        case(
            "allow_hosts implies net",
            run,
            Some(ALLOW_HOSTS),
            none(),
            None,
            network,
            r#"net=true ["pypi.org"] [] localhost_only=false"#,
        ),
        case(
            "--allow-* imply net and add to the Smolfile's lists",
            Purpose::Pack,
            Some(ALLOW_HOSTS),
            Overrides {
                allow_hosts: vec![
                    HostPattern::parse("PyPI.org").unwrap(),
                    HostPattern::parse("*.example.com").unwrap(),
                ],
                allow_cidrs: vec![Cidr::parse("10.0.0.0/8").unwrap()],
                ..none()
            },
            None,
            network,
            r#"net=true ["pypi.org", "*.example.com"] ["10.0.0.0/8"] localhost_only=false"#,
        ),
        case(
            "outbound_localhost_only implies net",
            run,
            Some("[network]\noutbound_localhost_only = true\n"),
            none(),
            None,
            network,
            r#"net=true [] [] localhost_only=true"#,
        ),
        case(
            "--outbound-localhost-only implies net and holds over a Smolfile without it",
            run,
            Some(ALLOW_HOSTS),
            Overrides {
                localhost_only: true,
                ..none()
            },
            None,
            network,
            r#"net=true ["pypi.org"] [] localhost_only=true"#,
        ),
        // platform: flag > [artifact].oci_platform when packing
        case(
            "oci_platform when packing",
            Purpose::Pack,
            Some(PLATFORM),
            none(),
            None,
            platform,
            "Some(\"linux/arm64\")",
        ),
        case(
            "oci_platform is for packing only",
            run,
            Some(PLATFORM),
            none(),
            None,
            platform,
            "None",
        ),
        case(
            "--oci-platform beats [artifact]",
            Purpose::Pack,
            Some(PLATFORM),
            Overrides {
                platform: Some(Platform::parse("linux/amd64").unwrap()),
                ..none()
            },
            None,
            platform,
            "Some(\"linux/amd64\")",
        ),
        // passed through
        case(
            "health, restart, ssh_agent and the image user pass through",
            run,
            Some(RUN_EXTRAS),
            none(),
            Some(image()),
            |e| {
                format!(
                    "{:?} {} {} {:?}",
                    e.health.as_ref().map(|h| &h.exec),
                    e.restart.policy,
                    e.ssh_agent,
                    e.user
                )
            },
            r#"Some(["true"]) always true Some("app")"#,
        ),
    ]
}

#[test]
fn merge_rules() {
    let mut failures = Vec::new();
    for case in cases() {
        let smolfile = case.smolfile.map(|text| {
            Smolfile::parse(text, "Smolfile", Path::new("/proj"))
                .unwrap_or_else(|e| panic!("{}: {e}", case.rule))
        });
        let effective = merge(
            case.purpose,
            smolfile.as_ref(),
            &case.cli,
            case.image.as_ref(),
        );
        let got = (case.show)(&effective);
        if got != case.expected {
            failures.push(format!(
                "{} ({:?}):\n  expected {}\n  got      {got}",
                case.rule, case.purpose, case.expected
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn argv_is_entrypoint_then_cmd() {
    let effective = merge(
        Purpose::Run,
        None,
        &Overrides {
            cmd: strings(&["-c", "1"]),
            ..Overrides::default()
        },
        Some(&image()),
    );
    assert_eq!(effective.argv(), ["docker-entrypoint.sh", "-c", "1"]);
}

#[test]
fn schema_defaults_are_the_merge_defaults() {
    // Writing out every default the JSON Schema documents changes nothing.
    let schema = smolfile::json_schema();
    // [health] and [restart] only exist with their required keys.
    let required = |key: &str| match key {
        "exec" => Some("[\"true\"]"),
        "policy" => Some("\"never\""),
        _ => None,
    };
    let (mut explicit, mut implicit) = (String::new(), String::new());
    for (key, property) in schema["properties"].as_object().unwrap() {
        if let Some(default) = property.get("default") {
            explicit += &format!("{key} = {default}\n");
        }
    }
    for (table, property) in schema["properties"].as_object().unwrap() {
        let Some(keys) = property.get("properties") else {
            continue;
        };
        explicit += &format!("[{table}]\n");
        implicit += &format!("[{table}]\n");
        for (key, property) in keys.as_object().unwrap() {
            if let Some(value) = required(key) {
                explicit += &format!("{key} = {value}\n");
                implicit += &format!("{key} = {value}\n");
            } else if let Some(default) = property.get("default") {
                explicit += &format!("{key} = {default}\n");
            }
        }
    }
    let parse = |text: &str| {
        Smolfile::parse(text, "Smolfile", Path::new("/")).unwrap_or_else(|e| panic!("{e}\n{text}"))
    };
    let (explicit, implicit) = (parse(&explicit), parse(&implicit));
    let cli = Overrides::default();
    assert_eq!(
        merge(Purpose::Run, Some(&explicit), &cli, None),
        merge(Purpose::Run, Some(&implicit), &cli, None)
    );
}
