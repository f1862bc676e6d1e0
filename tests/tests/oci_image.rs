//! The OCI image of the filter and the Kubernetes examples that load it:
//! `envoy/oci-image.sh` writes an OCI layout in the Wasm compat variant (one
//! tar+gzip layer holding exactly `plugin.wasm`, byte-identical to the build;
//! the `module.wasm.image/variant=compat` annotation; every blob under its
//! sha256), reproducibly, and prints the digests users paste; the example
//! manifests (`envoy/istio-wasmplugin.yaml`,
//! `envoy/envoy-gateway-extensionpolicy.yaml`) carry plugin configurations the
//! filter's own parser accepts and name the filter and the ECDS file the way
//! the sidecar renders them. Third-party tools (skopeo, umoci, a registry) are
//! exercised by `envoy/check-oci-image.sh`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tenant_guard_e2e::tempdir::TempDir;
use tenant_guard_e2e::{repo_root, wasm_path};
use tenant_guard_sidecar::envoy::{ECDS_FILE_NAME, ECDS_RESOURCE_NAME};

/// `sha256sum FILE` (hex).
fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Runs `bash envoy/oci-image.sh --wasm WASM --out OUT --tag TAG`; returns its
/// `key=value` stdout lines.
fn build_image(wasm: &Path, out: &Path, tag: &str) -> Vec<(String, String)> {
    let output = Command::new("bash")
        .arg(repo_root().join("envoy/oci-image.sh"))
        .arg("--wasm")
        .arg(wasm)
        .arg("--out")
        .arg(out)
        .args(["--tag", tag])
        .output()
        .expect("bash envoy/oci-image.sh");
    assert!(
        output.status.success(),
        "oci-image.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn get<'a>(kv: &'a [(String, String)], key: &str) -> &'a str {
    kv.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("oci-image.sh printed no {key}= line: {kv:?}"))
}

fn blob(layout: &Path, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    let path = layout.join("blobs/sha256").join(hex);
    assert!(path.is_file(), "missing blob {digest}");
    assert_eq!(
        sha256(&path),
        hex,
        "blob {digest} is not stored under its digest"
    );
    path
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).expect("JSON")
}

#[test]
fn the_oci_layout_is_the_wasm_compat_variant_holding_the_build() {
    let wasm = wasm_path();
    let dir = TempDir::new("oci").unwrap();
    let layout = dir.path().join("image");
    let kv = build_image(&wasm, &layout, "e2e");

    assert_eq!(get(&kv, "image"), format!("{}:e2e", layout.display()));
    assert_eq!(get(&kv, "wasm_sha256"), sha256(&wasm));
    assert_eq!(
        json(&layout.join("oci-layout")),
        serde_json::json!({"imageLayoutVersion": "1.0.0"})
    );

    let index = json(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().expect("index manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    let descriptor = &manifests[0];
    assert_eq!(
        descriptor["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        descriptor["annotations"]["org.opencontainers.image.ref.name"],
        "e2e"
    );
    let digest = descriptor["digest"].as_str().unwrap();
    assert_eq!(
        get(&kv, "image_digest"),
        digest,
        "the printed digest is the manifest's"
    );
    let manifest_path = blob(&layout, digest);
    assert_eq!(
        descriptor["size"].as_u64(),
        Some(fs::metadata(&manifest_path).unwrap().len())
    );

    let manifest = json(&manifest_path);
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["annotations"]["module.wasm.image/variant"],
        "compat"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let config = json(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "the compat variant has exactly one layer");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let layer = blob(&layout, layers[0]["digest"].as_str().unwrap());
    assert_eq!(
        layers[0]["size"].as_u64(),
        Some(fs::metadata(&layer).unwrap().len())
    );

    // The layer holds exactly plugin.wasm (what Istio and Envoy Gateway look
    // for), equal to the build; the config's diff_id is the uncompressed tar's.
    let list = Command::new("tar")
        .arg("-tzf")
        .arg(&layer)
        .output()
        .unwrap();
    assert!(list.status.success());
    assert_eq!(String::from_utf8_lossy(&list.stdout), "plugin.wasm\n");
    let extracted = dir.path().join("layer");
    fs::create_dir(&extracted).unwrap();
    let untar = Command::new("tar")
        .arg("-xzf")
        .arg(&layer)
        .arg("-C")
        .arg(&extracted)
        .status()
        .unwrap();
    assert!(untar.success());
    assert!(
        fs::read(extracted.join("plugin.wasm")).unwrap() == fs::read(&wasm).unwrap(),
        "plugin.wasm in the layer differs from the build"
    );
    let tar_path = dir.path().join("layer.tar");
    let gunzip = Command::new("sh")
        .arg("-c")
        .arg(r#"gzip -dc "$1" > "$2""#)
        .args(["sh"])
        .arg(&layer)
        .arg(&tar_path)
        .status()
        .unwrap();
    assert!(gunzip.success());
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!([format!("sha256:{}", sha256(&tar_path))])
    );

    // Reproducible: a second build of the same .wasm has the same digest.
    let again = build_image(&wasm, &dir.path().join("again"), "e2e");
    assert_eq!(get(&again, "image_digest"), digest);
}

#[test]
fn oci_image_sh_refuses_a_file_that_is_not_wasm() {
    let dir = TempDir::new("oci").unwrap();
    let bogus = dir.path().join("bogus.wasm");
    fs::write(&bogus, b"#!/bin/sh\necho not wasm\n").unwrap();
    let output = Command::new("bash")
        .arg(repo_root().join("envoy/oci-image.sh"))
        .arg("--wasm")
        .arg(&bogus)
        .arg("--out")
        .arg(dir.path().join("image"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not a WebAssembly module"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!dir.path().join("image").exists(), "nothing written");
}

/// The JSON object that follows `key: ` in a YAML file (written as a JSON flow
/// mapping there), up to its balancing brace.
fn json_after_key(yaml: &str, key: &str) -> Value {
    let needle = format!("{key}: {{");
    let start = yaml
        .find(&needle)
        .unwrap_or_else(|| panic!("no `{needle}`"))
        + needle.len()
        - 1;
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (offset, c) in yaml[start..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '{' if !in_string => depth += 1,
            '}' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    let text = &yaml[start..=start + offset];
                    return serde_json::from_str(text)
                        .unwrap_or_else(|e| panic!("`{key}` is not JSON ({e}):\n{text}"));
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces after `{needle}`");
}

#[test]
fn the_kubernetes_examples_carry_valid_configs_and_the_sidecars_names() {
    for (file, config_key) in [
        ("envoy/istio-wasmplugin.yaml", "pluginConfig"),
        ("envoy/envoy-gateway-extensionpolicy.yaml", "config"),
    ] {
        let yaml = fs::read_to_string(repo_root().join(file)).unwrap();
        let config = json_after_key(&yaml, config_key);
        tenant_guard_core::config::parse(config.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{file}: the filter rejects `{config_key}`: {e}"));

        // Option A: the image oci-image.sh builds, the root id the filter uses.
        assert!(yaml.contains("REGISTRY/tenant-guard-filter:"), "{file}");
        assert!(yaml.contains("sha256: IMAGE_DIGEST_HEX"), "{file}");
        let root_id = format!(": {ECDS_RESOURCE_NAME}\n");
        assert!(
            yaml.contains(&format!("pluginName{root_id}"))
                || yaml.contains(&format!("rootID{root_id}")),
            "{file}: the root id is {ECDS_RESOURCE_NAME}"
        );
        // Option B: the filter named like the ECDS resource the sidecar
        // writes, watching the file the sidecar writes, in the directory the
        // sidecar is told to write to.
        assert!(
            yaml.contains(&format!(
                "name: {ECDS_RESOURCE_NAME}\n          config_discovery:"
            )),
            "{file}: the HTTP filter is named {ECDS_RESOURCE_NAME}"
        );
        assert!(
            yaml.contains(&format!("path: /var/run/tenant-guard/{ECDS_FILE_NAME}\n")),
            "{file}: watches {ECDS_FILE_NAME}"
        );
        assert!(
            yaml.contains("- --ecds-dir=/var/run/tenant-guard\n"),
            "{file}"
        );
        assert!(yaml.contains("type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"));
    }
}
