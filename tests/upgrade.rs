//! Live upgrade (issue 3): `berthd upgrade` under load fails no request and refuses no
//! connection, and every injected failure of the new generation rolls back with the old
//! generation (or a respawned one) serving on.

mod common;

use berth_load::{Config, Window};
use common::{daemon_with_image, Daemon};
use std::time::{Duration, Instant};

/// Starts `n` long-running containers.
fn run_containers(d: &Daemon, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
        let children: Vec<_> = chunk
            .iter()
            .map(|_| {
                d.cmd(&[
                    "run",
                    "-d",
                    "--network",
                    "none",
                    "bb:test",
                    "sleep",
                    "100000",
                ])
                .output()
            })
            .collect();
        for c in children {
            let c = c.expect("docker run");
            assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
            ids.push(String::from_utf8_lossy(&c.stdout).trim().to_string());
        }
    }
    ids
}

fn load_config(d: &Daemon, clients: usize) -> Config {
    let mut cfg = Config::new(&d.sock);
    cfg.clients = clients;
    cfg.image = "bb:test".into();
    cfg
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(((v.len() as f64 * p).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0.0)
}

#[test]
fn twenty_upgrades_under_load_fail_nothing() {
    let Some(d) = daemon_with_image() else { return };
    let ids = run_containers(&d, 30);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let load = {
        let _g = rt.enter();
        berth_load::start(load_config(&d, 32))
    };
    common::until("load to flow", || load.progress().completed() > 200);
    let mut windows = Vec::new();
    let mut freeze = Vec::new();
    for i in 0..20 {
        let start = berth_load::now_ns();
        let (out, report) = d.upgrade(&["--probation-ms", "200"]);
        windows.push(Window {
            start_ns: start,
            end_ns: berth_load::now_ns(),
        });
        assert!(
            out.status.success(),
            "upgrade {i}: {} {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            report,
            common::tail(&d.log(), 60)
        );
        assert_eq!(report["Result"], "committed");
        freeze.push(report["FreezeCutoverMs"].as_f64().unwrap_or(f64::MAX));
        let before = load.progress().completed();
        common::until("requests between upgrades", || {
            load.progress().completed() > before + 50
        });
    }
    let run = rt.block_on(load.finish()).expect("load run");
    let report = run.report(&windows);
    eprintln!("{report}");
    eprintln!(
        "freeze+cut-over over 20 upgrades (debug build): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(freeze.clone(), 0.5),
        pct(freeze.clone(), 0.99),
        pct(freeze, 1.0)
    );
    for f in &report.failures {
        eprintln!("failure: {f:?}");
    }
    assert_eq!(report.count("refused"), 0, "{report}");
    assert!(report.passed(), "{report}\n{}", common::tail(&d.log(), 80));
    assert!(
        report.requests_in_windows > 0,
        "no request overlapped an upgrade"
    );
    // The containers ran through all of it.
    for id in &ids[..5] {
        assert_eq!(d.ok(&["inspect", "-f", "{{.State.Status}}", id]), "running");
    }
}

#[test]
fn failed_upgrades_roll_back_and_the_daemon_serves_on() {
    let Some(d) = daemon_with_image() else { return };
    let ids = run_containers(&d, 3);
    let pid0 = d.ok(&["inspect", "-f", "{{.State.Pid}}", &ids[0]]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cases: &[(&str, &[&str], &str, bool)] = &[
        ("start:exit", &[], "warm-up", false),
        ("warmup:panic", &[], "warm-up", false),
        (
            "warmup:hang",
            &["--warmup-timeout-ms", "1500"],
            "did not warm up",
            false,
        ),
        // After the old generation closed the store, before the new one accepts: the old
        // one takes the store back.
        ("takeover:crash", &[], "before it served", false),
        // The new generation accepts already (reads) while the old one freezes: what it
        // had accepted is lost with it, the old one takes the store back.
        ("freeze:crash", &[], "during the freeze", true),
        ("serving:crash", &[], "cut-over", true),
    ];
    for (fault, extra, reason, may_lose_in_flight) in cases {
        let mut cfg = load_config(&d, 8);
        cfg.mix = "ping=4,list=2,inspect=3,cycle=0".parse().expect("mix");
        let load = {
            let _g = rt.enter();
            berth_load::start(cfg)
        };
        common::until("load to flow", || load.progress().completed() > 50);
        let started = Instant::now();
        let mut args = vec!["--fault", fault];
        args.extend_from_slice(extra);
        let (out, report) = d.upgrade(&args);
        assert!(!out.status.success(), "{fault}: the upgrade must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("rolled back") && err.contains(reason),
            "{fault}: {err} {report}"
        );
        // The daemon serves on: requests complete after the rollback.
        let before = load.progress().completed();
        common::until("requests after the rollback", || {
            load.progress().completed() > before + 50
        });
        let run = rt.block_on(load.finish()).expect("load run");
        let r = run.report(&[]);
        eprintln!(
            "{fault}: rolled back in {:?}; {}",
            started.elapsed(),
            r.all.failed
        );
        assert_eq!(r.count("refused"), 0, "{fault}: {r}");
        if *may_lose_in_flight {
            // Only requests in flight on the crashed worker may fail: each of the 8 clients
            // has at most one in flight.
            assert!(r.all.failed <= 8, "{fault}: {r}");
        } else {
            assert!(r.passed(), "{fault}: {r}\n{}", common::tail(&d.log(), 60));
        }
        assert_eq!(
            d.ok(&["inspect", "-f", "{{.State.Status}} {{.State.Pid}}", &ids[0]]),
            format!("running {pid0}")
        );
    }
    // And a good upgrade still goes through afterwards.
    let (out, report) = d.upgrade(&[]);
    assert!(out.status.success(), "{report}");
    // A second upgrade while one runs is refused with 409.
    let slow = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["upgrade", "-H", &format!("unix://{}", d.sock.display())])
        .args(["--fault", "warmup:hang", "--warmup-timeout-ms", "3000"])
        .spawn()
        .expect("slow upgrade");
    std::thread::sleep(Duration::from_millis(500));
    let (out, _) = d.upgrade(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already in progress"),
        "{err}"
    );
    let st = slow.wait_with_output().expect("slow upgrade");
    assert!(!st.status.success());
}

#[test]
fn the_master_re_executes_in_place_with_the_new_binary() {
    let Some(d) = daemon_with_image() else { return };
    let ids = run_containers(&d, 2);
    let dir = d.path("v2");
    std::fs::create_dir_all(&dir).expect("dir");
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_berthd"));
    let new_bin = dir.join("berthd");
    std::fs::copy(bin, &new_bin).expect("copy berthd");
    std::fs::copy(bin.with_file_name("berth-shim"), dir.join("berth-shim")).expect("copy shim");
    let master = d.master_pid();
    let (out, report) = d.upgrade(&["--binary", new_bin.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{report}");
    let exe = |pid: i32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    common::until("the master to run the new binary", || {
        exe(master) == new_bin
    });
    let workers = d.worker_pids();
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(exe(workers[0]), new_bin);
    // The re-executed master runs upgrades (default binary: the new one) and respawns.
    let (out, report) = d.upgrade(&[]);
    assert!(out.status.success(), "{report}");
    assert_eq!(report["Binary"], new_bin.to_str().unwrap_or_default());
    common::until("the re-executed master to settle", || {
        d.worker_pids().len() == 1
    });
    let w = d.worker_pids()[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill worker");
    common::until("a new worker", || {
        d.worker_pids().first().is_some_and(|p| *p != w) && d.docker(&["version"]).status.success()
    });
    assert_eq!(exe(d.worker_pids()[0]), new_bin);
    assert_eq!(d.master_pid(), master);
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Status}}", &ids[0]]),
        "running"
    );
}

#[test]
fn preflight_refuses_a_binary_that_cannot_take_over() {
    let Some(d) = daemon_with_image() else { return };
    use std::os::unix::fs::PermissionsExt;
    let cases = [
        (
            r#"{"version":"0","store_format":0,"shim_protocol":[1,1],"ctl_protocol":2}"#,
            "reads store format 0",
        ),
        (
            r#"{"version":"9","store_format":9,"shim_protocol":[7,8],"ctl_protocol":2}"#,
            "speaks shim protocol 7..=8",
        ),
        (
            r#"{"version":"9","store_format":9,"shim_protocol":[1,9],"ctl_protocol":99}"#,
            "control protocol 99",
        ),
        ("not json", "unreadable answer"),
    ];
    for (i, (answer, reason)) in cases.iter().enumerate() {
        let bin = d.path(&format!("fake-berthd-{i}"));
        std::fs::write(&bin, format!("#!/bin/sh\necho '{answer}'\n")).expect("fake binary");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let (out, report) = d.upgrade(&["--binary", bin.to_str().unwrap_or_default()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{answer}: {report}");
        assert!(
            err.contains("preflight") && err.contains(reason),
            "{answer}: {err}"
        );
        // Nothing was started: the same generation serves on.
        assert_eq!(report["Generation"], 1, "{report}");
    }
    // A binary that fails: its exit status and what it said (the master reaps every child;
    // the preflight's exit reaches the upgrade as an event).
    let bin = d.path("fake-berthd-fails");
    std::fs::write(
        &bin,
        "#!/bin/sh\necho 'cannot read the store' >&2\nexit 3\n",
    )
    .expect("fake");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (out, report) = d.upgrade(&["--binary", bin.to_str().unwrap_or_default()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("failed (exit status 3): cannot read the store"),
        "{err} {report}"
    );
    assert!(d.docker(&["version"]).status.success());
}
