//! A worker killed with -9 under load (issue 3 point 6a), and a container that talks to the
//! API through the bind-mounted socket across live upgrades and a worker crash (point 7).
//!
//! The master holds the listening socket, so a dead worker refuses nobody: connections wait
//! in the backlog until the respawned worker accepts them. Only what was in flight on the
//! dead worker may fail.

mod common;
mod loadkit;
use common::{is_root, Daemon};
use loadkit::*;
use std::time::Instant;

/// Running containers during the worker kill (the respawned worker restores them all).
const CONTAINERS: usize = 100;

#[test]
fn worker_kill9_under_load_refuses_nobody_and_serves_again_quickly() {
    if !is_root() {
        return;
    }
    let t0 = Instant::now();
    let d = Daemon::start();
    d.import_busybox("bb:test");
    let before = start_running(&d, "keep-", CONTAINERS);
    assert_eq!(before.len(), CONTAINERS, "running: {before:?}");
    eprintln!("{CONTAINERS} containers running after {:?}", t0.elapsed());
    let master = d.pid().expect("master pid");

    let rt = runtime();
    let _rt = rt.enter();
    let load = berth_load::start(load_config(&d));
    until_completed(&load, 300);
    let workers = d.workers();
    assert_eq!(workers.len(), 1, "one worker under the master: {workers:?}");

    let k = kill9(workers[0]);
    // A fresh connection made once the worker is gone waits in the master's backlog and is
    // answered by the respawned worker.
    let t_probe = ping_until_ok(&d.sock, 20);
    let respawned = d.workers();
    assert!(
        respawned.len() == 1 && respawned[0] != k.pid,
        "workers after the kill: {respawned:?}"
    );
    until_completed(&load, 300);
    let run = rt.block_on(load.finish()).expect("load run");
    let window = berth_load::Window {
        start_ns: k.t_kill,
        end_ns: t_probe,
    };
    let report = run.report(&[window]);
    eprintln!("{report}");

    let sorted = sort_failures(&run.records, k.t_dead);
    // Serving again: the first request made after the worker was gone that succeeded
    // (the probe waited in the backlog behind the clients' requests).
    let first_ok = first_ok_after(&run.records, k.t_dead)
        .unwrap_or(t_probe)
        .min(t_probe);
    let serving_again = first_ok - k.t_kill;
    eprintln!(
        "worker kill -9 with {CONTAINERS} containers under 32 clients: dead after {:.1} ms; \
         serving again {:.1} ms after the kill (the probe sent when it was gone: {:.1} ms); \
         in flight failed: {} {}; stale keep-alive: {} {}; unexplained: {} {}",
        ms(k.t_dead - k.t_kill),
        ms(serving_again),
        ms(t_probe - k.t_kill),
        sorted.in_flight.len(),
        outcome_counts(&sorted.in_flight),
        sorted.stale_keepalive.len(),
        outcome_counts(&sorted.stale_keepalive),
        sorted.unexplained.len(),
        outcome_counts(&sorted.unexplained),
    );
    eprintln!("respawn, from the daemon log:\n{}", startup_log(&d));

    assert_only_in_flight_failed(&report, &sorted, 32, "the worker crash");
    assert!(
        serving_again < 1_000_000_000,
        "not serving again within 1 s of the kill: {:.1} ms\n{}",
        ms(serving_again),
        startup_log(&d)
    );
    assert_eq!(d.pid(), Some(master));
    assert_eq!(
        running_pids(&d, "keep-"),
        before,
        "the containers changed across the worker crash"
    );
}

/// A client loop inside the container: `loops` copies of `docker version` (HEAD `/_ping`,
/// then `GET /version`) on the bind-mounted socket, each poll logged as `begin`, then `ok`
/// or `fail`, until /out/stop exists. The shim stamps each line when it reads it.
const POLLER: &str = r#"
poll() {
  n=0
  while [ ! -e /out/stop ]; do
    n=$((n+1))
    echo "begin $1 $n"
    if /usr/local/bin/docker version --format '{{.Server.APIVersion}}' >/tmp/o.$1 2>&1; then
      echo "ok $1 $n"
    else
      echo "fail $1 $n $(tr '\n' ' ' </tmp/o.$1)"
    fi
  done
}
for j in 1 2 3; do poll $j & done
wait
echo done
"#;

/// One poll of the container's client: when it began and ended, whether it worked.
#[derive(Debug, Clone)]
struct Poll {
    begin: u64,
    end: u64,
    ok: bool,
    what: String,
}

/// The polls in the poller's log so far (the ones that ended).
fn polls(d: &Daemon) -> Vec<Poll> {
    let log = d.ok(&["logs", "-t", "poller"]);
    let mut begun = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in log.lines() {
        let mut it = line.splitn(4, ' ');
        let (Some(ts), Some(kind), Some(key)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let Some(ts) = chrono::DateTime::parse_from_rfc3339(ts)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
        else {
            continue;
        };
        // `begin LOOP N`, `ok LOOP N`, `fail LOOP N OUTPUT`.
        let n = it.next().unwrap_or("").split(' ').next().unwrap_or("");
        let id = format!("{key} {n}");
        match kind {
            "begin" => {
                begun.insert(id, ts as u64);
            }
            "ok" | "fail" => {
                if let Some(b) = begun.remove(&id) {
                    out.push(Poll {
                        begin: b,
                        end: ts as u64,
                        ok: kind == "ok",
                        what: line.to_string(),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// Waits until `n` polls that began after `t` succeeded.
fn until_polls_ok_after(d: &Daemon, t: u64, n: usize) {
    common::until(&format!("{n} polls from the container after {t}"), || {
        polls(d).iter().filter(|p| p.ok && p.begin > t).count() >= n
    });
}

/// The host's docker CLI, which must be statically linked to run in the busybox container.
fn static_docker_cli() -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cli = std::env::split_paths(&path)
        .map(|p| p.join("docker"))
        .find(|p| p.exists())
        .expect("the docker CLI is installed");
    let elf = std::fs::read(&cli).expect("read the docker CLI");
    assert!(
        !elf.windows(16).any(|w| w == b"/lib64/ld-linux-"),
        "{} is dynamically linked: it cannot run in the busybox container",
        cli.display()
    );
    cli.display().to_string()
}

#[test]
fn bind_mounted_socket_client_survives_upgrades_and_a_worker_crash() {
    if !is_root() {
        return;
    }
    let d = Daemon::start();
    d.import_busybox("bb:test");
    let cli = static_docker_cli();
    let out_dir = d.path("poll");
    std::fs::create_dir_all(&out_dir).expect("poller dir");
    let sock_mount = format!("{}:/var/run/docker.sock", d.sock.display());
    let cli_mount = format!("{cli}:/usr/local/bin/docker:ro");
    let out_mount = format!("{}:/out", out_dir.display());
    d.ok(&[
        "run",
        "-d",
        "--name",
        "poller",
        "--network",
        "none",
        "-v",
        &sock_mount,
        "-v",
        &cli_mount,
        "-v",
        &out_mount,
        "-e",
        "DOCKER_HOST=unix:///var/run/docker.sock",
        "-e",
        "DOCKER_CONFIG=/tmp/dc",
        "bb:test",
        "sh",
        "-c",
        POLLER,
    ]);
    until_polls_ok_after(&d, 0, 3);

    let mut windows = Vec::new();
    for i in 1..=5 {
        let t_start = now_ns();
        let r = d.upgrade_ok(&[]);
        let t_end = now_ns();
        eprintln!(
            "upgrade {i}: {:.0} ms in all, generation {}, freeze+cut-over {} ms, quiesce {} ms, {} connections handed over",
            ms(t_end - t_start),
            r["Generation"],
            r["FreezeCutoverMs"],
            r["QuiesceMs"],
            r["ConnsHandedOver"]
        );
        windows.push((t_start, t_end));
        until_polls_ok_after(&d, t_end, 3);
    }

    let w = d.workers();
    assert_eq!(w.len(), 1, "one worker: {w:?}");
    let k = kill9(w[0]);
    let t_back = ping_until_ok(&d.sock, 20);
    until_polls_ok_after(&d, t_back, 3);

    std::fs::write(out_dir.join("stop"), b"").expect("stop the poller");
    assert_eq!(d.ok(&["wait", "poller"]), "0");
    let all = polls(&d);
    let overlaps = |p: &Poll, (s, e): (u64, u64)| p.begin <= e && p.end >= s;
    let crash = (k.t_kill, t_back);
    let in_upgrades = all
        .iter()
        .filter(|p| windows.iter().any(|w| overlaps(p, *w)))
        .count();
    let crash_failed: Vec<&str> = all
        .iter()
        .filter(|p| !p.ok && overlaps(p, crash))
        .map(|p| p.what.as_str())
        .collect();
    let other_failed: Vec<&str> = all
        .iter()
        .filter(|p| !p.ok && !overlaps(p, crash))
        .map(|p| p.what.as_str())
        .collect();
    eprintln!(
        "container client: {} polls, {} overlapping the 5 upgrades, {} failed across the upgrades; \
         worker kill -9: serving again after {:.1} ms, {} polls overlapping it, {} failed",
        all.len(),
        in_upgrades,
        other_failed.len(),
        ms(t_back - k.t_kill),
        all.iter().filter(|p| overlaps(p, crash)).count(),
        crash_failed.len()
    );
    assert!(
        in_upgrades >= 5,
        "too few polls overlapped the upgrades to show anything: {in_upgrades}"
    );
    assert!(
        other_failed.is_empty(),
        "the container's client failed outside the worker crash: {other_failed:#?}"
    );
    assert!(
        crash_failed.len() <= 1,
        "the worker crash failed more than the poll in flight: {crash_failed:#?}"
    );
    d.ok(&["rm", "poller"]);
}
