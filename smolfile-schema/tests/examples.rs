//! Everything users copy from must stay valid: every example Smolfile, every TOML
//! block in the docs, against both the validator and the published JSON Schema. Also
//! checks that the schema agrees with the validator on typical values and mistakes.

use std::path::{Path, PathBuf};

use smolfile::{Smolfile, json_schema};

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every file named `Smolfile` under `dir`.
fn smolfiles(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(smolfiles(&path));
        } else if path.file_name().is_some_and(|name| name == "Smolfile") {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// The contents of every ```toml fence in `text`, with `prefix` (such as `//! `)
/// stripped from each line.
fn toml_blocks(text: &str, prefix: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line
            .strip_prefix(prefix)
            .unwrap_or(line.trim_end_matches(prefix.trim_end()));
        match (&mut current, line.trim_start()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The JSON Schema, compiled (which also checks it against the draft 2020-12 meta-schema).
struct Schema {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl Schema {
    fn new() -> Schema {
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        compiler
            .add_resource("file:///smolfile.schema.json", json_schema())
            .unwrap();
        let index = compiler
            .compile("file:///smolfile.schema.json", &mut schemas)
            .unwrap_or_else(|e| panic!("the JSON Schema does not compile: {e:#}"));
        Schema { schemas, index }
    }

    /// Whether an editor using the schema would accept the TOML `text`.
    fn check(&self, text: &str) -> Result<(), String> {
        let instance: serde_json::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        self.schemas
            .validate(&instance, self.index)
            .map_err(|e| format!("{e:#}"))
    }
}

#[test]
fn every_example_is_valid() {
    let examples = crate_dir().join("../examples");
    let files = smolfiles(&examples);
    for name in [
        "bare-vm-init",
        "python-app",
        "web-service",
        "locked-down-egress",
    ] {
        assert!(
            files.contains(&examples.join(name).join("Smolfile")),
            "examples/{name}/Smolfile is missing"
        );
    }
    let schema = Schema::new();
    for file in &files {
        Smolfile::load(file).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(file).unwrap();
        schema
            .check(&text)
            .unwrap_or_else(|e| panic!("{}: rejected by the JSON Schema: {e}", file.display()));
    }
}

#[test]
fn examples_use_their_features() {
    // Each example is there to show something; make sure it still does.
    let load = |name: &str| {
        Smolfile::load(&crate_dir().join("../examples").join(name).join("Smolfile")).unwrap()
    };
    let bare = load("bare-vm-init");
    assert!(bare.image.is_none() && !bare.dev.init.is_empty());
    let python = load("python-app");
    assert!(python.dev.volumes[0].host.join("app.py").is_file());
    let web = load("web-service");
    assert!(!web.dev.ports.is_empty() && web.health.is_some());
    assert!(web.dev.volumes[0].host.join("index.html").is_file());
    assert_ne!(web.restart, smolfile::Restart::default());
    let egress = load("locked-down-egress");
    assert!(!egress.network.allow_hosts.is_empty() && !egress.network.allow_cidrs.is_empty());
}

#[test]
fn every_documented_toml_block_is_valid() {
    let readme = std::fs::read_to_string(crate_dir().join("README.md")).unwrap();
    let lib = std::fs::read_to_string(crate_dir().join("src/lib.rs")).unwrap();
    let blocks: Vec<String> = toml_blocks(&readme, "")
        .into_iter()
        .chain(toml_blocks(&lib, "//! "))
        .collect();
    assert!(blocks.len() >= 2, "found only {} toml blocks", blocks.len());
    let schema = Schema::new();
    for block in &blocks {
        Smolfile::parse(block, "doc", crate_dir()).unwrap_or_else(|e| panic!("{e}\n{block}"));
        schema
            .check(block)
            .unwrap_or_else(|e| panic!("rejected by the JSON Schema: {e}\n{block}"));
    }
}

#[test]
fn schema_is_closed_and_documented() {
    fn walk(path: &str, schema: &serde_json::Value) {
        assert_eq!(schema["additionalProperties"], false, "{path} is open");
        for (key, property) in schema["properties"].as_object().unwrap() {
            let path = format!("{path}.{key}");
            assert!(
                property["description"].is_string(),
                "{path} has no description"
            );
            if property["type"] == "object" {
                walk(&path, property);
            }
        }
    }
    let schema = json_schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    walk("", &schema);
    assert_eq!(
        schema["properties"]["restart"]["properties"]["policy"]["enum"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(schema["properties"]["cpus"]["maximum"], smolfile::MAX_CPUS);
    assert_eq!(
        schema["properties"]["health"]["required"],
        serde_json::json!(["exec"])
    );
}

/// How the validator and the schema should judge a value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    /// Both accept it.
    Valid,
    /// Both reject it: a mistake editors flag as you type.
    Invalid,
    /// Only the validator can tell (the schema's patterns approximate it).
    ValidatorOnly,
}

#[test]
fn schema_agrees_with_the_validator() {
    use Verdict::{Invalid, Valid, ValidatorOnly};
    let digest = format!("\"alpine@sha256:{}\"", "0".repeat(64));
    let samples: &[(&str, &str, &str, Verdict)] = &[
        ("", "image", "\"alpine\"", Valid),
        ("", "image", "\"python:3.12-alpine\"", Valid),
        ("", "image", "\"ghcr.io/org/app:1.0\"", Valid),
        ("", "image", "\"localhost:5000/a/b\"", Valid),
        ("", "image", "\"[::1]:5000/app\"", Valid),
        ("", "image", &digest, Valid),
        ("", "image", "\"a__b/c--d.e\"", Valid),
        ("", "image", "\"Alpine\"", Invalid),
        ("", "image", "\"alpine:\"", Invalid),
        ("", "image", "\"alpine@sha256:abc\"", Invalid),
        ("", "image", "\"org//app\"", Invalid),
        ("", "image", "\"app-\"", Invalid),
        ("", "env", "[\"A=1\", \"_=x\", \"A=\"]", Valid),
        ("", "env", "[\"A\"]", Invalid),
        ("", "env", "[\"1A=1\"]", Invalid),
        ("", "workdir", "\"/srv\"", Valid),
        ("", "workdir", "\"srv\"", Invalid),
        ("", "workdir", "\"/a/../b\"", ValidatorOnly),
        ("", "cpus", "1", Valid),
        ("", "cpus", "32", Valid),
        ("", "cpus", "0", Invalid),
        ("", "cpus", "33", Invalid),
        ("", "cpus", "\"4\"", Invalid),
        ("", "memory", "127", Invalid),
        ("", "storage", "0", Invalid),
        ("", "net", "\"yes\"", Invalid),
        ("", "unknown", "1", Invalid),
        (
            "dev",
            "volumes",
            "[\"./src:/app\", \"/a:/b:ro\", \"../x:/x:rw\", \".:/code\"]",
            Valid,
        ),
        ("dev", "volumes", "[\"src\"]", Invalid),
        ("dev", "volumes", "[\"./src:app\"]", Invalid),
        ("dev", "volumes", "[\"a:/b:rx\"]", Invalid),
        ("dev", "volumes", "[\"~/x:/x\"]", Invalid),
        ("dev", "volumes", "[\"./src:/\"]", ValidatorOnly),
        ("dev", "volumes", "[\"./a:/b/../c\"]", ValidatorOnly),
        (
            "dev",
            "ports",
            "[\"80:80\", \"127.0.0.1:8080:80\", \"[::1]:443:8443\"]",
            Valid,
        ),
        ("dev", "ports", "[\"80\"]", Invalid),
        ("dev", "ports", "[\"localhost:80:80\"]", Invalid),
        ("dev", "ports", "[\"80:80/udp\"]", Invalid),
        ("dev", "ports", "[8080]", Invalid),
        ("dev", "ports", "[\"70000:80\"]", ValidatorOnly),
        ("dev", "prots", "[]", Invalid),
        (
            "network",
            "allow_cidrs",
            "[\"10.0.0.0/8\", \"fd00::/8\", \"192.0.2.1\", \"::/0\", \"2001:db8::1\"]",
            Valid,
        ),
        ("network", "allow_cidrs", "[\"corp\"]", Invalid),
        ("network", "outbound_localhost_only", "true", Valid),
        ("network", "outbound_localhost_only", "\"yes\"", Invalid),
        ("network", "allow_cidrs", "[\"10.0.0.0/123\"]", Invalid),
        ("network", "allow_cidrs", "[\"10.0.0.1/8\"]", ValidatorOnly),
        ("network", "allow_cidrs", "[\"999.0.0.0/8\"]", ValidatorOnly),
        (
            "network",
            "allow_hosts",
            "[\"pypi.org\", \"*.example.com\", \"localhost\", \"EXAMPLE.com\"]",
            Valid,
        ),
        ("network", "allow_hosts", "[\"https://pypi.org\"]", Invalid),
        ("network", "allow_hosts", "[\"a.*.com\"]", Invalid),
        ("network", "allow_hosts", "[\"under_score.com\"]", Invalid),
        ("network", "allow_hosts", "[\"example.com.\"]", Invalid),
        ("network", "allow_hosts", "[\"10.0.0.1\"]", ValidatorOnly),
        ("artifact", "oci_platform", "\"linux/amd64\"", Valid),
        ("artifact", "oci_platform", "\"linux/arm/v7\"", Valid),
        ("artifact", "oci_platform", "\"linux/x86_64\"", Invalid),
        ("artifact", "oci_platform", "\"darwin/arm64\"", Invalid),
        ("health", "interval", "\"1m30s\"", Valid),
        ("health", "interval", "\"500ms\"", Valid),
        ("health", "interval", "\"10\"", Invalid),
        ("health", "interval", "\"1.5s\"", Invalid),
        ("health", "interval", "\"0s\"", ValidatorOnly),
        ("health", "exec", "[]", Invalid),
        ("health", "retries", "-1", Invalid),
        ("restart", "policy", "\"unless-stopped\"", Valid),
        ("restart", "policy", "\"on_failure\"", Invalid),
        ("restart", "max_backoff", "\"1h\"", Valid),
        ("auth", "ssh_agent", "true", Valid),
        ("auth", "ssh_agent", "\"true\"", Invalid),
    ];
    let schema = Schema::new();
    let mut disagreements = Vec::new();
    for &(table, key, value, expected) in samples {
        // [health] and [restart] need their required key to be valid at all.
        let required = match (table, key) {
            ("health", "exec") | ("restart", "policy") => "",
            ("health", _) => "exec = [\"true\"]\n",
            ("restart", _) => "policy = \"never\"\n",
            _ => "",
        };
        let header = if table.is_empty() {
            String::new()
        } else {
            format!("[{table}]\n")
        };
        let text = format!("{header}{required}{key} = {value}\n");
        let validator = Smolfile::parse(&text, "Smolfile", Path::new("/")).is_ok();
        let editor = schema.check(&text).is_ok();
        let verdict = match (validator, editor) {
            (true, true) => Valid,
            (false, false) => Invalid,
            (false, true) => ValidatorOnly,
            (true, false) => {
                disagreements.push(format!("the schema rejects a valid file:\n{text}"));
                continue;
            }
        };
        if verdict != expected {
            disagreements.push(format!("expected {expected:?}, got {verdict:?}:\n{text}"));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
