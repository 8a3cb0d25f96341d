//! Elastic memory against the real kernel (cgroup v1): a pool of 600 MiB and three
//! memory-hungry containers. With the controller, the elastic one grows past its `-m` while
//! there is room, is squeezed and then killed when a neighbour claims its entitlement; the
//! others are untouched and the kernel OOM killer never fires. Without it (the same pool
//! limit, the bursting container given a static `-m`), the kernel kills by size: the
//! biggest container, although it is within its entitlement.

mod common;
use common::{is_root, until, Daemon, Launch};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

const MIB: u64 = 1 << 20;

fn now_arg() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

fn elastic_daemon(opts: &str) -> Option<Daemon> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return None;
    }
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        eprintln!("skipped: this test drives cgroup v1 (v2 is unit-tested on a fake tree)");
        return None;
    }
    let d = Daemon::start_with(Launch {
        env: vec![("BERTH_ELASTIC_MEMORY".into(), opts.into())],
        ..Default::default()
    });
    d.import_busybox("bb:test");
    Some(d)
}

/// The container's (or the pool's, with `id` empty) v1 memory file.
fn mem_file(d: &Daemon, id: &str, file: &str) -> PathBuf {
    PathBuf::from("/sys/fs/cgroup/memory")
        .join(d.cgroup.trim_start_matches('/'))
        .join(id)
        .join(file)
}

fn read_u64(p: &PathBuf) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Kernel OOM kills counted in a group (v1 counts a kill in the victim's own group only).
fn oom_kills(d: &Daemon, id: &str) -> u64 {
    std::fs::read_to_string(mem_file(d, id, "memory.oom_control"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn usage(d: &Daemon, id: &str) -> u64 {
    read_u64(&mem_file(d, id, "memory.usage_in_bytes"))
}

/// Runs `name` detached; it allocates `mib` MiB of anonymous memory (busybox `tail -c`
/// buffers its input; it is the container's init) in 10 MiB steps every `step_ms` (0: at once), then holds it.
fn hog(d: &Daemon, name: &str, opts: &[&str], mib: u64, step_ms: u64) -> String {
    let feed = if step_ms == 0 {
        format!("head -c {mib}m /dev/zero")
    } else {
        format!(
            "for i in $(seq {}); do head -c 10m /dev/zero; sleep {}; done",
            mib / 10,
            step_ms as f64 / 1000.0
        )
    };
    // tail is the container's main process: a kill of it ends the container.
    let script =
        format!("mkfifo /hog; ({feed}; sleep 1000) >/hog & exec tail -c 1000m </hog >/dev/null");
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(opts);
    args.extend_from_slice(&["bb:test", "sh", "-c", &script]);
    d.ok(&args).trim().to_string()
}

fn inspect(d: &Daemon, name: &str) -> Value {
    let out = d.ok(&["inspect", name]);
    let v: Value = serde_json::from_str(&out).expect("inspect json");
    v[0].clone()
}

fn events(d: &Daemon, since: &str, name: &str) -> Vec<(String, Value)> {
    let until = now_arg();
    d.ok(&[
        "events",
        "--since",
        since,
        "--until",
        &until,
        "--filter",
        &format!("container={name}"),
        "--format",
        "{{json .}}",
    ])
    .lines()
    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    .map(|e| {
        (
            e["Action"].as_str().unwrap_or_default().to_string(),
            e["Actor"]["Attributes"].clone(),
        )
    })
    .collect()
}

#[test]
fn a_bursting_container_grows_then_is_squeezed_and_killed_for_a_neighbour() {
    let Some(d) =
        elastic_daemon("pool-size=600m,low-headroom=60m,critical-headroom=24m,interval-ms=50")
    else {
        return;
    };
    let since = now_arg();
    // a: the biggest, within its entitlement.
    let a = hog(&d, "ea", &["-m", "300m"], 280, 0);
    until("a holds 280 MiB", || usage(&d, &a) >= 275 * MIB);
    // b: entitled to 50 MiB, elastic without a ceiling; grows to 200 MiB while there is room.
    let b = hog(
        &d,
        "eb",
        &["-m", "50m", "--label", "berth.memory.elastic=max"],
        200,
        100,
    );
    let mut polls = 0;
    until("b grows to 200 MiB past its 50 MiB", || {
        polls += 1;
        usage(&d, &b) >= 198 * MIB
            || polls % 40 == 0 && {
                eprintln!(
                    "b: usage {} limit {} {:?}",
                    usage(&d, &b) >> 20,
                    read_u64(&mem_file(&d, &b, "memory.limit_in_bytes")) >> 20,
                    std::fs::read_to_string(mem_file(&d, &b, "memory.oom_control"))
                );
                false
            }
    });
    // Its limit is its ceiling (max: the pool) while nobody needs the room.
    let limit_b = read_u64(&mem_file(&d, &b, "memory.limit_in_bytes"));
    assert_eq!(limit_b, 600 * MIB);
    let el = inspect(&d, "eb")["BerthElasticMemory"].clone();
    assert_eq!(el["Entitlement"], 50 * MIB, "{el}");
    assert_eq!(el["Ceiling"], "max", "{el}");
    assert_eq!(el["Limit"], 600 * MIB, "{el}");
    assert!(el["LastAction"].is_null(), "{el}");
    assert_eq!(
        oom_kills(&d, &b),
        0,
        "b was not killed for exceeding 50 MiB"
    );
    // c: entitled to 200 MiB, claims 180: the pool (280 + 200 + 180 > 600) cannot hold all.
    let c = hog(&d, "ec", &["-m", "200m"], 180, 100);
    until("b is gone", || {
        inspect(&d, "eb")["State"]["Running"] == Value::Bool(false)
    });
    until("c holds its 180 MiB", || usage(&d, &c) >= 175 * MIB);
    let st = inspect(&d, "eb");
    assert_eq!(st["State"]["OOMKilled"], true, "{}", st["State"]);
    assert_eq!(st["State"]["ExitCode"], 137, "{}", st["State"]);
    assert_eq!(st["BerthElasticMemory"]["LastAction"]["Action"], "kill");
    for (name, id) in [("ea", &a), ("ec", &c)] {
        let s = inspect(&d, name);
        assert_eq!(
            s["State"]["Running"], true,
            "{name} untouched: {}",
            s["State"]
        );
        assert_eq!(oom_kills(&d, id), 0, "{name}");
        assert!(s["BerthElasticMemory"].is_null(), "{name} is not elastic");
    }
    assert!(usage(&d, &a) >= 275 * MIB, "a kept its memory");
    let all = oom_kills(&d, "") + oom_kills(&d, &a) + oom_kills(&d, &b) + oom_kills(&d, &c);
    assert_eq!(all, 0, "the kernel OOM killer never fired in the pool");
    // The actions as events, each with its reason, in order: squeeze, kill (oom).
    let evs = events(&d, &since, "eb");
    let actions: Vec<&str> = evs.iter().map(|(a, _)| a.as_str()).collect();
    let pos = |what: &str| actions.iter().position(|a| *a == what);
    let (squeeze, oom) = (
        pos("elastic-squeeze").expect("a squeeze event"),
        pos("oom").expect("an oom event"),
    );
    assert!(squeeze < oom, "{actions:?}");
    let reason = evs[oom].1["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("furthest over its entitlement") && reason.contains("entitled to 50 MiB"),
        "{reason}"
    );
    assert!(
        evs[squeeze].1["reason"]
            .as_str()
            .is_some_and(|r| r.contains("under the low 60 MiB")),
        "{:?}",
        evs[squeeze]
    );
    assert!(pos("die").is_some_and(|p| p > oom), "{actions:?}");
    for name in ["ea", "ec"] {
        let acts: Vec<String> = events(&d, &since, name)
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        assert!(
            !acts.iter().any(|a| a == "oom" || a.starts_with("elastic-")),
            "{name}: {acts:?}"
        );
    }
    eprintln!(
        "controller: victim b (over its entitlement); a {} MiB and c {} MiB untouched; kernel OOM kills 0",
        usage(&d, &a) / MIB,
        usage(&d, &c) / MIB
    );
}

#[test]
fn without_the_controller_the_kernel_kills_the_biggest_container_instead() {
    if !is_root() || std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        eprintln!("skipped: needs root and cgroup v1");
        return;
    }
    let d = Daemon::start();
    d.import_busybox("bb:test");
    // The same pool, limited by hand; b gets its burst as a static limit.
    let pool = mem_file(&d, "", "");
    std::fs::create_dir_all(&pool).expect("pool group");
    std::fs::write(pool.join("memory.limit_in_bytes"), (600 * MIB).to_string()).expect("limit");
    let a = hog(&d, "ea", &["-m", "300m"], 280, 0);
    until("a holds 280 MiB", || usage(&d, &a) >= 275 * MIB);
    let b = hog(&d, "eb", &["-m", "400m"], 200, 100);
    until("b holds 200 MiB", || usage(&d, &b) >= 198 * MIB);
    let c = hog(&d, "ec", &["-m", "200m"], 180, 100);
    until("the kernel kills someone", || {
        [&a, &b, &c].iter().map(|id| oom_kills(&d, id)).sum::<u64>() > 0
    });
    let killed: Vec<&str> = [("ea", &a), ("eb", &b), ("ec", &c)]
        .into_iter()
        .filter(|(_, id)| oom_kills(&d, id) > 0)
        .map(|(n, _)| n)
        .collect();
    eprintln!("kernel only: OOM-killed {killed:?}");
    for n in &killed {
        until("the victim's exit is recorded", || {
            inspect(&d, n)["State"]["Running"] == false
        });
        assert_eq!(inspect(&d, n)["State"]["OOMKilled"], true);
    }
    assert_eq!(
        killed,
        vec!["ea"],
        "the kernel picks the biggest process, inside its entitlement"
    );
}

#[test]
fn labels_and_admission_are_checked() {
    let Some(d) = elastic_daemon("pool-size=600m,low-headroom=60m,critical-headroom=24m") else {
        return;
    };
    let e = d.fails(&[
        "create",
        "--label",
        "berth.memory.elastic=1g",
        "bb:test",
        "true",
    ]);
    assert!(e.contains("needs a memory limit (-m)"), "{e}");
    let e = d.fails(&[
        "create",
        "-m",
        "100m",
        "--label",
        "berth.memory.elastic=50m",
        "bb:test",
        "true",
    ]);
    assert!(e.contains("ceiling must be at least the limit"), "{e}");
    // Entitlements never exceed the pool: 400 + 300 > 600.
    d.ok(&[
        "run", "-d", "--name", "big", "-m", "400m", "bb:test", "sleep", "1000",
    ]);
    d.ok(&[
        "create", "--name", "more", "-m", "300m", "bb:test", "sleep", "1000",
    ]);
    let e = d.fails(&["start", "more"]);
    assert!(
        e.contains(
            "over the elastic memory pool of 600 MiB (400 MiB entitled to running containers)"
        ),
        "{e}"
    );
    assert_eq!(inspect(&d, "more")["State"]["Status"], "created");
    // Without the controller the label is refused instead of silently ignored.
    let plain = Daemon::start();
    plain.import_busybox("bb:test");
    let e = plain.fails(&[
        "create",
        "-m",
        "100m",
        "--label",
        "berth.memory.elastic=max",
        "bb:test",
        "true",
    ]);
    assert!(e.contains("--elastic-memory"), "{e}");
}

#[test]
fn a_daemon_that_stops_gives_the_pool_back_to_the_kernel() {
    let Some(mut d) = elastic_daemon("pool-size=600m,low-headroom=60m,critical-headroom=24m")
    else {
        return;
    };
    let id = d
        .ok(&[
            "run",
            "-d",
            "-m",
            "50m",
            "--label",
            "berth.memory.elastic=300m",
            "bb:test",
            "sleep",
            "1000",
        ])
        .trim()
        .to_string();
    let pool = mem_file(&d, "", "");
    let oom_control = |id: &str| {
        std::fs::read_to_string(pool.join(id).join("memory.oom_control")).unwrap_or_default()
    };
    assert!(
        oom_control("").contains("oom_kill_disable 1"),
        "pool under control"
    );
    assert_eq!(
        read_u64(&pool.join(&id).join("memory.limit_in_bytes")),
        300 * MIB
    );
    // Squeezed by hand, as the controller would: under its ceiling it waits, not dies.
    std::fs::write(
        pool.join(&id).join("memory.limit_in_bytes"),
        (60 * MIB).to_string(),
    )
    .expect("squeeze");
    std::fs::write(pool.join(&id).join("memory.oom_control"), "1").expect("pause mode");
    let master = d.master_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(master),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM the daemon");
    until("the daemon stops", || {
        !std::path::Path::new(&format!("/proc/{master}")).exists()
            || std::fs::read_to_string(format!("/proc/{master}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
    d.kill9();
    assert!(
        oom_control("").contains("oom_kill_disable 0"),
        "{}",
        oom_control("")
    );
    assert!(
        oom_control(&id).contains("oom_kill_disable 0"),
        "{}",
        oom_control(&id)
    );
    assert_eq!(
        read_u64(&mem_file(&d, &id, "memory.limit_in_bytes")),
        300 * MIB
    );
    // The container itself runs on without a daemon.
    assert!(!std::fs::read_to_string(mem_file(&d, &id, "cgroup.procs"))
        .unwrap_or_default()
        .trim()
        .is_empty());
}

#[test]
fn docker_update_changes_the_entitlement_not_the_controllers_limit() {
    let Some(d) = elastic_daemon("pool-size=600m,low-headroom=60m,critical-headroom=24m") else {
        return;
    };
    let b = hog(
        &d,
        "ub",
        &["-m", "50m", "--label", "berth.memory.elastic=300m"],
        120,
        0,
    );
    until("ub grows past 50 MiB", || usage(&d, &b) >= 118 * MIB);
    let limit = || read_u64(&mem_file(&d, &b, "memory.limit_in_bytes"));
    assert_eq!(
        limit(),
        300 * MIB,
        "an elastic container's limit starts at its ceiling"
    );
    // A neighbour takes the pool under the low threshold: ub is squeezed to its usage...
    let n = hog(&d, "nb", &["-m", "450m"], 440, 0);
    until("nb holds 440 MiB", || usage(&d, &n) >= 435 * MIB);
    until("ub is squeezed", || limit() < 140 * MIB);
    assert!(limit() >= 120 * MIB, "not under its usage: {}", limit());
    assert_eq!(
        inspect(&d, "ub")["BerthElasticMemory"]["LastAction"]["Action"],
        "squeeze"
    );
    // ... and gets its room back once the neighbour is gone.
    d.ok(&["rm", "-f", "nb"]);
    until("ub's limit is back at its ceiling", || limit() == 300 * MIB);
    let acts: Vec<String> = events(&d, "0", "ub").into_iter().map(|(a, _)| a).collect();
    assert!(
        acts.iter().any(|a| a == "elastic-squeeze")
            && acts.last().is_some_and(|a| a == "elastic-grow"),
        "{acts:?}"
    );
    let grown = limit();
    // A new entitlement under the limit in force leaves the limit alone.
    d.ok(&["update", "-m", "100m", "--memory-swap", "-1", "ub"]);
    assert_eq!(limit(), grown);
    assert_eq!(
        inspect(&d, "ub")["BerthElasticMemory"]["Entitlement"],
        100 * MIB
    );
    // Above the ceiling, or more than the pool holds: refused, nothing changes.
    let e = d.fails(&["update", "-m", "400m", "--memory-swap", "-1", "ub"]);
    assert!(e.contains("ceiling must be at least the limit"), "{e}");
    d.ok(&[
        "run", "-d", "--name", "other", "-m", "400m", "bb:test", "sleep", "1000",
    ]);
    let e = d.fails(&["update", "-m", "250m", "--memory-swap", "-1", "ub"]);
    assert!(e.contains("over the elastic memory pool of 600 MiB"), "{e}");
    assert_eq!(inspect(&d, "ub")["HostConfig"]["Memory"], 100 * MIB);
    assert_eq!(limit(), grown);
}
