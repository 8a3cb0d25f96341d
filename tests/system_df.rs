//! `docker system df` through the real docker CLI (root).

mod common;
use common::daemon_with_image;

/// The rows of `docker system df` as (type, total, active).
fn rows(out: &str) -> Vec<(String, String, String)> {
    out.lines()
        .skip(1)
        .map(|l| {
            let (ty, rest) = l.split_at(16.min(l.len()));
            let mut f = rest.split_whitespace();
            let total = f.next().unwrap_or("").to_string();
            let active = f.next().unwrap_or("").to_string();
            (ty.trim().to_string(), total, active)
        })
        .collect()
}

#[test]
fn system_df_counts_images_and_containers() {
    let Some(d) = daemon_with_image() else { return };
    d.ok(&["run", "-d", "--name", "dfrun", "bb:test", "sleep", "1000"]);
    d.ok(&[
        "run",
        "--name",
        "dfexit",
        "bb:test",
        "sh",
        "-c",
        "head -c 100000 /dev/zero > /blob",
    ]);
    d.ok(&["commit", "dfexit", "dfimg:1"]);
    let out = d.ok(&["system", "df"]);
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
        "{out}"
    );
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        rows(&out),
        vec![
            s("Images", "2", "1"),
            s("Containers", "2", "1"),
            s("Local Volumes", "0", "0"),
            s("Build Cache", "0", "0"),
        ],
        "{out}"
    );
    let v = d.ok(&["system", "df", "-v", "--format", "{{json .}}"]);
    let v: serde_json::Value = serde_json::from_str(&v).expect("json");
    let ctrs = v["Containers"].as_array().expect("containers");
    let exited = ctrs
        .iter()
        .find(|c| c["Names"] == "dfexit")
        .expect("dfexit listed");
    // The CLI shows SizeRw as "Size": 100 kB written.
    assert_eq!(exited["Size"], "100kB", "{exited}");
    let imgs = v["Images"].as_array().expect("images");
    let bb = imgs
        .iter()
        .find(|i| i["Repository"] == "bb")
        .expect("bb listed");
    assert_eq!(bb["Containers"], "2", "{bb}");
    assert_ne!(bb["SharedSize"], "0B", "{bb}");
    d.ok(&["rm", "-f", "dfrun", "dfexit"]);
    d.ok(&["rmi", "dfimg:1"]);
}
