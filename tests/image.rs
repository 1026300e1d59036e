//! The container image, built for real without a container engine: `docker/build-oci.sh` makes a Debian
//! slim root file system with mmdebstrap, adds the binary under test and the scenarios, packs an OCI image
//! with umoci, unpacks it again and runs `understudy demo` inside it (chroot, uid 10001). Here the image is
//! checked as a registry would see it: an OCI layout whose index names the tag, a manifest with one layer,
//! and the Dockerfile's entrypoint, command, user, working directory and port.
//!
//! Needs root and Debian's apt sources (the script installs mmdebstrap and umoci when missing); fails,
//! saying why, without them.

use std::path::Path;
use std::process::Command;

fn blob(layout: &Path, digest: &str) -> serde_json::Value {
    let (algorithm, hex) = digest.split_once(':').expect("a digest");
    let text = std::fs::read_to_string(layout.join("blobs").join(algorithm).join(hex)).expect("the blob is there");
    serde_json::from_str(&text).expect("a JSON blob")
}

#[test]
fn the_image_builds_without_a_daemon_and_runs_the_demo() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = root.join("target/oci-test");
    let out = Command::new("bash")
        .arg(root.join("docker/build-oci.sh"))
        .arg(env!("CARGO_BIN_EXE_understudy"))
        .arg(&out_dir)
        .output()
        .expect("bash runs docker/build-oci.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "docker/build-oci.sh failed:\n{text}");
    // The demo ran inside the image and its check held: the acks in Kafka and the events in the store
    // agree one for one.
    assert!(text.contains("`understudy demo` ran inside it"), "{text}");
    assert!(text.contains("check: ") && text.contains("duplicate acks ✓"), "the demo's check is missing:\n{text}");

    let layout = out_dir.join("image");
    let version = env!("CARGO_PKG_VERSION");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(layout.join("index.json")).unwrap()).unwrap();
    let tagged = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == version)
        .unwrap_or_else(|| panic!("no manifest tagged {version}: {index}"));
    let manifest = blob(&layout, tagged["digest"].as_str().unwrap());
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1, "{manifest}");
    let config = blob(&layout, manifest["config"]["digest"].as_str().unwrap());
    let c = &config["config"];
    assert_eq!((config["os"].as_str(), config["architecture"].as_str()), (Some("linux"), Some("amd64")));
    assert_eq!(c["Entrypoint"], serde_json::json!(["/usr/local/bin/understudy"]));
    assert_eq!(c["Cmd"], serde_json::json!(["run", "--metrics-addr", "0.0.0.0:9464"]));
    assert_eq!((c["User"].as_str(), c["WorkingDir"].as_str()), (Some("10001"), Some("/srv/understudy")));
    assert!(c["ExposedPorts"].get("9464/tcp").is_some(), "{c}");
    let _ = std::fs::remove_dir_all(&out_dir);
}
